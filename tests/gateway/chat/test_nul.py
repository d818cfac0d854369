"""A NUL character (PostgreSQL text cannot store it) in any chat input is a 400 naming the
field — over HTTP and over RPC (not a 500, not a *temporary* RPC error SDKs retry)."""

from __future__ import annotations

import pytest
from centrifuge import ReplyError

from tests.gateway.chat.conftest import ChatEnv, rpc

NUL = "a\u0000b"


async def test_nul_in_http_inputs_is_a_400_naming_the_field(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    ch = (await chat.ok("POST", "/v1/channels", alice, {"name": f"nul-{alice}"}))["channel"]
    cid = ch["id"]
    msg = (await chat.ok("POST", f"/v1/channels/{cid}/messages", alice, {"text": "fine"}))["message"]
    cases = [
        ("POST", f"/v1/channels/{cid}/messages", {"text": NUL}, "$.text"),
        ("POST", f"/v1/channels/{cid}/messages", {"text": "x", "client_msg_id": NUL}, "$.client_msg_id"),
        ("PATCH", f"/v1/messages/{msg['id']}", {"text": NUL}, "$.text"),
        ("PUT", f"/v1/channels/{cid}/topic", {"topic": NUL}, "$.topic"),
        ("PUT", "/v1/status", {"text": NUL}, "$.text"),
        ("PUT", "/v1/status", {"text": "ok", "emoji": NUL}, "$.emoji"),
        ("PUT", f"/v1/messages/{msg['id']}/reactions/a%00b", None, "$.emoji"),
    ]
    for method, path, body, field in cases:
        r = await chat.http(method, path, alice, body)
        assert r.status == 400, (path, body, r.status, r.body)
        assert "NUL" in r.body["error"]["message"] and field in r.body["error"]["message"], r.body
    # Nothing was stored; the server still serves.
    page = await chat.ok("GET", f"/v1/channels/{cid}/messages", alice)
    assert [m["text"] for m in page["messages"]] == ["fine"]


async def test_nul_over_rpc_is_a_non_temporary_400(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    client, _ = await chat.connect(alice)
    ch = (await rpc(client, "channels.create", name=f"nulrpc-{alice}"))["channel"]
    for method, params in [("messages.send", {"channel_id": ch["id"], "text": NUL}),
                           ("presence.set_status", {"text": NUL}),
                           ("channels.set_topic", {"channel_id": ch["id"], "topic": NUL})]:
        with pytest.raises(ReplyError) as err:
            await rpc(client, method, **params)
        assert err.value.code == 400, (method, err.value)
        assert not err.value.temporary
        assert "NUL" in err.value.message


async def test_invalid_percent_encoding_in_a_path_is_a_400(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    ch = (await chat.ok("POST", "/v1/channels", alice, {"name": f"pct-{alice}"}))["channel"]
    msg = (await chat.ok("POST", f"/v1/channels/{ch['id']}/messages", alice, {"text": "x"}))["message"]
    r = await chat.http("PUT", f"/v1/messages/{msg['id']}/reactions/%FF", alice)
    assert r.status == 400 and "percent-encoding" in r.body["error"]["message"], r.body
    # Nothing was stored under U+FFFD.
    page = await chat.ok("GET", f"/v1/channels/{ch['id']}/messages", alice)
    assert page["messages"][0]["reactions"] in ([], {}, None)
