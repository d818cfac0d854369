"""A gateway with the chat product on the embedded default config (gateway/defaults.toml),
a fresh database on the session's real PostgreSQL, and helpers to call it through the real
centrifuge-python client (RPC) and over HTTP."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from centrifuge import Client

from gateway.cli import DEFAULT_CONFIG
from gateway.config import Settings, load_settings
from tests.conftest import API_KEY, SECRET, Server, create_database, drop_database, start_server, stop_server
from tests.sdk import ClientEvents, Sdk


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ChatEnv:
    srv: Server
    dsn: str
    sdk: Sdk = field(default_factory=lambda: Sdk(protobuf=False))

    def token(self, user: str, **claims: Any) -> str:
        return self.srv.token(user, **claims)

    async def connect(self, user: str, **claims: Any) -> tuple[Client, ClientEvents]:
        return await self.sdk.connect(self.srv, user, **claims)

    async def user(self, prefix: str = "u", role: str | None = None, **fields: Any) -> str:
        """A new user created through the admin HTTP API (API key)."""
        uid = f"{prefix}{secrets.token_hex(4)}"
        body: dict[str, Any] = dict(fields)
        if role is not None:
            body["role"] = role
        r = await self.admin("PUT", f"/v1/admin/users/{uid}", body)
        assert r.status == 200, r.body
        return uid

    async def http(self, method: str, path: str, user: str | None = None, body: Any = None, *,
                   params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Reply:
        hdrs = dict(headers or {})
        if user is not None:
            hdrs["Authorization"] = f"Bearer {self.token(user)}"
        async with aiohttp.ClientSession() as http, http.request(
                method, f"{self.srv.http_url}{path}", headers=hdrs, params=params,
                data=None if body is None else json.dumps(body)) as resp:
            text = await resp.text()
            return Reply(resp.status, json.loads(text) if text else None, dict(resp.headers))

    async def admin(self, method: str, path: str, body: Any = None) -> Reply:
        return await self.http(method, path, body=body, headers={"X-API-Key": API_KEY})

    async def ok(self, method: str, path: str, user: str, body: Any = None, **kw: Any) -> Any:
        r = await self.http(method, path, user, body, **kw)
        assert r.status in (200, 201), (r.status, r.body)
        return r.body

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)


async def rpc(client: Client, method: str, **params: Any) -> Any:
    """Call a chat RPC method through the real SDK; returns the decoded result."""
    result = await client.rpc(method, params)
    return result.data


def chat_settings(dsn: str, **more: Any) -> Settings:
    """The embedded default config (chat on) with the test secrets and ``dsn``;
    ``more``: further overrides as ``section__key=value``."""
    overrides: dict[tuple[str, ...], Any] = {
        ("client", "token", "hmac_secret_key"): SECRET,
        ("http_api", "key"): API_KEY,
        ("storage", "postgres_dsn"): dsn,
        ("chat", "encryption_keys"): {"k1": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},
        ("chat", "encryption_key_id"): "k1",
    }
    overrides.update({tuple(k.split("__")): v for k, v in more.items()})
    return load_settings(DEFAULT_CONFIG, environ={}, overrides=overrides)[0]


@pytest.fixture(scope="session")
async def chat(pg_dsn: str) -> AsyncIterator[ChatEnv]:
    """One chat-enabled gateway for the session (its own database)."""
    dsn = await create_database(pg_dsn, "chat")
    srv = await start_server(chat_settings(dsn))
    env = ChatEnv(srv, dsn)
    try:
        yield env
    finally:
        await env.sdk.close()
        await stop_server(srv)
        await drop_database(dsn)
