"""Migrations: empty database, re-run, concurrent runs, failures, edited files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from storage.migrate import MigrationError, load_migrations, migrate

ALL = [m.label for m in load_migrations()]


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_empty_database_gets_the_schema(empty_pool: asyncpg.Pool) -> None:
    assert ALL and ALL[0] == "0001_publications"
    assert await migrate(empty_pool) == ALL
    async with empty_pool.acquire() as conn:
        assert {"schema_migrations", "publications", "channel_streams"} <= await _tables(conn)
        # Range-partitioned by created_at, and no DEFAULT partition.
        strategy = await conn.fetchval(
            "SELECT partstrat::text FROM pg_partitioned_table "
            "WHERE partrelid = 'publications'::regclass")
        assert strategy == "r"
        key = await conn.fetchval("SELECT pg_get_partkeydef('publications'::regclass)")
        assert key == "RANGE (created_at)"
        assert await conn.fetchval(
            "SELECT partdefid FROM pg_partitioned_table "
            "WHERE partrelid = 'publications'::regclass") == 0
        indexes = {r["indexdef"] for r in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'publications'")}
        assert any('(channel, "offset")' in d for d in indexes)
        assert any("(id)" in d for d in indexes)
        columns = dict(await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'publications'"))
        assert columns == {
            "channel": "text", "offset": "bigint", "epoch": "text", "id": "uuid",
            "data": "jsonb", "data_raw": "bytea", "info": "jsonb", "tags": "jsonb",
            "created_at": "timestamp with time zone"}
        versions = [r["version"] for r in await conn.fetch(
            "SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [label[:4] for label in ALL]


async def test_rerun_is_a_no_op(empty_pool: asyncpg.Pool) -> None:
    await migrate(empty_pool)
    assert await migrate(empty_pool) == []
    async with empty_pool.acquire() as conn:
        assert await migrate(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL)


async def test_concurrent_runs_apply_each_migration_once(empty_dsn: str) -> None:
    first = await asyncpg.connect(empty_dsn)
    second = await asyncpg.connect(empty_dsn)
    try:
        a, b = await asyncio.gather(migrate(first), migrate(second))
        # Together they applied everything, and nothing twice.
        assert sorted(a + b) == ALL
        assert not set(a) & set(b)
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == len(ALL)
        assert await migrate(second) == []
    finally:
        await first.close()
        await second.close()


async def test_many_concurrent_runs(empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(label for r in results for label in r) == ALL
    finally:
        for conn in conns:
            await conn.close()


async def test_failing_migration_leaves_nothing(empty_pool: asyncpg.Pool, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(empty_pool, tmp_path)
    async with empty_pool.acquire() as conn:
        assert {"a", "schema_migrations"} == await _tables(conn)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 1
    # Fixed file: the run continues where it stopped.
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int);")
    assert await migrate(empty_pool, tmp_path) == ["0002_bad"]


async def test_edited_migration_is_refused(empty_pool: asyncpg.Pool, tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE a (x int);")
    await migrate(empty_pool, tmp_path)
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE a (x bigint);")
    with pytest.raises(MigrationError, match="changed"):
        await migrate(empty_pool, tmp_path)


def test_file_names_are_checked(tmp_path: Path) -> None:
    (tmp_path / "1_bad name.sql").write_text("")
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)
    (tmp_path / "1_bad name.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("")
    (tmp_path / "0001_b.sql").write_text("")
    with pytest.raises(MigrationError, match="two migrations"):
        load_migrations(tmp_path)
