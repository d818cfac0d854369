"""`/metrics` and `/health` of `sentchat serve --workers 2` give totals over both workers,
whichever worker the kernel hands the request to (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jwt
from websockets.asyncio.client import connect as ws_connect

from gateway.cluster_view import merge_metrics
from tests.gateway.test_cli import SECRET, WAIT, cli_env, free_port, http, serving

CONNECTIONS = 8


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{text[:2000]}")


async def test_metrics_and_health_total_over_workers(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(tmp_path, SENTCHAT_WORKERS="2", SENTCHAT_API_KEY="k",
                  SENTCHAT_TOKEN_HMAC_SECRET=SECRET)
    async with serving("--port", str(port), port=port, env=env, tmp=tmp_path) as served:
        # /health answers 200 only once both workers answer for themselves.
        deadline = time.monotonic() + WAIT
        while True:
            status, body = await http(port, "GET", "/health")
            health = json.loads(body)
            if status == 200 and health["workers_ok"] == 2:
                break
            assert time.monotonic() < deadline, health
            await asyncio.sleep(0.1)
        assert health["status"] == "ok" and health["workers"] == 2
        assert len(set(health["nodes"])) == 2

        token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
        sockets = []
        try:
            for i in range(CONNECTIONS):
                ws = await ws_connect(served.ws_url)
                await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
                assert "connect" in json.loads(await ws.recv()), i
                sockets.append(ws)
            # Every request is a new TCP connection, so the kernel spreads them over both
            # workers; each must report the total.
            per_worker = []
            for _ in range(10):
                status, body = await http(port, "GET", "/metrics")
                assert status == 200
                text = body.decode()
                assert sample(text, "sentchat_connections") == CONNECTIONS
                assert 'sentchat_workers{state="answered"} 2' in text
                status, body = await http(port, "GET", "/metrics?scope=worker")
                assert status == 200
                per_worker.append(sample(body.decode(), "sentchat_connections"))
            # One worker's own view is a part of the total (both hold some on most runs).
            assert all(0 <= n <= CONNECTIONS for n in per_worker)
        finally:
            for ws in sockets:
                await ws.close()
        assert await served.stop() == 0


def test_merge_metrics_sums_counters_gauges_and_histograms() -> None:
    a = ('# HELP x_total things\n# TYPE x_total counter\nx_total{k="a"} 2.0\nx_created{k="a"} 100.0\n'
         '# HELP g gauge\n# TYPE g gauge\ng 3.0\n'
         '# HELP h h\n# TYPE h histogram\nh_bucket{le="1.0"} 1.0\nh_bucket{le="+Inf"} 2.0\n'
         'h_count 2.0\nh_sum 1.5\n')
    b = a.replace("x_created{k=\"a\"} 100.0", "x_created{k=\"a\"} 50.0").replace("g 3.0", "g 4.0")
    merged = merge_metrics([a, b]).decode()
    assert 'x_total{k="a"} 4.0' in merged
    assert 'x_created{k="a"} 50.0' in merged
    assert "\ng 7.0" in merged
    assert 'h_bucket{le="+Inf"} 4.0' in merged and "h_sum 3.0" in merged
