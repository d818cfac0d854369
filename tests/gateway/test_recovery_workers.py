"""Reconnect storms across processes: `sentchat serve --workers 3` (embedded Valkey for
fan-out, PostgreSQL for durable history) while publications flow at ≥ 100/s.

One worker is SIGKILLed mid-stream (the supervisor restarts it), and users are cut through
the server API; the clients reconnect to the surviving workers and must recover every
publication, exactly once, in order, with ``recovered: true`` on every resubscribe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.conftest import API_KEY, SECRET, Server
from tests.gateway.test_durable import free_port
from tests.gateway.test_recovery_storm import (
    CLIENTS,
    CUT,
    PUBLICATIONS,
    RATE,
    Follower,
    check_followers,
    publish_stream,
)
from tests.sdk import uniq

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[http_api]
key = "{api_key}"

[client.token]
hmac_secret_key = "{secret}"

[[channel.namespaces]]
name = "log"
durable = true
retention = "1h"
force_recovery = true
force_positioning = true
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "eph"
history_size = 1000
history_ttl = "3600s"
force_recovery = true
force_positioning = true
allow_subscribe_for_client = true
"""


@contextlib.asynccontextmanager
async def workers(tmp: Path, dsn: str, redis_url: str, port: int) -> AsyncIterator[psutil.Process]:
    """The supervisor of three workers, once every worker answers."""
    config = tmp / "sentchat.toml"
    config.write_text(CONFIG.format(api_key=API_KEY, secret=SECRET))
    env = {**os.environ, "SENTCHAT_POSTGRES_DSN": dsn, "SENTCHAT_REDIS_URLS": redis_url,
           "SENTCHAT_DATA_DIR": str(tmp / "data"), "SENTCHAT_LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port),
        "--workers", "3", cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    supervisor = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 60
        while len(worker_pids(supervisor)) < 3 or not await _healthy(port):
            assert proc.returncode is None, "supervisor exited during start"
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.1)
        yield supervisor
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                for child in supervisor.children(recursive=True):
                    child.kill()
                proc.kill()
                await proc.wait()


def worker_pids(supervisor: psutil.Process) -> list[int]:
    return [p.pid for p in supervisor.children() if "--reuse-port" in p.cmdline()]


async def _healthy(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/health") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


@pytest.mark.parametrize("namespace", ["log", "eph"], ids=["durable", "ephemeral"])
async def test_worker_killed_mid_stream_every_client_recovers(
        tmp_path: Path, empty_dsn: str, redis_urls: list[str], namespace: str) -> None:
    port = free_port()
    channel = uniq(f"{namespace}:workers")
    ws_url = f"ws://127.0.0.1:{port}/connection/websocket"
    api_url = f"http://127.0.0.1:{port}/api"
    async with workers(tmp_path, empty_dsn, redis_urls[0], port) as supervisor:
        followers = [Follower(ws_url, Server.token(f"user{i}", channels=[channel] if i % 3 == 2 else []),
                              channel, protobuf=i % 2 == 1, server_side=i % 3 == 2)
                     for i in range(CLIENTS)]
        await asyncio.gather(*(f.start() for f in followers))
        try:
            publisher = asyncio.ensure_future(
                publish_stream(api_url, channel, PUBLICATIONS, RATE, lossy=True))
            await asyncio.sleep(0.8)
            victim = worker_pids(supervisor)[0]
            os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(0.7)
            # The API's disconnect reaches users on every worker (control channel).
            async with aiohttp.ClientSession() as http:
                for i in range(CUT):
                    async with http.post(f"{api_url}/disconnect", headers={"X-API-Key": API_KEY},
                                         json={"user": f"user{i}",
                                               "disconnect": {"code": 4001, "reason": "storm"}}) as resp:
                        assert resp.status == 200
            acked = await publisher
            # A publish answered by the killed worker may have been committed without its
            # answer arriving: the stream is what history holds, and it holds every ack.
            async with aiohttp.ClientSession() as http, http.post(
                    f"{api_url}/history", headers={"X-API-Key": API_KEY},
                    json={"channel": channel, "limit": -1}) as resp:
                history = (await resp.json())["result"]
            stream = [p["offset"] for p in history["publications"]]
            assert stream == list(range(1, len(stream) + 1))
            assert set(acked) <= set(stream) and len(acked) > PUBLICATIONS // 2
            await check_followers(followers, stream, followers[:CUT])
            # Beyond the API's cut, the killed worker's clients came back and recovered too.
            assert sum(bool(f.resubscribes()) for f in followers) > CUT
            assert victim not in worker_pids(supervisor), "the supervisor restarted the worker"
        finally:
            await asyncio.gather(*(f.client.disconnect() for f in followers))
