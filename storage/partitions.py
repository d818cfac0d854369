"""Time partitions: created ahead, dropped whole past retention.

Used for ``publications`` (the default table) and ``audit_log`` (monthly, kept forever:
storage/audit.py never drops). Ranges are UTC days (``<table>_pYYYYMMDD``) or UTC months
(``<table>_pYYYYMM``). If partitions of another interval already exist (the setting
changed), only the gaps are filled, so ranges never overlap; such a gap partition is named
after its exact range (``<table>_pYYYYMMDDHHMMSS_YYYYMMDDHHMMSS``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

log = logging.getLogger(__name__)

Interval = Literal["daily", "monthly"]

TABLE = "publications"

PARTITION_LOCK_KEY = 0x53454E545F505254
"""Advisory lock key ("SENT_PRT"): partition DDL of all processes is serialised on it."""

_BOUND = re.compile(r"FOR VALUES FROM \((?P<lo>[^)]*)\) TO \((?P<hi>[^)]*)\)")
_NAME_SUFFIX = re.compile(r"^_p(?P<a>\d{6}|\d{8}|\d{14})(?:_(?P<b>\d{14}))?$")
# Table names come from code (never input); they are interpolated into DDL, so keep them plain.
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

_LIST_PARTITIONS = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass
"""


@dataclass(frozen=True, slots=True)
class Partition:
    """One attached partition and its [start, end) range (None = unbounded)."""

    name: str
    start: datetime | None
    end: datetime | None
    detach_pending: bool = False


def period_start(moment: datetime, interval: Interval) -> datetime:
    """Start (UTC) of the day or month containing ``moment``."""
    moment = moment.astimezone(UTC)
    if interval == "daily":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def shift(start: datetime, interval: Interval, count: int) -> datetime:
    """``start`` moved by ``count`` days or months (``start`` is a period start)."""
    if interval == "daily":
        return start + timedelta(days=count)
    months = start.year * 12 + (start.month - 1) + count
    return start.replace(year=months // 12, month=months % 12 + 1)


def partition_name(start: datetime, end: datetime, table: str = TABLE) -> str:
    """The name derived from a range: pYYYYMMDD for a UTC day, pYYYYMM for a UTC month."""
    if start == period_start(start, "daily") and end == shift(start, "daily", 1):
        return f"{table}_p{start:%Y%m%d}"
    if start == period_start(start, "monthly") and end == shift(start, "monthly", 1):
        return f"{table}_p{start:%Y%m}"
    return f"{table}_p{start:%Y%m%d%H%M%S}_{end:%Y%m%d%H%M%S}"


def range_from_name(name: str, table: str = TABLE) -> tuple[datetime, datetime] | None:
    """Inverse of ``partition_name``; None for a name we did not generate."""
    if not name.startswith(table):
        return None
    match = _NAME_SUFFIX.match(name[len(table):])
    if match is None:
        return None
    a, b = match["a"], match["b"]
    if b is not None:
        if len(a) != 14:
            return None
        return (datetime.strptime(a, "%Y%m%d%H%M%S").replace(tzinfo=UTC),
                datetime.strptime(b, "%Y%m%d%H%M%S").replace(tzinfo=UTC))
    if len(a) == 8:
        start = datetime.strptime(a, "%Y%m%d").replace(tzinfo=UTC)
        return start, shift(start, "daily", 1)
    if len(a) == 6:
        start = datetime.strptime(a + "01", "%Y%m%d").replace(tzinfo=UTC)
        return start, shift(start, "monthly", 1)
    return None


def _parse_bound(text: str) -> datetime | None:
    value = text.strip().strip("'")
    if value.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


def _gaps(start: datetime, end: datetime,
          taken: list[tuple[datetime | None, datetime | None]]) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) not covered by any range in ``taken``."""
    pieces = [(start, end)]
    for lo, hi in taken:
        rest: list[tuple[datetime, datetime]] = []
        for a, b in pieces:
            lo_c = a if lo is None else max(a, lo)
            hi_c = b if hi is None else min(b, hi)
            if lo_c >= hi_c:  # no overlap
                rest.append((a, b))
                continue
            if a < lo_c:
                rest.append((a, lo_c))
            if hi_c < b:
                rest.append((hi_c, b))
        pieces = rest
    return pieces


def _literal(moment: datetime) -> str:
    # Generated from a datetime, never from input: ISO text with an explicit +00:00 offset.
    return "'" + moment.astimezone(UTC).isoformat() + "'"


async def create_partitions(conn: asyncpg.Connection, ranges: list[tuple[datetime, datetime]], *,
                            table: str = TABLE, after_create: Sequence[str] = ()) -> list[str]:
    """Create the partitions of ``table`` covering ``ranges`` where none exists yet; returns
    the names created. Must run inside a transaction: it takes the partition advisory lock
    until commit. ``after_create`` statements run after each new partition, with
    ``{partition}`` replaced by its quoted name (e.g. a TRUNCATE trigger, which PostgreSQL
    does not clone from the parent)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
    existing = await _list(conn, table)
    taken: list[tuple[datetime | None, datetime | None]] = [(p.start, p.end) for p in existing]
    created: list[str] = []
    for start, end in ranges:
        for lo, hi in _gaps(start, end, taken):
            name = partition_name(lo, hi, table)
            await conn.execute(
                f'CREATE TABLE "{name}" PARTITION OF {table} '
                f"FOR VALUES FROM ({_literal(lo)}) TO ({_literal(hi)})")
            for statement in after_create:
                await conn.execute(statement.replace("{partition}", f'"{name}"'))
            taken.append((lo, hi))
            created.append(name)
    return created


