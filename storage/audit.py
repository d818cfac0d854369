"""Append-only, hash-chained audit log (``audit_log``, migration 0003_audit.sql).

Every record's ``hash`` is SHA-256 over the previous record's hash followed by a canonical
encoding of the record (``record_hash``); the first record chains from 32 zero bytes. Ids
are gap-free (1, 2, 3, ...): they come from the one-row ``audit_head`` table, locked
``FOR UPDATE`` inside the writer's own transaction, so appends from any number of
connections and processes form one linear chain, and a rolled-back write leaves neither a
record nor a hole.

Triggers refuse UPDATE, DELETE and TRUNCATE. A superuser can still get around them
(``ALTER TABLE ... DISABLE TRIGGER``, ``session_replication_role = replica``, dropping a
partition): ``verify`` walks the chain and names the first record that no longer fits.
What verify cannot see is a rewrite of the whole chain from some record on together with
``audit_head``; compare the head hash it reports with one recorded elsewhere for that.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from storage.partitions import PartitionManager, create_partitions, period_start, shift

TABLE = "audit_log"

ZERO_HASH = bytes(32)
"""prev_hash of record 1."""

AUDIT_PARTITION_DDL = (
    # PostgreSQL clones row triggers onto partitions but not TRUNCATE triggers: without this,
    # `TRUNCATE audit_log_p202603` would go through.
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON {partition} "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse()",
)

AUDIT_PARTITIONS_AHEAD = 3
"""Months of audit partitions kept ready beyond the current one."""

# Locks the head, then reads the clock: a record's `at` is taken after the previous record
# committed, so `at` follows id order (as far as the server clock does). The jsonb round
# trip returns the delta exactly as it will read back later, which is what gets hashed.
# The parameter is text, not jsonb, so a jsonb codec set on the caller's connection is
# irrelevant.
_LOCK_HEAD = """
WITH head AS MATERIALIZED (
    SELECT last_id, last_hash FROM audit_head WHERE singleton FOR UPDATE
), stamped AS MATERIALIZED (
    SELECT last_id, last_hash, clock_timestamp() AS at FROM head
)
SELECT last_id, last_hash, at, $1::text::jsonb::text AS delta,
       to_regclass('audit_log_p' || to_char(at AT TIME ZONE 'UTC', 'YYYYMM')) IS NOT NULL
           AS partition_exists
