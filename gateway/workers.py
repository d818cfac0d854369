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
import logging
import os
import signal
import subprocess
import sys
import tempfile

from gateway.config import Settings
from storage.embedded import die_with_parent, embedded_valkey, postgres_unless_configured

log = logging.getLogger("sentchat.workers")

# A worker that dies is restarted after this pause (a crash loop must not spin the CPU).
RESTART_DELAY = 1.0
# Workers get this long to close their connections after SIGTERM before SIGKILL.
STOP_TIMEOUT = 15.0


async def supervise(settings: Settings, argv: list[str]) -> int:
    """Run ``settings.node.workers`` workers until SIGTERM/SIGINT; returns the exit code.

    ``argv`` are the `serve` arguments to pass on (config, host, port)."""
    stack = contextlib.AsyncExitStack()
    async with stack:
        env = dict(os.environ)
        if not settings.redis.urls:
            env["SENTCHAT_REDIS_URLS"] = await stack.enter_async_context(embedded_valkey())
        else:
            env["SENTCHAT_REDIS_URLS"] = ",".join(settings.redis.urls)
        settings.storage.postgres_dsn = await stack.enter_async_context(postgres_unless_configured(
            settings.storage.postgres_dsn, settings.durable, settings.storage.data_dir))
        if settings.storage.postgres_dsn:
            env["SENTCHAT_POSTGRES_DSN"] = settings.storage.postgres_dsn
        return await _run_workers(settings.node.workers, argv, env)


async def _run_workers(n: int, argv: list[str], env: dict[str, str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    command = [sys.executable, "-m", "gateway.cli", "serve", *argv, "--workers", "1", "--reuse-port"]
    procs: dict[int, asyncio.subprocess.Process] = {}
    # Workers announce private ports here so any of them can answer /metrics and /health
    # for all (gateway/cluster_view.py).
    view_dir = tempfile.TemporaryDirectory(prefix="sentchat-workers-")
    env = {**env, "SENTCHAT_WORKERS_DIR": view_dir.name, "SENTCHAT_WORKERS_COUNT": str(n)}

    async def spawn(i: int) -> None:
        procs[i] = await asyncio.create_subprocess_exec(
            *command, env={**env, "SENTCHAT_WORKER_INDEX": str(i)}, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent())

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
