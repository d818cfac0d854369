"""Reconnect storms: N of M connections dropped at once while publishing continues.

    python -m bench.storm [--namespace durable,ephemeral] [--connections 500] [--drop 125]
                          [--rate 20] [--storms 3] [--workers 1] [--json PATH]

For each namespace kind (``durable``: history in PostgreSQL; ``ephemeral``: history in the
broker), ``sentchat serve`` runs with the benchmark's ``chat`` namespace (forced recovery).
M WebSocket connections (the ``websockets`` client, Centrifugo JSON protocol) subscribe to
one channel; one more connection publishes into it at ``--rate``/s for the whole run. Every
``--interval`` seconds, N connections lose their socket at once (aborted, no close frame) and
reconnect at once with ``recover: true`` and their last offset/epoch — a storm.

Reported per kind: the recovered fraction of the resubscribes (target: 100 %), the time
from the drop to the subscribe reply (P50/P95/max over all resubscribes), the publications
replayed by recovery, whether every connection ended with the whole stream (every offset
once, in order, compared with the server's history), and the CPU seconds the gateway and
the benchmark's own clients spent during the storms (both share the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import websockets

from bench.common import GatewayProcess, cpu_seconds, free_port, machine_info, sum_cpu

# The benchmark's own namespace: history deep enough that every gap of a run is inside it,
# so a resubscribe that is not recovered is a defect, never the retention doing its job.
STORM_CONFIG = """# written by the SENTchat benchmark (bench/storm.py)
[client]
recovery_max_publication_limit = 100000

