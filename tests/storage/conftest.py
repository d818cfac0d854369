"""Storage fixtures; the session's PostgreSQL (``pg_dsn``, ``empty_dsn``) is in tests/conftest.py.

One real PostgreSQL per test session; every test gets a database of its own.

The server is an ``EmbeddedPostgres`` with its data under /tmp (which the server user can
reach when we run as root), or the server of
``SENTCHAT_TEST_POSTGRES_DSN`` when set (its role must be allowed to CREATE DATABASE).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage.migrate import migrate
from storage.partitions import PartitionManager

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