class PartitionManager:
    """Keeps ``table`` partitions from one interval before now to ``ahead`` after.

    Every method is idempotent and safe to run from several processes at once."""

    def __init__(self, pool: asyncpg.Pool, interval: Interval = "daily", ahead: int = 3, *,
                 clock: Callable[[], float] = time.time, table: str = TABLE,
                 after_create: Sequence[str] = ()) -> None:
        if interval not in ("daily", "monthly"):
            raise ValueError(f"interval must be 'daily' or 'monthly', not {interval!r}")
        if ahead < 0:
            raise ValueError("ahead must be >= 0")
        if not _TABLE_NAME.match(table):
            raise ValueError(f"table name {table!r} must be a plain lower-case identifier")
        self.pool = pool
        self.interval: Interval = interval
        self.ahead = ahead
        self.table = table
        self._after_create = tuple(after_create)
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def ensure(self) -> list[str]:
        """Create the partitions covering now - 1 interval .. now + ``ahead`` intervals;
        returns the names created by this call."""
        first = shift(period_start(self._now(), self.interval), self.interval, -1)
        ranges = [(shift(first, self.interval, k), shift(first, self.interval, k + 1))
                  for k in range(self.ahead + 2)]
        return await self._create(ranges)

    async def ensure_for(self, moments: Iterable[datetime]) -> list[str]:
        """Create the partitions holding ``moments`` (for rows whose partition is missing)."""
        starts = sorted({period_start(m, self.interval) for m in moments})
        return await self._create([(s, shift(s, self.interval, 1)) for s in starts])

    async def partitions(self) -> list[Partition]:
        """The attached partitions, oldest first (unbounded ones first/last)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await _list(conn, self.table)

    async def _create(self, ranges: list[tuple[datetime, datetime]]) -> list[str]:
        async with self.pool.acquire() as conn, conn.transaction():
            created = await create_partitions(conn, ranges, table=self.table,
                                              after_create=self._after_create)
        if created:
            log.info("created partitions %s", ", ".join(created))
        return created

    async def drop_older_than(self, seconds: float) -> list[str]:
        """Detach and drop every partition whose whole range ends before now - ``seconds``;
        returns the names dropped. Rows of a partition still partly inside retention stay.

        Detaching is CONCURRENTLY (writers are never blocked behind an ACCESS EXCLUSIVE lock
        on ``publications``), which cannot run in a transaction: concurrent callers are
        tolerated instead of locked out (the loser of a race skips that partition)."""
        cutoff = self._now() - timedelta(seconds=seconds)
        dropped: list[str] = []
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                partitions = await _list(conn, self.table)
            for part in partitions:
                if part.end is None or part.end > cutoff:
                    continue
                mode = "FINALIZE" if part.detach_pending else "CONCURRENTLY"
                try:
                    await conn.execute(
                        f'ALTER TABLE {self.table} DETACH PARTITION "{part.name}" {mode}')
                except (asyncpg.UndefinedTableError, asyncpg.ObjectNotInPrerequisiteStateError,
                        asyncpg.InvalidTableDefinitionError, asyncpg.WrongObjectTypeError) as exc:
                    # Another process is detaching or dropped it; its run finishes the job.
                    log.info("skipping partition %s: %s", part.name, exc)
                    continue
                await conn.execute(f'DROP TABLE IF EXISTS "{part.name}"')
                dropped.append(part.name)
            dropped += await self._drop_leftovers(conn, cutoff)
        if dropped:
            log.info("dropped partitions %s", ", ".join(dropped))
        return dropped

    async def _drop_leftovers(self, conn: asyncpg.Connection, cutoff: datetime) -> list[str]:
        """Drop tables of ours that were detached but not dropped (a crash in between)."""
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' "
            "AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $1::regclass) "
            "AND c.relname LIKE $2 AND NOT c.relispartition",
            self.table, self.table.replace("_", "\\_") + "\\_p%")
        dropped = []
        for row in rows:
            bounds = range_from_name(row["relname"], self.table)
            if bounds is not None and bounds[1] <= cutoff:
                await conn.execute(f'DROP TABLE IF EXISTS "{row["relname"]}"')
                dropped.append(row["relname"])
        return dropped


async def _list(conn: asyncpg.Connection, table: str = TABLE) -> list[Partition]:
    """Partitions of ``table`` (call inside a transaction: bounds print in UTC)."""
    await conn.execute("SET LOCAL TimeZone = 'UTC'")
    out = []
    for name, bound, pending in await conn.fetch(_LIST_PARTITIONS, table):
        match = _BOUND.search(bound or "")
        if match is None:  # a DEFAULT partition somebody added: it has no range
            continue
        out.append(Partition(name, _parse_bound(match["lo"]), _parse_bound(match["hi"]), pending))
    far_past = datetime.min.replace(tzinfo=UTC)
    return sorted(out, key=lambda p: p.start or far_past)
