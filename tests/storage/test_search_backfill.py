"""Migration 0007 (search) on a database that already holds messages: a small table is backfilled
and indexed inside the migration; a big one (over 100,000 rows) gets its vectors in
batches, each its own transaction, while writes go on, then its indexes CONCURRENTLY, with
progress reported (what `sentchat migrate` prints)."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg

from storage.migrate import MIGRATIONS_DIR, migrate
from storage.search import SEARCH_INDEXES, SearchIndexer

ROWS = 100_500


async def _before_search(dsn: str, tmp_path: Path) -> asyncpg.Connection:
    """A database migrated up to (not including) 0007, the schema search was added to."""
    older = tmp_path / "older"
    older.mkdir()
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if f.name < "0007":
            shutil.copy(f, older / f.name)
    conn = await asyncpg.connect(dsn)
    await migrate(conn, older)
    await conn.execute("INSERT INTO chat_channels (id, kind, name, created_by) VALUES ('c1', 'public', 'one', 'u')")
    return conn


async def test_small_table_is_backfilled_inside_the_migration(empty_dsn: str, tmp_path: Path) -> None:
    conn = await _before_search(empty_dsn, tmp_path)
    try:
        await conn.execute("""INSERT INTO chat_messages (channel_id, author_id, text)
                              VALUES ('c1', 'u', 'deploying the service'), ('c1', 'u', 'lunch')""")
        await conn.execute("UPDATE chat_messages SET deleted = true WHERE text = 'lunch'")
        assert await migrate(conn) == ["0007_search"]
        rows = await conn.fetch("SELECT text, search_tsv::text AS v FROM chat_messages ORDER BY id")
        assert "'deploy'" in rows[0]["v"] and rows[1]["v"] is None
        assert await SearchIndexer(conn).missing_indexes() == []
        assert await SearchIndexer(conn).run() == 0  # nothing left to do
    finally:
        await conn.close()


async def test_big_table_is_backfilled_in_batches_while_writes_go_on(empty_dsn: str, tmp_path: Path) -> None:
    conn = await _before_search(empty_dsn, tmp_path)
    writer = await asyncpg.connect(empty_dsn, server_settings={"lock_timeout": "2000"})
    try:
        await conn.execute(
            """INSERT INTO chat_messages (channel_id, author_id, text)
               SELECT 'c1', 'u', 'message number ' || g || CASE WHEN g % 1000 = 0 THEN ' zebra' ELSE '' END
               FROM generate_series(1, $1) AS g""", ROWS)
        assert await migrate(conn) == ["0007_search"]
        # Too big to do inside the migration: nothing filled, no indexes yet.
        assert await conn.fetchval("SELECT count(*) FROM chat_messages WHERE search_tsv IS NOT NULL") == 0
        assert len(await SearchIndexer(conn).missing_indexes()) == len(SEARCH_INDEXES)
        lines: list[str] = []
        written: list[int] = []

        async def progress(line: str) -> None:
            lines.append(line)
            # Between batches a send commits at once (lock_timeout would raise otherwise),
            # and is indexed by the trigger in its own transaction.
            written.append(await writer.fetchval(
                """INSERT INTO chat_messages (channel_id, author_id, text)
                   VALUES ('c1', 'u', 'written during the backfill zebra') RETURNING id"""))

        filled = await SearchIndexer(conn, progress).run(batch=20_000)
        assert filled == ROWS
        assert any("100.0% of ids" in line for line in lines), lines
        assert any(line.startswith("search backfill:") for line in lines)
        assert sum("built in" in line for line in lines) == len(SEARCH_INDEXES)
        assert await SearchIndexer(conn).missing_indexes() == []
        assert await conn.fetchval(
            "SELECT count(*) FROM chat_messages WHERE search_tsv IS NULL AND NOT deleted") == 0
        found = await conn.fetchval(
            "SELECT count(*) FROM chat_messages WHERE search_tsv @@ plainto_tsquery('sentchat_english', 'zebra')")
        assert found == ROWS // 1000 + len(written)
        # Run again: resumable, nothing to do.
        assert await SearchIndexer(conn).run() == 0
    finally:
        await writer.close()
        await conn.close()
