"""What the benchmark runs against: PostgreSQL (embedded under /tmp, or ``--dsn``) with the
snapshots of its statistics and the integrity check, and the gateway with a durable
namespace."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from bench.common import (
    GatewayProcess,
    children_of,
    cpu_seconds,
)
from bench.durable.shared import CONFIG_TOML


def _dsn_for(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2:].split()[1])


class Postgres:
    """The benchmark's PostgreSQL: embedded under /tmp, or the server of ``--dsn``."""

    def __init__(self, dsn: str | None) -> None:
        self.external_dsn = dsn
        self.tmp: str | None = None
        self.embedded: Any = None
        self.dsn = ""
        self.postmaster: int | None = None
        self.info: dict[str, Any] = {}
        self.created: list[str] = []

    async def start(self) -> None:
        """Start the embedded server, or reach the ``--dsn`` one; record its settings."""
        if self.external_dsn:
            self.dsn = self.external_dsn
        else:
            from storage.embedded import EmbeddedPostgres

            self.tmp = tempfile.mkdtemp(prefix="sentchat-bench-pg-", dir="/tmp")
            self.embedded = EmbeddedPostgres(Path(self.tmp))
            t0 = time.perf_counter()
            self.dsn = await self.embedded.start()
            self.info["embedded_start_s"] = round(time.perf_counter() - t0, 2)
            self.info["data_dir"] = self.tmp
        conn = await asyncpg.connect(self.dsn)
        try:
            self.info["version"] = await conn.fetchval("SHOW server_version")
            for name in ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers",
                         "max_wal_size", "wal_level", "io_method"):
                with contextlib.suppress(asyncpg.PostgresError):
                    self.info[name] = await conn.fetchval(f"SHOW {name}")
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            # The postmaster is the parent of our backend when the server runs on this machine.
            with contextlib.suppress(OSError, ValueError, IndexError):
                if _cmdline(backend).startswith("postgres"):
                    self.postmaster = _ppid(backend)
        finally:
            await conn.close()

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.created.append(name)
        return _dsn_for(self.dsn, name)

    def cpu(self) -> dict[int, tuple[str, float]]:
        """CPU seconds of every server process, by pid, with its role."""
        if self.postmaster is None:
            return {}
        out: dict[int, tuple[str, float]] = {}
        for pid in [self.postmaster, *children_of(self.postmaster)]:
            try:
                cpu = cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                continue
            title = _cmdline(pid)
            if pid == self.postmaster:
                role = "postmaster"
            elif "(" in title or "[local]" in title:
                role = "backends"
            else:
                role = title.removeprefix("postgres: ").rstrip("0123456789 ") or "other"
                if role.startswith("autovacuum worker"):
                    role = "autovacuum worker"
            out[pid] = (role, cpu)
        return out

    async def stop(self) -> None:
        if self.external_dsn:
            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(self.dsn)
                try:
                    for name in self.created:
                        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await conn.close()
            return
        try:
            if self.embedded is not None:
                await self.embedded.stop()
        finally:
            if self.tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    roles: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        d = cpu - before.get(pid, (role, 0.0))[1]
        roles[role] = roles.get(role, 0.0) + d
    roles = {k: round(v, 2) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])}
    roles["total"] = round(sum(v for v in roles.values()), 2)
    return roles


_SNAPSHOT = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
       (SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()) AS rollbacks,
       (SELECT coalesce(sum(autovacuum_count), 0) FROM pg_stat_user_tables)::bigint AS autovacuums,
       (SELECT coalesce(sum(autoanalyze_count), 0) FROM pg_stat_user_tables)::bigint AS autoanalyzes,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid,
       pg_current_wal_lsn()::text AS lsn,
       (SELECT count(*) FROM publications WHERE channel <> $1) AS rows
"""


async def db_snapshot(conn: asyncpg.Connection, marker: str) -> dict[str, Any]:
    row = await conn.fetchrow(_SNAPSHOT, marker)
    return dict(row)


async def db_window(conn: asyncpg.Connection, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    wal = await conn.fetchval("SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", b["lsn"], a["lsn"])
    rows = b["rows"] - a["rows"]
    # Minus the marker publication that flushed the writer's statistics (its row is the
    # marker channel's, left out of "rows") and our own first snapshot query (± 1).
    commits = b["commits"] - a["commits"] - 2
    xids = b["next_xid"] - a["next_xid"] - 1
    return {"rows": rows, "commits": commits, "write_xacts": xids,
            "rollbacks": b["rollbacks"] - a["rollbacks"],
            "autovacuums": b["autovacuums"] - a["autovacuums"],
            "autoanalyzes": b["autoanalyzes"] - a["autoanalyzes"],
            "rows_per_commit": round(rows / commits, 1) if commits > 0 else None,
            "rows_per_write_xact": round(rows / xids, 1) if xids > 0 else None,
            "wal_bytes": int(wal), "wal_bytes_per_row": round(int(wal) / rows, 1) if rows else None}


async def verify(conn: asyncpg.Connection, marker: str, acked: int, unanswered: int) -> dict[str, Any]:
    """Rows against acknowledged publications, and gap-free per-channel offsets."""
    row = await conn.fetchrow(
        """SELECT count(*) AS rows, count(DISTINCT data->>'u') AS unique_ids,
                  count(DISTINCT (channel, "offset")) AS positions, count(DISTINCT channel) AS channels
           FROM publications WHERE channel <> $1""", marker)
    bad_channels = await conn.fetchval(
        """SELECT count(*) FROM (
               SELECT channel, count(*) AS n, min("offset") AS lo, max("offset") AS hi
               FROM publications WHERE channel <> $1 GROUP BY channel) p
           JOIN channel_streams s USING (channel)
           WHERE NOT (p.n = p.hi AND p.lo = 1 AND p.hi = s.top)""", marker)
    out = dict(row)
    out["acknowledged"] = acked
    out["unanswered"] = unanswered
    out["channels_with_gaps"] = bad_channels
    exact = out["rows"] == acked if unanswered == 0 else acked <= out["rows"] <= acked + unanswered
    out["ok"] = bool(exact and out["unique_ids"] == out["rows"] == out["positions"]
                     and bad_channels == 0)
    return out

class DurableGateway(GatewayProcess):
    """`sentchat serve --config <durable namespace>` with SENTCHAT_POSTGRES_DSN set."""

    def __init__(self, port: int, dsn: str, workers: int = 1) -> None:
        super().__init__(port, workers=workers, extra_env={"SENTCHAT_POSTGRES_DSN": dsn})
        self.config_path = Path(self.tmp.name) / "bench-durable.toml"
        self.config_path.write_text(CONFIG_TOML)

    def command(self) -> list[str]:
        return [*super().command(), "--config", str(self.config_path)]


def http_publish(gw: GatewayProcess, channel: str, data: dict[str, Any], timeout: float) -> dict[str, Any]:
    body = orjson.dumps({"channel": channel, "data": data})
    req = urllib.request.Request(f"http://{gw.host}:{gw.port}/api/publish", data=body, method="POST",
                                 headers={"X-API-Key": gw.api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback URL we built
        reply = json.loads(r.read())
    if "error" in reply:
        raise RuntimeError(f"marker publish failed: {reply}")
    return reply
