"""Shared fixtures: real gateway nodes listening on loopback, started once per session.

Tests talk to them with the real SDKs (centrifuge-python, centrifuge-js under Node) and the
real `cent` HTTP API client. Each server is the same Node the CLI builds, from settings.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import jwt
import pytest

from gateway.compose import build_node
from gateway.config import Settings, build_settings
from gateway.node import Node
from gateway.server import serve
from storage.embedded import EmbeddedPostgres
from tests.redis_servers import redis_servers, redis_urls

__all__ = ["redis_servers", "redis_urls"]

SECRET = "test-secret-0123456789-0123456789-abcdef"
API_KEY = "test-api-key"


def standard_settings(**client: Any) -> dict[str, Any]:
    """The namespaces every SDK test relies on (see tests/README in each test's docstring)."""
    full = {
        "presence": True, "join_leave": True, "history_size": 1000, "history_ttl": "300s",
        "force_recovery": True, "force_positioning": True,
        "allow_subscribe_for_client": True, "allow_publish_for_subscriber": True,
        "allow_presence_for_subscriber": True, "allow_history_for_subscriber": True,
    }
    return {
        "http_api": {"key": API_KEY},
        "client": {"token": {"hmac_secret_key": SECRET}, **client},
        "channel": {
            "without_namespace": {"allow_subscribe_for_client": True, "allow_publish_for_client": True},
            "namespaces": [
                {"name": "chat", **full},
                # Subscribing needs a subscription token (the $ prefix also forces one).
                {"name": "secret", **full, "allow_subscribe_for_client": False},
                # dm:#alice,bob — only listed users may subscribe.
                {"name": "dm", **full, "allow_subscribe_for_client": False,
                 "allow_user_limited_channels": True},
                # Nothing allowed for clients: every permission check must fail here.
                {"name": "locked", "presence": True, "history_size": 10, "history_ttl": "60s"},
                # Subscribable, but no history / presence at all (108 not available).
                {"name": "plain", "allow_subscribe_for_client": True, "allow_publish_for_client": True},
                # A short history window for recovery-limit tests.
                {"name": "short", **full, "history_size": 5},
            ],
        },
    }


@dataclass
class Server:
    node: Node
    server: asyncio.Server
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.http_url}/api"

    @staticmethod
    def token(user: str, ttl: float | None = 3600, **claims: Any) -> str:
        """A connection JWT (or subscription JWT when ``channel=`` is given)."""
        payload: dict[str, Any] = {"sub": user, **claims}
        if ttl is not None:
            payload["exp"] = int(time.time() + ttl)
        return jwt.encode(payload, SECRET, algorithm="HS256")


async def start_server(settings: Settings | dict[str, Any]) -> Server:
    if isinstance(settings, dict):
        settings = build_settings(settings)
    node = build_node(settings)
    await node.start()
    server = await serve(node, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return Server(node, server, port)


async def stop_server(srv: Server) -> None:
    srv.server.close()
    await srv.node.stop()
    await srv.server.wait_closed()


@pytest.fixture(scope="session")
async def server() -> AsyncIterator[Server]:
    """The shared gateway with the standard test namespaces."""
    srv = await start_server(standard_settings())
    yield srv
    await stop_server(srv)


@pytest.fixture(scope="session")
async def make_server() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Factory for gateways with custom settings; all stopped at session end."""
    started: list[Server] = []

    async def factory(settings: dict[str, Any]) -> Server:
        srv = await start_server(settings)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        await stop_server(srv)


# ---- PostgreSQL: one real server per session, a fresh database per test -----------------


def with_database(dsn: str, database: str) -> str:
    """``dsn`` (URL form) pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def server_dirs() -> Iterator[Callable[[str], Path]]:
    """Makes directories for PostgreSQL data under /tmp, removed at the end of the session.

    Not under pytest's tmp_path: every pytest process that starts on this machine resets
    /tmp/pytest-of-<user> to mode 0700, which (as root, where the server runs as another
    user) pulls the data directory from under a running server of a concurrent session."""
    root = Path(tempfile.mkdtemp(prefix="sentchat-test-pg-"))
    root.chmod(0o755)  # the server user must traverse it
    counter = itertools.count()

    def make(name: str) -> Path:
        path = root / f"{name}{next(counter)}"
        path.mkdir()
        return path

    try:
        yield make
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def pg_dsn(server_dirs: Callable[[str], Path]) -> AsyncIterator[str]:
    """DSN of a database on the session's server from which databases can be created."""
    external = os.environ.get("SENTCHAT_TEST_POSTGRES_DSN")
    if external:
        yield external
        return
    server = EmbeddedPostgres(server_dirs("session"))
    dsn = await server.start()
    try:
        yield dsn
    finally:
        await server.stop()


async def _admin(pg_dsn: str, sql: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def create_database(pg_dsn: str, prefix: str = "test") -> str:
    """A new, empty database on the session's server; returns its DSN."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    await _admin(pg_dsn, f'CREATE DATABASE "{name}" TEMPLATE template0')
    return with_database(pg_dsn, name)


async def drop_database(dsn: str) -> None:
    """Drop a database made by create_database (connections to it are ended)."""
    name = urlsplit(dsn).path.lstrip("/")
    await _admin(with_database(dsn, "postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """DSN of a new, empty database, dropped after the test."""
    dsn = await create_database(pg_dsn)
    try:
        yield dsn
    finally:
        await drop_database(dsn)
