"""`chat.search_language`: message search stems in the configured language, a change
re-indexes the messages already written, and a malformed value refuses to start naming the
key. Real PostgreSQL, its Snowball stemmers."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import ConfigError
from tests.conftest import create_database, drop_database, start_server, stop_server
from tests.gateway.chat.conftest import ChatEnv, chat_settings


async def test_language_change_reindexes_and_stems(pg_dsn: str) -> None:
    dsn = await create_database(pg_dsn, "lang")
    try:
        srv = await start_server(chat_settings(dsn))
        env = ChatEnv(srv, dsn)
        alice = await env.user("alice")
        ch = (await env.ok("POST", "/v1/channels", alice, {"name": "bibliothek"}))["channel"]
        await env.ok("POST", f"/v1/channels/{ch['id']}/messages", alice, {"text": "Die Häuser sind alt"})
        # English stemming does not relate "Hauses" to "Häuser" (nor is it a prefix of it).
        before = await env.ok("GET", "/v1/search/messages", alice, params={"q": "Hauses"})
        assert before["hits"] == []
        await stop_server(srv)

        srv = await start_server(chat_settings(dsn, chat__search_language="german"))
        env = ChatEnv(srv, dsn)
        await env.ok("GET", "/v1/me", alice)  # the first chat call loads the service

        async def stems_german() -> bool:
            conn = await env.db()
            try:
                return bool(await conn.fetchval(
                    """SELECT 1 FROM pg_ts_config_map m JOIN pg_ts_config c ON c.oid = m.mapcfg
                       JOIN pg_ts_dict d ON d.oid = m.mapdict
                       WHERE c.cfgname = 'sentchat_english' AND d.dictname = 'german_stem'"""))
            finally:
                await conn.close()

        for _ in range(100):
            if await stems_german():
                break
            await asyncio.sleep(0.1)
        assert await stems_german()
        await asyncio.sleep(0.5)  # the re-index of this tiny table
        # German stemming (haus): the message written before the change is re-indexed and
        # found by another form of the word.
        found = await env.ok("GET", "/v1/search/messages", alice, params={"q": "Hauses"})
        assert [h["message"]["text"] for h in found["hits"]] == ["Die Häuser sind alt"], found
        await stop_server(srv)
    finally:
        await drop_database(dsn)


def test_malformed_language_refuses_to_start_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        chat_settings("postgresql://x/y", chat__search_language="Klingon!")
    assert "chat" in str(err.value) and "search_language" in str(err.value)
