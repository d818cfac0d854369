"""Storage fixtures; the session's PostgreSQL (``pg_dsn``, ``empty_dsn``) is in tests/conftest.py.

One real PostgreSQL per test session; every test gets a database of its own.

The server is an ``EmbeddedPostgres`` with its data under /tmp (which the server user can
reach when we run as root), or the server of
``SENTCHAT_TEST_POSTGRES_DSN`` when set (its role must be allowed to CREATE DATABASE).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import asyncpg
import pytest

from storage.migrate import migrate
from storage.partitions import PartitionManager

T = TypeVar("T")

POOL_MAX = 5
"""Connections per test pool: several tests' pools and the server's default
max_connections (100) must fit together."""

POOL_CLOSE_S = 10.0
"""Grace for a test pool to close before its connections are cut."""


@pytest.fixture
async def empty_pool(empty_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a new database without any schema."""
    pool = await asyncpg.create_pool(empty_dsn, min_size=1, max_size=POOL_MAX)
    try:
        yield pool
    finally:
        try:
            # A failed test may leave a connection checked out (a store not closed):
            # do not let that hang the session.
            await asyncio.wait_for(pool.close(), POOL_CLOSE_S)
        except TimeoutError:
            pool.terminate()


@pytest.fixture
async def pool(empty_pool: asyncpg.Pool) -> asyncpg.Pool:
    """A pool on a new database, migrated, with daily partitions around today."""
    await migrate(empty_pool)
    await PartitionManager(empty_pool, "daily", ahead=1).ensure()
    return empty_pool


class SyncReader:
    """A connection usable from synchronous code (an ``on_committed`` hook): it runs on its
    own event loop in a thread, so blocking on it does not need the caller's loop."""

    def __init__(self, dsn: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn: asyncpg.Connection = self._call(asyncpg.connect(dsn))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def fetchval(self, query: str, *args: object) -> Any:
        """Run ``query`` on the reader's connection and wait for its value."""
        return self._call(self._conn.fetchval(query, *args))

    def close(self) -> None:
        """Close the connection and stop the thread."""
        self._call(self._conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
