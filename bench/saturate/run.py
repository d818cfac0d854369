"""One run against one target: client processes, connect, hold, publish, drain, collect, and
the run's figures."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

from bench.common import (
    CLK_TCK,
    WS_PATH,
    Histogram,
    bucket_bounds,
    machine_jiffies,
    merge_counts,
    process_table,
    split_evenly,
    sum_cpu,
    sum_rss,
    tree_cpu_seconds,
)
from bench.saturate.client import client_process
from bench.saturate.publish import Schedule, publish
from bench.saturate.servers import Target


class ClientPool:
    """The client processes and their pipes; progress reports are kept as they arrive."""

    def __init__(self, cfg: dict[str, Any], procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.children: list[Any] = []
        self.pipes: list[Pipe] = []
        self.progress: list[dict[str, Any]] = [{} for _ in range(procs)]
        self.recent = Histogram()
        self.queues: list[asyncio.Queue[Any]] = []
        for i in range(procs):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=client_process, args=(i, cfg, child_end), daemon=True,
                            name=f"saturate-client-{i}")
            p.start()
            child_end.close()
            self.children.append(p)
            self.pipes.append(parent_end)

    def listen(self) -> None:
        loop = asyncio.get_running_loop()
        for i, pipe in enumerate(self.pipes):
            q: asyncio.Queue[Any] = asyncio.Queue()
            self.queues.append(q)

            def readable(i: int = i, pipe: Pipe = pipe, q: asyncio.Queue[Any] = q) -> None:
                try:
                    # uvloop makes a watched fd non-blocking; a large message must be read whole.
                    os.set_blocking(pipe.fileno(), True)
                    msg = pipe.recv()
                except (EOFError, OSError) as exc:
                    loop.remove_reader(pipe.fileno())
                    q.put_nowait(("died", f"{i}: {type(exc).__name__} {exc}"))
                    return
                if msg[0] == "progress":
                    self.progress[i] = msg[1]
                    self.recent.merge(Histogram.from_dict(msg[1]["recent"]))
                else:
                    q.put_nowait(msg)

            loop.add_reader(pipe.fileno(), readable)

    def send(self, msg: Any) -> None:
        for p in self.pipes:
            p.send(msg)

    async def collect(self, kind: str, timeout: float) -> list[Any]:  # noqa: ASYNC109
        async def one(i: int) -> Any:
            msg = await self.queues[i].get()
            if msg[0] != kind:
                raise RuntimeError(f"client process {i}: expected {kind!r}, got {msg!r}"[:300])
            return msg[1]

        return list(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(self.pipes)))), timeout))

    def total(self, key: str) -> int:
        return sum(p.get(key, 0) for p in self.progress)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for p in self.pipes:
            with contextlib.suppress(Exception):
                loop.remove_reader(p.fileno())
            with contextlib.suppress(Exception):
                p.send(("exit",))
        for c in self.children:
            c.join(10)
            if c.is_alive():
                c.terminate()
                c.join(5)


def _server_rss(target: Target) -> dict[str, int]:
    p = target.processes()
    return {"server": sum_rss(p["workers"] + p["supervisor"]), "workers": sum_rss(p["workers"]),
            "supervisor": sum_rss(p["supervisor"]), "valkey": sum_rss(p["valkey"]),
            "cpu": int(sum_cpu(p["workers"] + p["supervisor"]) * 1000),
            "valkey_cpu": int(sum_cpu(p["valkey"]) * 1000), "nworkers": len(p["workers"])}


class Ticker:
    """Live progress: one line per second, and the connections-over-time series."""

    def __init__(self, label: str, pool: ClientPool, t0: float, quiet: bool) -> None:
        self.label, self.pool, self.t0, self.quiet = label, pool, t0, quiet
        self.series: list[dict[str, float | None]] = []
        self.phase = "connect"
        self._last_recv = 0
        self._last_t = t0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            recv = self.pool.total("received")
            rate = (recv - self._last_recv) / (now - self._last_t)
            self._last_recv, self._last_t = recv, now
            recent, self.pool.recent = self.pool.recent, Histogram()
            point = {"t": round(now - self.t0, 2), "connections": self.pool.total("ready"),
                     "failed": self.pool.total("failed"), "closed": self.pool.total("closed"),
                     "received": recv, "deliveries_per_s": round(rate, 1),
                     "p95_ms": round(recent.percentile(95) / 1000, 2) if recent.n else None}
            self.series.append(point)
            if not self.quiet:
                p95 = f"{point['p95_ms']:.1f} ms" if point["p95_ms"] is not None else "-"
                print(f"  [{self.label} {point['t']:6.1f}s {self.phase:>9}] connections "
                      f"{point['connections']:>6,} (failed {point['failed']}, closed {point['closed']}) "
                      f"| deliveries {recv:>10,} ({rate:>8,.0f}/s, P95 {p95})", flush=True)


async def drive(target: Target, args: argparse.Namespace, label: str,
                steps: list[int] | None = None) -> dict[str, Any]:
    """One complete run against ``target`` (already started): connect (in ``steps`` when
    given: the idle measurement), hold, publish, drain, collect."""
    n, procs = args.connections, args.client_procs
    counts = split_evenly(n, procs)
    first = [sum(counts[:i]) for i in range(procs)]
    # The origin of every series (timeline, windows of send and receive time) on a whole
    # second, as the phases' start times are: a window then never straddles a phase's edge.
    origin_ns = time.time_ns() // 1_000_000_000 * 1_000_000_000
    bound = args.max_seconds
    cfg = {"host": target.host, "port": target.port, "path": WS_PATH, "secret": target.secret,
           "channels": args.channels, "timeout": args.timeout, "concurrency": args.concurrency,
           "sources": [[f"127.0.{(i * args.sources_per_proc + k) // 250}."
                        f"{2 + (i * args.sources_per_proc + k) % 250}"
                        for k in range(args.sources_per_proc)] for i in range(procs)],
           "first_user": first, "origin_ns": origin_ns, "broadcast": args.broadcast,
           "progress_s": 0.5, "hard_limit_s": bound + 30, "tick_s": args.client_tick_ms / 1000}
    t0 = time.perf_counter() - (time.time_ns() - origin_ns) / 1e9  # origin_ns on this clock
    out: dict[str, Any] = {"target": target.describe(), "workers": target.workers}
    rss0 = _server_rss(target)
    out["server_before"] = rss0
    pool = ClientPool(cfg, procs)
    pool.listen()
    ticker = Ticker(label, pool, t0, args.quiet)
    tick = asyncio.get_running_loop().create_task(ticker.run())
    try:
        await pool.collect("started", args.timeout)
        per_proc_rate = args.ramp_rate / procs
        levels: list[dict[str, Any]] = []
        for step in steps or [n]:
            want = split_evenly(step, procs)
            t_conn = time.perf_counter()
            for i, p in enumerate(pool.pipes):
                p.send(("connect", want[i], per_proc_rate))
            ready = await pool.collect("ready", step / args.ramp_rate + args.timeout * 2 + 30)
            connect_s = time.perf_counter() - t_conn
            held = sum(r["ready"] for r in ready)
            ticker.phase = "hold"
            await asyncio.sleep(args.hold)
            rss = _server_rss(target)
            levels.append({"requested": step, "held": held, "connect_s": round(connect_s, 3),
                           "connects_per_s": round((held - (levels[-1]["held"] if levels else 0))
                                                   / connect_s, 1) if connect_s else 0,
                           "failed": merge_counts([r["failed"] for r in ready]),
                           "server_rss_kb": rss["server"], "workers_rss_kb": rss["workers"],
                           "valkey_rss_kb": rss["valkey"],
                           "rss_kb_per_connection": round((rss["server"] - rss0["server"]) / held, 2)
                           if held else None})
        out["connect_levels"] = levels
        held = levels[-1]["held"]
        rss_idle = _server_rss(target)
        out["server_idle"] = rss_idle

        phases = [(r, args.personal_rate, args.duration) for r in args.rates]
        if args.broadcast:
            phases = [(1.0 / args.broadcast_interval, 0.0, args.broadcasts * args.broadcast_interval)]
        start_ns = (time.time_ns() // 1_000_000_000 + 2) * 1_000_000_000  # a whole second
        if steps is not None:
            phases = []
        sched = Schedule(start_ns, phases, args.phase_gap)
        ticker.phase = "publish"
        cpu0 = (process_table(), machine_jiffies(), time.monotonic())
        pub: dict[str, Any] = await publish(target, sched, args.channels, n, args.publishers, args.payload_bytes,
                            args.timeout, args.batch, args.max_pending) if phases else {
            "calls": Histogram(), "lag": Histogram(), "errors": {}, "failed": {"g": [], "p": []}}
        out["cpu_while_publishing"] = _cpu_account(cpu0, target, pool)
        ticker.phase = "drain"
        pool.send(("finish", {"group_failed": pub["failed"]["g"], "personal_failed": pub["failed"]["p"],
                              "group_total": sched.group_total, "personal_total": sched.personal_total,
                              "users": n, "drain_s": args.drain_timeout}))
        results = await pool.collect("result", args.drain_timeout + 60)
        rss_end = _server_rss(target)
    finally:
        tick.cancel()
        pool.close()
    out.update(summarize(results, sched, pub, rss0, rss_idle, rss_end, held, n, args, origin_ns))
    out["timeline"] = {"t0_unix": round(origin_ns / 1e9, 3), "points": ticker.series}
    return out


def _cpu_account(cpu0: tuple[dict[int, tuple[int, int]], dict[str, int], float], target: Target,
                 pool: ClientPool) -> dict[str, Any]:
    """Where the machine's CPU went between ``cpu0`` and now: the server's processes, the
    client processes, this process (the publisher), and everything outside the bench (other
    users of a shared machine), in CPU seconds."""
    t0, j0, m0 = cpu0
    t1, j1 = process_table(), machine_jiffies()
    p = target.processes()

    def cpu(pids: list[int]) -> float:
        return sum(max(0, t1[x][1] - t0.get(x, (0, 0))[1]) for x in pids if x in t1) / CLK_TCK

    server, valkey = cpu(p["workers"] + p["supervisor"]), cpu(p["valkey"])
    clients = cpu([c.pid for c in pool.children if c.pid])
    ours = tree_cpu_seconds(t0, t1, [os.getpid()])
    ours += sum(0.0 if x in _tree_pids(t1, os.getpid()) else cpu([x])
                for x in p["workers"] + p["supervisor"] + p["valkey"])
    tasks = (j1["tasks"] - j0["tasks"]) / CLK_TCK
    elapsed = time.monotonic() - m0
    return {"seconds": round(elapsed, 2),
            "machine_busy_cores": round((j1["busy"] - j0["busy"]) / max(1, j1["total"] - j0["total"])
                                        * (os.cpu_count() or 1), 2),
            "server_s": round(server, 2), "valkey_s": round(valkey, 2), "clients_s": round(clients, 2),
            "publisher_s": round(cpu([os.getpid()]), 2),
            "other_processes_s": round(max(0.0, tasks - ours), 2)}


def _tree_pids(table: dict[int, tuple[int, int]], root: int) -> set[int]:
    ours, changed = {root}, True
    while changed:
        changed = False
        for pid, (ppid, _) in table.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return ours


def _ms(us: float) -> float:
    return round(us / 1000, 3)


def hdr_summary(h: Histogram) -> dict[str, Any]:
    """P50/P95/P99/max in ms; with the `hdrhistogram` package also the HDR histogram itself
    (compressed, base64) so the distribution can be replotted with HdrHistogram tools."""
    out: dict[str, Any] = h.summary_ms()
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        return out
    hdr = HdrHistogram(1, 3_600_000_000, 3)
    for i, c in enumerate(h.counts):
        if c:
            lo, hi = bucket_bounds(i)
            hdr.record_value(max(1, min((lo + hi - 1) // 2, h.max or 1)), c)
    out["hdr_p50"] = _ms(hdr.get_value_at_percentile(50))
    out["hdr_p95"] = _ms(hdr.get_value_at_percentile(95))
    out["hdr_p99"] = _ms(hdr.get_value_at_percentile(99))
    out["hdr_encoded"] = hdr.encode().decode()
    return out


def summarize(results: list[dict[str, Any]], sched: Schedule, pub: dict[str, Any],
              rss0: dict[str, int], rss_idle: dict[str, int], rss_end: dict[str, int], held: int,
              n: int, args: argparse.Namespace, origin_ns: int) -> dict[str, Any]:
    """Merge the client processes' results into one run's figures."""
    lat = Histogram()
    windows: dict[int, Histogram] = {}
    last: dict[int, int] = {}
    first: dict[int, int] = {}
    recv: dict[int, int] = {}
    bcast: dict[int, list[int]] = {}
    conn_hist = Histogram()
    for r in results:
        lat.merge(Histogram.from_dict(r["latency"]))
        conn_hist.merge(Histogram.from_dict(r["connect_latency"]))
        for k, d in r["windows"].items():
            windows.setdefault(int(k), Histogram()).merge(Histogram.from_dict(d))
        for k, v in r["window_last_ns"].items():
            last[int(k)] = max(last.get(int(k), 0), v)
        for k, v in r["window_first_ns"].items():
            first[int(k)] = min(first.get(int(k), v), v)
        for k, v in r["recv_windows"].items():
            recv[int(k)] = recv.get(int(k), 0) + v
        for k, (cnt, mx) in r["bcast"].items():
            rec = bcast.setdefault(int(k), [0, 0])
            rec[0] += cnt
            rec[1] = max(rec[1], mx)
    phases = []
    for ph in sched.phases:
        w0 = (ph["start_ns"] - origin_ns) // 1_000_000_000
        w1 = (ph["end_ns"] - origin_ns + 999_999_999) // 1_000_000_000
        h = Histogram()
        lastrecv = 0
        firstrecv = None
        for w in range(w0, w1):
            if w in windows:
                h.merge(windows[w])
                lastrecv = max(lastrecv, last.get(w, 0))
                if w in first:
                    firstrecv = first[w] if firstrecv is None else min(firstrecv, first[w])
        # The phase's deliveries over the time the clients received them (first .. last
        # receive): a server that keeps up delivers the offered rate (both ends shifted by
        # the latency), one that falls behind stretches the span with its backlog. Counting
        # from the first send instead would charge the latency of the last deliveries once
        # more as lost time (≈ 0.2-0.5 % at P95 ≈ 50 ms).
        # Never shorter than the phase itself: a server that delivers a phase's first
        # publications late and then catches up must not look faster than offered.
        start = firstrecv if firstrecv is not None else ph["start_ns"]
        span = max((lastrecv - start) / 1e9, ph["seconds"]) if lastrecv > start else 0.0
        subs = args.connections / args.channels
        phases.append({
            "group_rate": ph["group_rate"], "personal_rate": ph["personal_rate"],
            "seconds": ph["seconds"],
            # when the phase's publications were due, in seconds since the run's origin (the
            # time base of "timeline", "latency_over_time" and "deliveries_over_time")
            "start_s": round((ph["start_ns"] - origin_ns) / 1e9, 3),
            "end_s": round((ph["end_ns"] - origin_ns) / 1e9, 3),
            "offered_deliveries_per_s": round(ph["group_rate"] * subs + ph["personal_rate"], 1),
            "deliveries": h.n,
            # deliveries of this phase's publications over first .. last receive
            "deliveries_per_s": round(h.n / span, 1) if span else 0.0,
            "latency_ms": hdr_summary(h)})
    series = [{"window": w,
               "p50_ms": _ms(windows[w].percentile(50)), "p95_ms": _ms(windows[w].percentile(95)),
               "p99_ms": _ms(windows[w].percentile(99)), "max_ms": _ms(windows[w].max),
               "deliveries": windows[w].n} for w in sorted(windows)]
    recv_series = [{"t": w, "deliveries": recv[w]} for w in sorted(recv)]
    broadcast = None
    if args.broadcast and bcast:
        per = [{"seq": k, "delivered": v[0], "time_to_all_ms": _ms(v[1])} for k, v in sorted(bcast.items())]
        complete = sorted(p["time_to_all_ms"] for p in per if p["delivered"] == held)
        broadcast = {"subscribers": held, "publications": per,
                     "complete": len(complete),
                     "median_time_to_all_ms": complete[len(complete) // 2] if complete else None,
                     "max_time_to_all_ms": complete[-1] if complete else None}
    expected = sum(r["expected"] for r in results)
    received = sum(r["received"] for r in results)
    gtotal, ptotal = sched.group_total, sched.personal_total
    return {
        "connections": {
            "requested": n, "held": held,
            "failed": merge_counts([r["failed"] for r in results]),
            "closed_during_run": merge_counts([r["closed"] for r in results]),
            "connect_latency_ms": conn_hist.summary_ms(),
        },
        "server": {
            "rss_kb_before": rss0["server"], "rss_kb_idle": rss_idle["server"], "rss_kb_end": rss_end["server"],
            "rss_kb_per_idle_connection": round((rss_idle["server"] - rss0["server"]) / held, 2) if held else None,
            "worker_processes": rss_idle["nworkers"],
            "valkey_rss_kb_idle": rss_idle["valkey"],
            "cpu_s_connect": round((rss_idle["cpu"] - rss0["cpu"]) / 1000, 2),
            "cpu_s_publish": round((rss_end["cpu"] - rss_idle["cpu"]) / 1000, 2),
            "valkey_cpu_s_publish": round((rss_end["valkey_cpu"] - rss_idle["valkey_cpu"]) / 1000, 2),
        },
        "publish": {
            "group_publications": gtotal, "personal_publications": ptotal,
            "errors": pub["errors"], "failed": len(pub["failed"]["g"]) + len(pub["failed"]["p"]),
            "http_call_ms": pub["calls"].summary_ms(), "behind_schedule_ms": pub["lag"].summary_ms(),
        },
        "deliveries": {
            "expected": expected, "received": received,
            "lost": sum(r["lost"] for r in results),
            "duplicated": sum(r["duplicates"] for r in results),
            "reordered": sum(r["reordered"] for r in results),
            "misrouted": sum(r["misrouted"] for r in results),
            "incomplete_connections": sum(r["incomplete"] for r in results),
            "latency_ms": hdr_summary(lat),
        },
        "phases": phases,
        "broadcast": broadcast,
        "latency_over_time": series,
        "deliveries_over_time": recv_series,
        "clients": {
            "pings_answered": sum(r["pings"] for r in results),
            "protocol_errors": sum(r["protocol_errors"] for r in results),
            "other_pushes": sum(r["other_pushes"] for r in results),
            "reads_fast": sum(r["reads_fast"] for r in results),
            "reads_general": sum(r["reads_general"] for r in results),
            "fast_frames": sum(r["fast_frames"] for r in results),
            "general_pushes": sum(r["general_pushes"] for r in results),
            "per_process": [{"sources": r["sources"], "ready": r["ready"], "cpu_s": round(r["cpu_s"], 2),
                             "rss_kb": r["rss_kb"]} for r in results],
        },
    }