[[channel.namespaces]]
name = "chat"
{history}
force_recovery = true
force_positioning = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
"""
HISTORY = {
    "durable": 'durable = true\nretention = "1d"',
    "ephemeral": 'history_size = 100000\nhistory_ttl = "1h"',
}

RESULTS = Path(__file__).resolve().parent / "results"
CHANNEL = "chat:storm"
PUBLISH_WINDOW = 200


class Follower:
    """One subscribed connection: the offsets it received, its reconnects."""

    def __init__(self, gw: GatewayProcess, index: int) -> None:
        self.gw = gw
        self.user = f"storm{index}"
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.offsets: list[int] = []
        self.epoch = ""
        self.ids = 0
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        # Per resubscribe: (seconds from the drop to the reply, recovered, replayed).
        self.resubscribes: list[tuple[float, bool, int]] = []

    def _token(self) -> str:
        return jwt.encode({"sub": self.user, "exp": int(time.time()) + 3600}, self.gw.secret,
                          algorithm="HS256")

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[self.ids] = fut
        await self.ws.send(json.dumps({"id": self.ids, method: params}))
        reply = await asyncio.wait_for(fut, 30)
        if "error" in reply:
            raise RuntimeError(f"{self.user}: {method} failed: {reply['error']}")
        return reply[method]

    async def _read(self, ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                for line in message.splitlines():
                    frame = json.loads(line)
                    if not frame:
                        await ws.send("{}")  # pong
                    elif "id" in frame:
                        # Replayed publications count here, in frame order: pushes that
                        # follow the reply must not be recorded before them.
                        pubs = frame.get("subscribe", {}).get("publications", [])
                        self.offsets.extend(p.get("offset", 0) for p in pubs)
                        fut = self.replies.pop(frame["id"], None)
                        if fut is not None and not fut.done():
                            fut.set_result(frame)
                    elif "pub" in frame.get("push", {}):
                        self.offsets.append(frame["push"]["pub"].get("offset", 0))

    async def connect(self, recover: bool, dropped_at: float = 0.0) -> None:
        url = f"ws://{self.gw.host}:{self.gw.port}/connection/websocket"
        self.ws = await websockets.connect(url, max_size=None, open_timeout=30)
        self.reader = asyncio.ensure_future(self._read(self.ws))
        await self._call("connect", {"token": self._token()})
        params: dict[str, Any] = {"channel": CHANNEL}
        if recover:
            params.update(recover=True, offset=self.offsets[-1] if self.offsets else 0,
                          epoch=self.epoch)
        result = await self._call("subscribe", params)
        self.epoch = result.get("epoch", self.epoch)
        pubs = result.get("publications", [])
        if recover:
            self.resubscribes.append((time.monotonic() - dropped_at, bool(result.get("recovered")),
                                      len(pubs)))

    def drop(self) -> None:
        """The socket is lost: no close frame, nothing more read."""
        self.ws.transport.abort()
        if self.reader is not None:
            self.reader.cancel()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()


async def publisher(gw: GatewayProcess, rate: float, stop: asyncio.Event) -> int:
    """Publish at ``rate``/s through one connection (its commands answered in order)."""
    pub = Follower(gw, -1)
    pub.user = "storm-publisher"
    url = f"ws://{gw.host}:{gw.port}/connection/websocket"
    pub.ws = await websockets.connect(url, max_size=None)
    pub.reader = asyncio.ensure_future(pub._read(pub.ws))
    await pub._call("connect", {"token": pub._token()})
    # The namespace lets subscribers publish; the publisher's own pushes are not read.
    await pub._call("subscribe", {"channel": CHANNEL})
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    # The gateway closes a connection with more than 1,000 commands queued (3013): keep
    # fewer in flight; a slow commit then lowers the achieved rate instead.
    window = asyncio.Semaphore(PUBLISH_WINDOW)

    async def one(n: int) -> None:
        try:
            await pub._call("publish", {"channel": CHANNEL, "data": {"n": n}})
        finally:
            window.release()

    pending: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        delay = start + sent / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await window.acquire()
        task = asyncio.ensure_future(one(sent))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
    if pending:
        await asyncio.gather(*pending)
    await pub.close()
    return sent


def history_offsets(gw: GatewayProcess) -> list[int]:
    req = urllib.request.Request(
        f"http://{gw.host}:{gw.port}/api/history", method="POST",
        data=json.dumps({"channel": CHANNEL, "limit": -1}).encode(),
        headers={"X-API-Key": gw.api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
        body = json.loads(r.read())
    return [p["offset"] for p in body["result"]["publications"]]


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run_kind(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    gw = GatewayProcess(free_port(), workers=args.workers, durable=kind == "durable",
                        config=STORM_CONFIG.format(history=HISTORY[kind]))
    gw.start(timeout=120)
    followers = [Follower(gw, i) for i in range(args.connections)]
    try:
        sem = asyncio.Semaphore(100)

        async def first(f: Follower) -> None:
            async with sem:
                await f.connect(recover=False)

        await asyncio.gather(*(first(f) for f in followers))
        stop = asyncio.Event()
        pub_task = asyncio.ensure_future(publisher(gw, args.rate, stop))
        rng = random.Random(args.seed)  # which connections drop, reproducibly
        server_pids = gw.processes()["workers"]
        storm_server_cpu = storm_client_cpu = 0.0
        for _ in range(args.storms):
            await asyncio.sleep(args.interval)
            victims = rng.sample(followers, args.drop)
            server0, client0 = sum_cpu(server_pids), cpu_seconds(os.getpid())
            dropped_at = time.monotonic()
            for f in victims:
                f.drop()
            await asyncio.gather(*(f.connect(recover=True, dropped_at=dropped_at) for f in victims))
            # CPU spent by each side from the drop until the last reply: on a 2-core host
            # the two compete, so the time to recover is read against both.
            storm_server_cpu += sum_cpu(server_pids) - server0
            storm_client_cpu += cpu_seconds(os.getpid()) - client0
        await asyncio.sleep(args.interval)
        stop.set()
        sent = await pub_task
        stream = history_offsets(gw)
        deadline = time.monotonic() + 30
        # Polled: progress is spread over many readers, none of them knows the whole.
        while any(len(f.offsets) < len(stream) for f in followers) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        complete = sum(1 for f in followers if f.offsets == stream)
        if stream != list(range(1, len(stream) + 1)):
            raise RuntimeError(f"the history is not the whole stream 1..N ({len(stream)} rows)")
        resubs = [r for f in followers for r in f.resubscribes]
        times = [r[0] * 1000 for r in resubs]
        recovered = sum(1 for r in resubs if r[1])
        return {
            "namespace": kind, "workers": args.workers, "connections": args.connections,
            "drop": args.drop, "storms": args.storms, "rate": args.rate,
            "published": sent, "stream": len(stream),
            "resubscribes": len(resubs), "recovered": recovered,
            "recovered_fraction": recovered / len(resubs) if resubs else 0.0,
            "replayed_total": sum(r[2] for r in resubs),
            "recover_ms_p50": pct(times, 0.50), "recover_ms_p95": pct(times, 0.95),
            "recover_ms_max": max(times, default=0.0),
            "complete": complete, "complete_fraction": complete / len(followers),
            "storm_server_cpu_s": storm_server_cpu, "storm_client_cpu_s": storm_client_cpu,
        }
    finally:
        await asyncio.gather(*(f.close() for f in followers))
        gw.cleanup()


def report(rows: list[dict[str, Any]]) -> str:
    head = (f"{'namespace':<10} {'workers':>7} {'conns':>6} {'drop':>5} {'storms':>6} {'rate/s':>6} "
            f"{'recovered':>12} {'P50 ms':>7} {'P95 ms':>7} {'max ms':>7} {'replayed':>8} "
            f"{'complete':>10} {'srv CPU s':>9} {'cli CPU s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['namespace']:<10} {r['workers']:>7} {r['connections']:>6} {r['drop']:>5} "
            f"{r['storms']:>6} {r['rate']:>6.0f} "
            f"{r['recovered']:>5}/{r['resubscribes']:<4} {r['recover_ms_p50']:>7.0f} "
            f"{r['recover_ms_p95']:>7.0f} {r['recover_ms_max']:>7.0f} {r['replayed_total']:>8} "
            f"{r['complete']:>5}/{r['connections']:<4} {r['storm_server_cpu_s']:>9.1f} "
            f"{r['storm_client_cpu_s']:>9.1f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.split("\n\n")[0])
    p.add_argument("--namespace", default="durable,ephemeral",
                   help="comma-separated kinds: durable (PostgreSQL), ephemeral (broker history)")
    p.add_argument("--connections", type=int, default=500, help="subscribed connections (M)")
    p.add_argument("--drop", type=int, default=125, help="connections dropped per storm (N)")
    p.add_argument("--storms", type=int, default=3, help="storms per run")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between storms")
    p.add_argument("--rate", type=float, default=20.0,
                   help="publications per second (each one is delivered to every connection)")
    p.add_argument("--workers", type=int, default=1, help="gateway workers (>1: embedded Valkey)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="where to write the results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kinds = [k.strip() for k in args.namespace.split(",") if k.strip()]
    for k in kinds:
        if k not in ("durable", "ephemeral"):
            raise SystemExit(f"--namespace: unknown kind {k!r} (durable, ephemeral)")
    if not 0 < args.drop <= args.connections:
        raise SystemExit("--drop must be between 1 and --connections")
    if args.rate <= 0 or args.storms < 1 or args.interval <= 0:
        raise SystemExit("--rate and --interval must be positive, --storms at least 1")
    rows = [asyncio.run(run_kind(k, args)) for k in kinds]
    print(report(rows))
    out = args.json or RESULTS / f"storm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "runs": rows}, indent=2))
    print(f"written {out}")
    ok = all(r["recovered_fraction"] == 1.0 and r["complete_fraction"] == 1.0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
