"""Time partitions: created ahead, idempotent, concurrent-safe, dropped past retention."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from storage.migrate import migrate
from storage.partitions import PartitionManager, partition_name, range_from_name

NOW = datetime(2026, 3, 15, 12, 30, tzinfo=UTC)
DAY = 86400.0


def clock_at(moment: datetime) -> float:
    return moment.timestamp()


async def _insert(pool: asyncpg.Pool, created_at: datetime, channel: str = "c") -> None:
    await pool.execute(
        'INSERT INTO publications (channel, "offset", epoch, id, data, created_at) '
        "VALUES ($1, 1, 'e', $2, '{}', $3)", channel, uuid.uuid4(), created_at)


@pytest.fixture
async def schema(empty_pool: asyncpg.Pool) -> asyncpg.Pool:
    """A migrated database without partitions."""
    await migrate(empty_pool)
    return empty_pool


async def test_daily_ensure_covers_yesterday_to_ahead(schema: asyncpg.Pool) -> None:
    manager = PartitionManager(schema, "daily", ahead=3, clock=lambda: clock_at(NOW))
    created = await manager.ensure()
    assert created == [f"publications_p202603{d}" for d in (14, 15, 16, 17, 18)]
    parts = await manager.partitions()
    assert [p.name for p in parts] == created
    assert parts[0].start == datetime(2026, 3, 14, tzinfo=UTC)
    assert parts[-1].end == datetime(2026, 3, 19, tzinfo=UTC)
    # Contiguous ranges.
    assert all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))
    assert await manager.ensure() == []
    # Rows route to their day; outside the range there is no partition (no DEFAULT).
    await _insert(schema, datetime(2026, 3, 16, 23, 59, 59, tzinfo=UTC))
    assert await schema.fetchval("SELECT count(*) FROM publications_p20260316") == 1
    with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
        await _insert(schema, datetime(2026, 3, 20, tzinfo=UTC))


async def test_monthly_ensure_and_year_boundary(schema: asyncpg.Pool) -> None:
    manager = PartitionManager(schema, "monthly", ahead=2,
                               clock=lambda: clock_at(datetime(2026, 12, 31, 23, tzinfo=UTC)))
    assert await manager.ensure() == [
        "publications_p202611", "publications_p202612", "publications_p202701",
        "publications_p202702"]
    parts = await manager.partitions()
    assert parts[2].start == datetime(2027, 1, 1, tzinfo=UTC)
    assert parts[2].end == datetime(2027, 2, 1, tzinfo=UTC)


async def test_concurrent_ensure_creates_each_once(schema: asyncpg.Pool, empty_dsn: str) -> None:
    pools = [await asyncpg.create_pool(empty_dsn, min_size=1, max_size=1) for _ in range(3)]
    try:
        managers = [PartitionManager(p, "daily", ahead=5, clock=lambda: clock_at(NOW))
                    for p in pools]
        results = await asyncio.gather(*(m.ensure() for m in managers))
        names = [n for r in results for n in r]
        assert len(names) == len(set(names)) == 7
        assert len(await managers[0].partitions()) == 7
    finally:
        for p in pools:
            await p.close()


async def test_interval_change_fills_only_gaps(schema: asyncpg.Pool) -> None:
    daily = PartitionManager(schema, "daily", ahead=1, clock=lambda: clock_at(NOW))
    await daily.ensure()  # 14..16 March
    monthly = PartitionManager(schema, "monthly", ahead=1, clock=lambda: clock_at(NOW))
    created = await monthly.ensure()
    # February and April whole; March around the existing days.
    assert created == [
        "publications_p202602",
        "publications_p20260301000000_20260314000000",
        "publications_p20260317000000_20260401000000",
        "publications_p202604"]
    parts = await monthly.partitions()
    assert all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))
    assert await monthly.ensure() == []


async def test_ensure_for_creates_missing_partition(schema: asyncpg.Pool) -> None:
    manager = PartitionManager(schema, "daily", ahead=0, clock=lambda: clock_at(NOW))
    old = datetime(2025, 1, 2, 3, 4, tzinfo=UTC)
    assert await manager.ensure_for([old, old + timedelta(hours=1)]) == ["publications_p20250102"]
    await _insert(schema, old)


async def test_drop_older_than(schema: asyncpg.Pool) -> None:
    now = [clock_at(NOW)]
    manager = PartitionManager(schema, "daily", ahead=1, clock=lambda: now[0])
    await manager.ensure()  # 14, 15, 16
    await manager.ensure_for([NOW - timedelta(days=10), NOW - timedelta(days=3)])  # 5, 12
    await _insert(schema, NOW - timedelta(days=10))
    await _insert(schema, NOW - timedelta(days=3))
    await _insert(schema, NOW)
    # Retention 2 days: cutoff 13 March 12:30 -> partitions ending by then go (5th, 12th).
    dropped = await manager.drop_older_than(2 * DAY)
    assert dropped == ["publications_p20260305", "publications_p20260312"]
    names = [p.name for p in await manager.partitions()]
    assert names == ["publications_p20260314", "publications_p20260315", "publications_p20260316"]
    assert await schema.fetchval("SELECT count(*) FROM publications") == 1
    assert await schema.fetchval(
        "SELECT count(*) FROM pg_class WHERE relkind = 'r' "
        "AND relname LIKE 'publications\\_p202603%'") == 3
    assert await manager.drop_older_than(2 * DAY) == []
    # Two days later (cutoff 15 March 12:30) the 14th is wholly older than the cutoff too.
    now[0] += 2 * DAY
    assert await manager.drop_older_than(2 * DAY) == ["publications_p20260314"]


async def test_drop_finishes_an_interrupted_drop(schema: asyncpg.Pool) -> None:
    manager = PartitionManager(schema, "daily", ahead=0, clock=lambda: clock_at(NOW))
    await manager.ensure_for([NOW - timedelta(days=30)])
    # A crash between DETACH and DROP leaves a plain table behind.
    await schema.execute("ALTER TABLE publications DETACH PARTITION publications_p20260213")
    assert await manager.drop_older_than(DAY) == ["publications_p20260213"]
    assert await schema.fetchval("SELECT to_regclass('publications_p20260213')") is None


async def test_concurrent_drops(schema: asyncpg.Pool, empty_dsn: str) -> None:
    manager = PartitionManager(schema, "daily", ahead=0, clock=lambda: clock_at(NOW))
    await manager.ensure_for([NOW - timedelta(days=d) for d in range(5, 10)])
    pools = [await asyncpg.create_pool(empty_dsn, min_size=1, max_size=1) for _ in range(2)]
    try:
        managers = [PartitionManager(p, "daily", ahead=0, clock=lambda: clock_at(NOW))
                    for p in pools]
        results = await asyncio.gather(*(m.drop_older_than(DAY) for m in managers))
        # Both racers can back off from the same partition (each sees the other's detach in
        # progress); it is left pending, never half-dropped, and the next run finishes it.
        results.append(await manager.drop_older_than(DAY))
        names = [n for r in results for n in r]
        assert set(names) == {f"publications_p{(NOW - timedelta(days=d)):%Y%m%d}" for d in range(5, 10)}
        assert await manager.partitions() == []
        assert await schema.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'publications\\_p%' AND relkind = 'r'") == 0
    finally:
        for p in pools:
            await p.close()


def test_names_round_trip() -> None:
    day = datetime(2026, 2, 28, tzinfo=UTC)
    assert partition_name(day, day + timedelta(days=1)) == "publications_p20260228"
    assert range_from_name("publications_p20260228") == (day, datetime(2026, 3, 1, tzinfo=UTC))
    month = datetime(2026, 2, 1, tzinfo=UTC)
    assert partition_name(month, datetime(2026, 3, 1, tzinfo=UTC)) == "publications_p202602"
    assert range_from_name("publications_p202602") == (month, datetime(2026, 3, 1, tzinfo=UTC))
    odd = (datetime(2026, 2, 3, 4, tzinfo=UTC), datetime(2026, 2, 5, tzinfo=UTC))
    assert range_from_name(partition_name(*odd)) == odd
    assert range_from_name("publications_other") is None
