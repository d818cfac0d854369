"""Status times are bounded by what the code can represent (a 400, never a 500), and a new
status text without `until` is visible even after an earlier status expired."""

from __future__ import annotations

import asyncio
import time

from tests.gateway.chat.conftest import ChatEnv


async def test_time_fields_beyond_representable_are_a_400(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    for body in ({"dnd_until": 1_000_000_000_000}, {"until": 10**13}, {"dnd_until": -1}):
        r = await chat.http("PUT", "/v1/status", alice, body)
        assert r.status == 400, (body, r.status, r.body)
        assert r.body["error"]["code"] == "bad_request"
    # The largest representable time is accepted.
    ok = await chat.ok("PUT", "/v1/status", alice, {"dnd_until": 253_402_300_799})
    assert ok["user"]["status"]["dnd"] is True


async def test_new_text_after_an_expired_status_is_visible(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    await chat.ok("PUT", "/v1/status", alice, {"text": "lunch", "until": int(time.time()) + 1})
    await asyncio.sleep(2.1)
    gone = await chat.ok("GET", f"/v1/users/{alice}", alice)
    assert gone["user"]["status"]["text"] == ""
    again = await chat.ok("PUT", "/v1/status", alice, {"text": "back at desk"})
    assert again["user"]["status"]["text"] == "back at desk"
    assert again["user"]["status"]["until"] is None
    seen = await chat.ok("GET", f"/v1/users/{alice}", alice)
    assert seen["user"]["status"]["text"] == "back at desk"
