"""The chat product from the real npm centrifuge-js SDK (tests/js/scenarios/chat.js)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.chat.conftest import ChatEnv, rpc
from tests.gateway.test_sdk_js import MODES, args_for, node_modules, run_js

__all__ = ["node_modules"]


@pytest.mark.parametrize("mode", MODES)
async def test_chat_from_centrifuge_js(chat: ChatEnv, node_modules: Path, mode: str) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    cb, _ = await chat.connect(bob)
    private = (await rpc(cb, "channels.create", name=f"bobs-{bob}", private=True))["channel"]
    res = await run_js("chat", args_for(chat.srv, mode, token=chat.token(alice), name=f"js-{alice}",
                                        private_subscription=private["subscription"]))
    assert res["loaded"] == []
    assert res["sent"]["text"] == "from js" and res["retried"]["created"] is False
    assert res["retried"]["message"]["id"] == res["sent"]["id"]
    assert res["got"] == ["message.created", "message.updated", "reaction.added", "message.deleted"]
    assert res["badParams"]["code"] == 400 and res["badParams"]["message"].startswith("bad_request")
    assert res["refused"]["code"] == 103
    sub = res["subs"]["chat"]
    assert sub["subscribed"][0]["recovered"] is True
