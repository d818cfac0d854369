"""Audit log: appends inside the writer's transaction, one linear chain under concurrency
(connections and processes), changes refused by triggers, tampering found by verify and
named by the real `sentchat audit verify`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from storage.audit import (
    ZERO_HASH,
    AuditError,
    append,
    audit_partitions,
    format_at,
    record_hash,
    verify,
)

REPO = Path(__file__).resolve().parents[2]
SENTCHAT = Path(sys.executable).with_name("sentchat")
WAIT = 60.0  # guards against hangs only


async def _append_one(pool: asyncpg.Pool, n: int) -> int:
    async with pool.acquire() as conn, conn.transaction():
        return await append(conn, actor="alice", action="message.edit", target=f"message:{n}",
                            before={"text": f"v{n}"}, after={"text": f"v{n + 1}", "ü": [1.5, None]})


async def _fill(pool: asyncpg.Pool, count: int) -> None:
    for n in range(count):
        await _append_one(pool, n)


async def test_append_chains_from_zero(pool: asyncpg.Pool) -> None:
    ids = [await _append_one(pool, n) for n in range(3)]
    assert ids == [1, 2, 3]
    rows = await pool.fetch("SELECT * FROM audit_log ORDER BY id")
    assert [r["id"] for r in rows] == [1, 2, 3]
    first = rows[0]
    assert first["actor"] == "alice" and first["action"] == "message.edit"
    assert first["target"] == "message:0"
    assert json.loads(first["delta"]) == {"before": {"text": "v0"},
                                          "after": {"text": "v1", "ü": [1.5, None]}}
    # The documented encoding, spelled out independently of record_hash.
    body = (f'[1,"{format_at(first["at"])}","alice","message.edit","message:0",'
            '{"after":{"text":"v1","ü":[1.5,null]},"before":{"text":"v0"}}]')
    assert bytes(first["prev_hash"]) == ZERO_HASH
    assert bytes(first["hash"]) == hashlib.sha256(ZERO_HASH + body.encode()).digest()
    assert format_at(first["at"]).endswith("Z") and len(format_at(first["at"])) == 27
    for prev, row in zip(rows, rows[1:], strict=False):
        assert bytes(row["prev_hash"]) == bytes(prev["hash"])
        assert row["at"] >= prev["at"]
    result = await verify(pool)
    assert result.ok and result.checked == 3 and result.first_bad_id is None
    assert result.head_hash == bytes(rows[-1]["hash"]).hex()
    # The current month's partition was made by append itself (none was created ahead).
    assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL",
                               f"audit_log_p{datetime.now(UTC):%Y%m}")


async def test_empty_log_verifies(pool: asyncpg.Pool) -> None:
    result = await verify(pool)
    assert result.ok and result.checked == 0 and result.head_hash == ZERO_HASH.hex()


async def test_append_outside_a_transaction_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(AuditError, match="inside the transaction"):
            await append(conn, actor="a", action="role.set", target="user:b")
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_bad_arguments(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(TypeError, match="actor"):
            await append(conn, actor=1, action="x", target="y")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="action"):
            await append(conn, actor="a", action="", target="y")
        with pytest.raises(TypeError):
            await append(conn, actor="a", action="x", target="y", after={"v": object()})


async def test_rollback_leaves_no_record_and_no_gap(pool: asyncpg.Pool) -> None:
    await _append_one(pool, 0)

    class Abort(Exception):
        pass

    async with pool.acquire() as conn:
        with pytest.raises(Abort):
            async with conn.transaction():
                await conn.execute("CREATE TABLE chat_thing (x int)")
                assert await append(conn, actor="bob", action="member.kick",
                                    target="channel:1", before={"member": "eve"}) == 2
                raise Abort
        # The write and its record went together.
        assert await conn.fetchval("SELECT to_regclass('chat_thing')") is None
    assert await _append_one(pool, 1) == 2
    assert [r["id"] for r in await pool.fetch("SELECT id FROM audit_log ORDER BY id")] == [1, 2]
    assert (await verify(pool)).ok


async def test_concurrent_connections_form_one_chain(pool: asyncpg.Pool, empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(4)]
    try:
        async def writer(conn: asyncpg.Connection, w: int) -> list[int]:
            ids = []
            for n in range(15):
                async with conn.transaction():
                    ids.append(await append(conn, actor=f"w{w}", action="message.send",
                                            target=f"message:{w}:{n}", after={"n": n}))
                    # Keep the head locked across a scheduling point so writers collide.
                    await asyncio.sleep(0)
            return ids

        results = await asyncio.gather(*(writer(c, w) for w, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
    all_ids = sorted(i for ids in results for i in ids)
    assert all_ids == list(range(1, 61))
    for ids in results:
        assert ids == sorted(ids)
    result = await verify(pool)
    assert result.ok and result.checked == 60


_WRITER = """
import asyncio, sys
import asyncpg
from storage.audit import append

async def main(dsn, who, count):
    conn = await asyncpg.connect(dsn)
    for n in range(count):
        async with conn.transaction():
            await append(conn, actor=who, action="message.send", target=f"m:{who}:{n}",
                         after={"n": n})
    await conn.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_concurrent_processes_form_one_chain(pool: asyncpg.Pool, empty_dsn: str) -> None:
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, empty_dsn, f"p{k}", "20", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for k in range(3)]
    try:
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), WAIT)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    result = await verify(pool)
    assert result.ok and result.checked == 60
    assert await pool.fetchval("SELECT count(DISTINCT actor) FROM audit_log") == 3


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET actor = 'mallory'",
    "DELETE FROM audit_log WHERE id = 1",
    "DELETE FROM audit_log WHERE id = -1",  # refused even when nothing matches
    "TRUNCATE audit_log",
    "UPDATE {partition} SET actor = 'mallory'",
    "DELETE FROM {partition}",
    "TRUNCATE {partition}",
    "DELETE FROM audit_head",
    "TRUNCATE audit_head",
])
async def test_changes_are_refused(pool: asyncpg.Pool, statement: str) -> None:
    await _fill(pool, 2)
    partition = f"audit_log_p{datetime.now(UTC):%Y%m}"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement.format(partition=partition))
    assert (await verify(pool)).ok