FROM stamped
"""

# One round trip: the record and the head move together.
_INSERT = """
WITH record AS (
    INSERT INTO audit_log (id, at, actor, action, target, delta, prev_hash, hash)
    VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8)
)
UPDATE audit_head SET last_id = $1, last_hash = $8 WHERE singleton
"""

_WALK = """
SELECT id, at, actor, action, target, delta::text AS delta, prev_hash, hash
FROM audit_log ORDER BY id
"""


class AuditError(RuntimeError):
    """The audit log cannot be written as asked (e.g. outside a transaction)."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of ``verify``.

    ``checked``: records that verified before the walk stopped (all of them when ``ok``).
    ``first_bad_id``: the first record that is changed, out of place or missing.
    ``head_hash``: hex of the last record's hash when ``ok`` — record it somewhere else to
    detect a later rewrite of the whole chain tail."""

    ok: bool
    checked: int
    first_bad_id: int | None
    reason: str
    head_hash: str = ""


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 text, no NaN/Infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def format_at(at: datetime) -> str:
    """``at`` as hashed: ISO 8601 in UTC with microseconds, e.g. 2026-03-15T12:30:00.000001Z."""
    if at.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(prev_hash: bytes, record_id: int, at: datetime, actor: str, action: str,
                target: str, delta: Any) -> bytes:
    """SHA-256 of ``prev_hash`` + the canonical JSON array
    ``[id, at, actor, action, target, delta]`` (UTF-8). A JSON array keeps field borders
    unambiguous whatever the strings contain."""
    body = canonical_json([record_id, format_at(at), actor, action, target, delta])
    return hashlib.sha256(prev_hash + body.encode()).digest()


def audit_partitions(pool: asyncpg.Pool, ahead: int = AUDIT_PARTITIONS_AHEAD, *,
                     clock: Callable[[], float] = time.time) -> PartitionManager:
    """The partition manager of ``audit_log``: monthly, ``ahead`` months ready. Call
    ``ensure()`` at start and periodically; never ``drop_older_than`` (kept forever)."""
    return PartitionManager(pool, "monthly", ahead, clock=clock, table=TABLE,
                            after_create=AUDIT_PARTITION_DDL)


async def append(conn: asyncpg.Connection, *, actor: str, action: str, target: str,
                 before: Any = None, after: Any = None) -> int:
    """Append one record describing a write (e.g. action 'message.edit', target
    'message:42', before/after the changed fields); returns its id.

    Must run inside the caller's open transaction — the one making the write — so the
    record commits or rolls back with it. It locks the chain head until that transaction
    ends, which serialises all audited writes: call it last, just before commit. Under
    REPEATABLE READ or SERIALIZABLE a concurrent append makes it raise a serialization
    failure (retry the transaction, as for any such conflict).

    ``before`` and ``after`` must be JSON-serialisable (TypeError / ValueError otherwise)."""
    for name, value in (("actor", actor), ("action", action), ("target", target)):
        if not isinstance(value, str):
            raise TypeError(f"audit {name} must be a str, not {type(value).__name__}")
    if not action:
        raise ValueError("audit action must not be empty")
    if not conn.is_in_transaction():
        raise AuditError("audit.append must run inside the transaction of the write it "
                         "records (async with conn.transaction(): ...)")
    delta_text = canonical_json({"before": before, "after": after})
    head = await conn.fetchrow(_LOCK_HEAD, delta_text)
    if head is None:
        raise AuditError("audit_head has no row: the audit migration did not run completely")
    at: datetime = head["at"]
    if not head["partition_exists"]:
        await _create_partition(conn, at)
    record_id: int = head["last_id"] + 1
    prev_hash = bytes(head["last_hash"])
    delta = json.loads(head["delta"])
    digest = record_hash(prev_hash, record_id, at, actor, action, target, delta)
    await conn.execute(_INSERT, record_id, at, actor, action, target, head["delta"],
                       prev_hash, digest)
    return record_id


async def _create_partition(conn: asyncpg.Connection, at: datetime) -> None:
    """Create the month partition for ``at`` inside the caller's transaction (maintenance
    normally has it ready; this covers a deployment where it has not run yet)."""
    start = period_start(at, "monthly")
    # create_partitions sets TimeZone for its transaction; put the caller's setting back.
    zone = await conn.fetchval("SELECT current_setting('TimeZone')")
    await create_partitions(conn, [(start, shift(start, "monthly", 1))], table=TABLE,
                            after_create=AUDIT_PARTITION_DDL)
    await conn.execute("SELECT set_config('TimeZone', $1, true)", zone)


async def verify(target: asyncpg.Pool | asyncpg.Connection, *, prefetch: int = 500) -> VerifyResult:
    """Walk the chain in id order and report the first record that does not fit: content
    changed (hash mismatch), chained to something else (prev_hash mismatch), missing (a gap
    in ids, or records missing at the end according to ``audit_head``), or duplicated.

    Reads through a server-side cursor (``prefetch`` rows at a time: memory stays bounded
    on any size of log) in one REPEATABLE READ snapshot, so appends running meanwhile are
    neither half-seen nor reported as damage."""
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            return await _verify_conn(conn, prefetch)
    return await _verify_conn(target, prefetch)


async def _verify_conn(conn: asyncpg.Connection, prefetch: int) -> VerifyResult:
    if conn.is_in_transaction():
        # Use the caller's transaction (a cursor needs one); its snapshot is its business.
        return await _walk(conn, prefetch)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _walk(conn, prefetch)


async def _walk(conn: asyncpg.Connection, prefetch: int) -> VerifyResult:
    head = await conn.fetchrow("SELECT last_id, last_hash FROM audit_head WHERE singleton")
    if head is None:
        return VerifyResult(False, 0, None, "audit_head has no row (deleted?)")
    checked = 0
    prev_hash = ZERO_HASH
    expected = 1
    async for row in conn.cursor(_WALK, prefetch=prefetch):
        rid = row["id"]
        if rid > expected:
            missing = f"{expected}" if rid == expected + 1 else f"{expected}..{rid - 1}"
            return VerifyResult(False, checked, expected,
                                f"record {missing} missing (deleted): the next record is {rid}")
        if rid < expected:
            return VerifyResult(False, checked, rid, f"record {rid} appears more than once")
        if bytes(row["prev_hash"]) != prev_hash:
            return VerifyResult(False, checked, rid,
                                f"prev_hash does not match the hash of record {rid - 1}"
                                if rid > 1 else "prev_hash of the first record is not zero")
        digest = record_hash(prev_hash, rid, row["at"], row["actor"], row["action"],
                             row["target"], json.loads(row["delta"]))
        if digest != bytes(row["hash"]):
            return VerifyResult(False, checked, rid,
                                "hash mismatch: the record's content was changed")
        prev_hash = digest
        checked += 1
        expected += 1
    last = expected - 1
    if head["last_id"] > last:
        missing = f"{expected}" if head["last_id"] == expected else f"{expected}..{head['last_id']}"
        return VerifyResult(False, checked, expected,
                            f"record {missing} missing (deleted at the end of the chain)")
    if head["last_id"] < last:
        return VerifyResult(False, checked, head["last_id"] + 1,
                            f"audit_head says the chain ends at {head['last_id']}: it was rewound")
    if bytes(head["last_hash"]) != prev_hash:
        return VerifyResult(False, checked, last or None,
                            "audit_head hash does not match the last record")
    return VerifyResult(True, checked, None, "", prev_hash.hex())
