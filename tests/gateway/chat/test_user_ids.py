"""A token whose user id the chat cannot store (markup, 10,000 characters) is refused: the
WebSocket connect with 3500 and the HTTP API with 401, the reason in the log, and no user
row is created."""

from __future__ import annotations

import logging

import pytest

from tests.gateway.chat.conftest import ChatEnv
from tests.sdk import ClientEvents

BAD = ["<img src=x onerror=alert(1)>", "u" * 10_000, "-leading-dash", "with space", "alice\n"]


@pytest.mark.parametrize("user", BAD, ids=["markup", "10k", "dash", "space", "newline"])
async def test_bad_user_id_is_refused_everywhere(chat: ChatEnv, user: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    token = chat.token(user)
    with caplog.at_level(logging.INFO):
        events = ClientEvents()
        client, events = chat.sdk.client(chat.srv, token, events=events)
        await client.connect()
        ctx = await events.next_where("disconnected", lambda c: True)
        assert ctx.code == 3500
        r = await chat.http("GET", "/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status == 401 and r.body["error"]["code"] == "unauthorized"
    assert any("token refused" in rec.getMessage()
               and ("not a chat user id" in rec.getMessage() or "longer than 64" in rec.getMessage())
               for rec in caplog.records)
    assert not any(user in rec.getMessage() for rec in caplog.records if len(user) > 40)
    conn = await chat.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM chat_users WHERE id = $1", user) == 0
    finally:
        await conn.close()


async def test_valid_user_ids_still_connect(chat: ChatEnv) -> None:
    for user in ("alice", "a.b_c-d@example.com", "bot.a1b2"):
        _, events = await chat.connect(user)
        assert events.seen("connected")