async def test_partitions_created_ahead_with_truncate_guard(pool: asyncpg.Pool) -> None:
    now = datetime(2026, 11, 20, tzinfo=UTC)
    manager = audit_partitions(pool, clock=now.timestamp)
    created = await manager.ensure()
    assert created == ["audit_log_p202610", "audit_log_p202611", "audit_log_p202612",
                       "audit_log_p202701", "audit_log_p202702"]
    assert await manager.ensure() == []
    for name in created:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute(f'TRUNCATE "{name}"')
    # A record dated in a prepared month lands there.
    await pool.execute(
        "INSERT INTO audit_log VALUES (99, '2026-12-05T00:00:00Z', 'a', 'b', 'c', '{}', "
        "'\\x00', '\\x00')")
    assert await pool.fetchval("SELECT tableoid::regclass::text FROM audit_log "
                               "WHERE id = 99") == "audit_log_p202612"


async def _tamper(pool: asyncpg.Pool, sql: str, *args: object) -> None:
    """What a superuser can do: bypass the triggers for one session."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(sql, *args)


async def test_changed_delta_is_named(pool: asyncpg.Pool) -> None:
    await _fill(pool, 5)
    await _tamper(pool, """UPDATE audit_log SET delta = '{"before": null, "after": "x"}' WHERE id = 3""")
    result = await verify(pool)
    assert not result.ok and result.first_bad_id == 3 and result.checked == 2
    assert "hash mismatch" in result.reason


async def test_rehashed_record_breaks_the_next_link(pool: asyncpg.Pool) -> None:
    await _fill(pool, 4)
    row = await pool.fetchrow("SELECT * FROM audit_log WHERE id = 2")
    forged = record_hash(bytes(row["prev_hash"]), 2, row["at"], "mallory", row["action"],
                         row["target"], json.loads(row["delta"]))
    await _tamper(pool, "UPDATE audit_log SET actor = 'mallory', hash = $1 WHERE id = 2", forged)
    result = await verify(pool)
    assert not result.ok and result.first_bad_id == 3 and "prev_hash" in result.reason


@pytest.mark.parametrize(("deleted", "bad", "text"), [
    ([2], 2, "record 2 missing"),
    ([1, 2], 1, "record 1..2 missing"),
    ([5], 5, "deleted at the end"),
])
async def test_deleted_records_are_named(pool: asyncpg.Pool, deleted: list[int], bad: int,
                                         text: str) -> None:
    await _fill(pool, 5)
    await _tamper(pool, "DELETE FROM audit_log WHERE id = ANY($1::bigint[])", deleted)
    result = await verify(pool)
    assert not result.ok and result.first_bad_id == bad
    assert text in result.reason


async def test_verify_is_memory_bounded_cursor(pool: asyncpg.Pool) -> None:
    """More records than one cursor fetch: the walk spans several fetches."""
    async with pool.acquire() as conn, conn.transaction():
        for n in range(120):
            await append(conn, actor="bulk", action="message.send", target=f"m:{n}")
    result = await verify(pool, prefetch=7)
    assert result.ok and result.checked == 120


# ---- `sentchat audit verify`, the real command ------------------------------------------


def _command(*args: str) -> list[str]:
    if SENTCHAT.exists():
        return [str(SENTCHAT), *args]
    return [sys.executable, "-m", "gateway.cli", *args]


async def _cli(tmp_path: Path, *args: str, **env_extra: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTCHAT_")}
    env["SENTCHAT_DATA_DIR"] = str(tmp_path / "data")
    env.update(env_extra)
    proc = await asyncio.create_subprocess_exec(
        *_command(*args), cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_verify_ok_then_names_tampered_record(pool: asyncpg.Pool, empty_dsn: str,
                                                        tmp_path: Path) -> None:
    await _fill(pool, 4)
    rc, out, err = await _cli(tmp_path, "audit", "verify", SENTCHAT_POSTGRES_DSN=empty_dsn)
    assert rc == 0, err
    assert out.startswith("audit chain OK: 4 records")

    await _tamper(pool, """UPDATE audit_log SET delta = '{"before": 1, "after": 2}' WHERE id = 2""")
    rc, out, err = await _cli(tmp_path, "audit", "verify", "--dsn", empty_dsn)
    assert rc == 1, err
    assert out.startswith("audit chain BROKEN at record 2: hash mismatch")


async def test_cli_verify_names_deleted_record(pool: asyncpg.Pool, empty_dsn: str,
                                               tmp_path: Path) -> None:
    await _fill(pool, 4)
    await _tamper(pool, "DELETE FROM audit_log WHERE id = 3")
    rc, out, err = await _cli(tmp_path, "audit", "verify", SENTCHAT_POSTGRES_DSN=empty_dsn)
    assert rc == 1, err
    assert out.startswith("audit chain BROKEN at record 3: record 3 missing")


async def test_cli_verify_unmigrated_database(empty_dsn: str, tmp_path: Path) -> None:
    rc, _, err = await _cli(tmp_path, "audit", "verify", "--dsn", empty_dsn)
    assert rc == 2 and "sentchat migrate" in err
