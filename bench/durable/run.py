"""The runs: the gateway layer (client processes over WebSocket), the store layer
(``PublicationStore.publish`` in this process), and every (layer, channels) run of an
invocation, each on an idle machine and retried when disturbed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

import asyncpg

from bench.common import (
    Histogram,
    bucket_index,
    cpu_seconds,
    free_port,
    speed_check_ms,
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
from bench.durable.client import client_process
from bench.durable.report import report_run
from bench.durable.servers import (
    DurableGateway,
    Postgres,
    cpu_delta,
    db_snapshot,
    db_window,
    http_publish,
    verify,
)
from bench.durable.shared import (
    BUSY_LIMIT,
    CLIENTS_SLOWED_FACTOR,
    CONFIG_TOML,
    IDLE_STATS_FLUSH_S,
    NAMESPACE,
    OTHERS_LIMIT,
    SLOWED_FACTOR,
    STATS_SETTLE_S,
    cpu_self,
    jiffies_window,
    machine_jiffies,
)


def _channel_names(prefix: str, n: int) -> list[str]:
    return [f"{NAMESPACE}:{prefix}"] if n == 1 else [f"{NAMESPACE}:{prefix}-{i}" for i in range(n)]


async def run_gateway(pg: Postgres, nch: int, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    db = f"sentchat_bench_gateway_{nch}"
    dsn = await pg.create_database(db)
    port = args.port or free_port()
    server = DurableGateway(port, dsn, args.workers)
    procs = args.client_procs
    counts = _split(args.connections, procs)
    channels = _channel_names("hot" if nch == 1 else "c", nch)
    marker = f"{NAMESPACE}:marker"
    result: dict[str, Any] = {
        "layer": "gateway", "channels": nch, "database": db,
        "params": {"connections": args.connections, "client_procs": procs, "pipeline": args.pipeline,
                   "workers": args.workers,
                   "duration_s": args.duration, "warmup_s": args.warmup, "ramp_s": args.ramp,
                   "payload_bytes": args.payload_bytes, "port": port,
                   "server_cmd": server.command(), "config": CONFIG_TOML},
    }
    ctx = mp.get_context("spawn")
    children: list[Any] = []
    pipes: list[Pipe] = []
    phases: dict[str, list[dict[str, Any]]] = {}
    mon: asyncpg.Connection | None = None
    hard_limit = args.timeout * 4 + args.warmup + args.ramp + args.duration + 120
    try:
        await asyncio.to_thread(server.start, args.timeout)
        mon = await asyncpg.connect(dsn)
        cfg = {"host": "127.0.0.1", "port": port, "secret": server.secret, "counts": counts,
               "pipeline": args.pipeline, "pad": max(0, args.payload_bytes - 30),
               "timeout": args.timeout, "concurrency": args.concurrency, "hard_limit_s": hard_limit}
        for i in range(procs):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=client_process, args=(i, cfg, child_end), daemon=True,
                            name=f"durable-client-{i}")
            p.start()
            child_end.close()
            children.append(p)
            pipes.append(parent_end)
        await asyncio.to_thread(_collect, pipes, "started", args.timeout)
        for pipe in pipes:
            pipe.send(("connect",))
        ready = await asyncio.to_thread(_collect, pipes, "ready", args.timeout * 2 + 30)
        held = sum(r["ready"] for r in ready)
        result["connections"] = {"requested": args.connections, "held": held,
                                 "failed": _merge_counts([r["failed"] for r in ready])}
        if held == 0:
            raise RuntimeError(f"no connection could be opened: {result['connections']['failed']}")
        await asyncio.to_thread(http_publish, server, marker, {"marker": 0}, args.timeout)

        def server_cpu() -> dict[int, float]:
            """CPU seconds of the gateway's processes (workers, supervisor, valkey) by pid."""
            out: dict[int, float] = {}
            for pid in [p for pids in server.processes().values() for p in pids]:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    out[pid] = cpu_seconds(pid)
            return out

        async def phase(name: str, warm: float, duration: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            start = time.time_ns() + 200_000_000
            win_start = start + int(warm * 1e9)
            win_end = win_start + int(duration * 1e9)
            for i, p in enumerate(pipes):
                p.send(("phase", {"channels": channels, "proc_index": i, "procs": procs,
                                  "start": start, "win_start": win_start, "win_end": win_end,
                                  "drain_s": args.timeout}))
            samples: dict[str, Any] = {}
            await asyncio.sleep(max(0.0, (win_start - time.time_ns()) / 1e9))
            samples["t0"] = (time.time_ns(), server_cpu(), pg.cpu(), machine_jiffies())
            await asyncio.sleep(max(0.0, (win_end - time.time_ns()) / 1e9))
            samples["t1"] = (time.time_ns(), server_cpu(), pg.cpu(), machine_jiffies())
            out = await asyncio.to_thread(_collect, pipes, "phase", args.timeout + duration + 60)
            return out, samples

        print(f"  gateway pid {server.pid}, {held} connections from {procs} client process(es); "
              f"warm-up {args.warmup:g} s...", flush=True)
        warm_start = time.monotonic()
        phases["warmup"], _ = await phase("warmup", 0.0, args.warmup)
        await asyncio.sleep(max(STATS_SETTLE_S, warm_start + IDLE_STATS_FLUSH_S - time.monotonic()))
        await asyncio.to_thread(http_publish, server, marker, {"marker": 1}, args.timeout)
        snap_a = await db_snapshot(mon, marker)
        print(f"  measuring {args.duration:g} s (after {args.ramp:g} s ramp)...", flush=True)
        phases["measure"], samples = await phase("measure", args.ramp, args.duration)
        await asyncio.sleep(STATS_SETTLE_S)
        await asyncio.to_thread(http_publish, server, marker, {"marker": 2}, args.timeout)
        snap_b = await db_snapshot(mon, marker)
        window = await db_window(mon, snap_a, snap_b)
        acked = sum(r["ok"] for ph in phases.values() for r in ph)
        unanswered = sum(r["unanswered"] for ph in phases.values() for r in ph)
        check = await verify(mon, marker, acked, unanswered)
        for pipe in pipes:
            pipe.send(("exit",))
        for c in children:
            await asyncio.to_thread(c.join, 15)
    finally:
        if mon is not None:
            await mon.close()
        for c in children:
            if c.is_alive():
                c.terminate()
                c.join(5)
        stop_s = await loop.run_in_executor(None, server.stop)
        log_problems, log_lines = server.log_problems()
        log_tail = server.log_tail(10)
        server.tmp.cleanup()

    meas = phases["measure"]
    lat = Histogram()
    for r in meas:
        lat.merge(Histogram.from_dict(r["latency"]))
    t0, t1 = samples["t0"], samples["t1"]
    wall = (t1[0] - t0[0]) / 1e9
    win_ok = sum(r["win_ok"] for r in meas)
    ncpu = len(os.sched_getaffinity(0))
    jw = jiffies_window(t0[3], t1[3])
    pg_cpu = cpu_delta(t0[2], t1[2])
    clients_cpu = sum(r["cpu_window_s"] or 0.0 for r in meas)
    gateway_cpu = sum(cpu - t0[1].get(pid, 0.0) for pid, cpu in t1[1].items())
    result.update({
        "throughput": {"publications": win_ok, "window_s": round(wall, 3),
                       "per_s": round(win_ok / wall, 1) if wall else 0.0},
        "latency_ms": lat.summary_ms(),
        "db_window": window,
        "integrity": check,
        "phases": {name: {"sent": sum(r["sent"] for r in ph), "ok": sum(r["ok"] for r in ph),
                          "errors": _merge_counts([r["errors"] for r in ph]),
                          "unanswered": sum(r["unanswered"] for r in ph),
                          "closed": _merge_counts([r["closed"] for r in ph]),
                          "protocol_errors": sum(r["protocol_errors"] for r in ph),
                          "other_pushes": sum(r["other_pushes"] for r in ph)}
                   for name, ph in phases.items()},
        "cpu_window": {
            "cores": ncpu, "core_seconds_available": round(wall * ncpu, 2),
            "machine_busy_pct": round(100 * jw["busy_frac"], 1),
            "gateway_s": round(gateway_cpu, 2), "postgres_s": pg_cpu,
            "clients_s": round(clients_cpu, 2),
            "irq_s": round(jw["irq_s"], 2), "steal_s": round(jw["steal_s"], 2),
            # Clamped: irq time is partly charged to processes as well (accounting skew).
            "other_s": round(max(0.0, jw["busy_s"] - gateway_cpu - pg_cpu.get("total", 0.0)
                                 - clients_cpu - jw["irq_s"]), 2),
            "gateway_us_per_pub": round(gateway_cpu * 1e6 / win_ok, 1) if win_ok else None,
            "postgres_us_per_pub": round(pg_cpu.get("total", 0.0) * 1e6 / win_ok, 1) if win_ok else None,
            "clients_us_per_pub": round(clients_cpu * 1e6 / win_ok, 1) if win_ok else None,
        },
        "clients": [{"source": r["source"], "connections": r["connections"],
                     "cpu_s_total": round(r["cpu_s"], 2)} for r in meas],
        "server": {"stop_s": round(stop_s, 2), "sigkill": server.killed, "exit_code": server.exit_code,
                   "log_problem_lines": log_problems, "log_problems": log_lines},
    })
    if log_problems:
        result["server"]["log_tail"] = log_tail
    return result


async def run_store(pg: Postgres, nch: int, args: argparse.Namespace) -> dict[str, Any]:
    from storage.migrate import migrate
    from storage.partitions import PartitionManager
    from storage.publications import PublicationStore
    from storage.types import StoreError, StoreOverloaded

    db = f"sentchat_bench_store_{nch}"
    dsn = await pg.create_database(db)
    channels = _channel_names("hot" if nch == 1 else "c", nch)
    marker = f"{NAMESPACE}:marker"
    n = args.publishers
    # The gateway's pool and writer settings (gateway.config.StorageSettings defaults).
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=8)
    mon = await asyncpg.connect(dsn)
    store: PublicationStore | None = None
    result: dict[str, Any] = {
        "layer": "store", "channels": nch, "database": db,
        "params": {"publishers": n, "duration_s": args.duration, "warmup_s": args.warmup,
                   "ramp_s": args.ramp, "payload_bytes": args.payload_bytes,
                   "store": {"max_batch": 1000, "flush_interval": 0.002, "queue_limit": 50_000,
                             "pool": "min 2, max 8", "method": "copy"}},
    }
    pad = b"x" * max(0, args.payload_bytes - 30)
    serial = itertools.count()
    # The publisher's ClientInfo, as the gateway stores it for a client publish.
    info = b'{"user":"bench-0","client":"00000000-0000-0000-0000-000000000000"}'
    try:
        await migrate(pool)
        partitions = PartitionManager(pool, "daily", ahead=3)
        await partitions.ensure()
        store = PublicationStore(pool, partitions=partitions)
        await store.publish(marker, b'{"marker":0}')

        async def phase(warm: float, duration: float) -> dict[str, Any]:
            st: dict[str, Any] = {"ok": 0, "win_ok": 0, "errors": {}, "running": True,
                                  "cursor": 0, "lat": Histogram()}
            t_start = time.time_ns()
            win_start = t_start + int(warm * 1e9)
            win_end = win_start + int(duration * 1e9)
            samples: dict[str, Any] = {}
            lat: Histogram = st["lat"]
            counts = lat.counts

            async def publisher(i: int) -> None:
                while st["running"]:
                    ch = channels[st["cursor"]]
                    st["cursor"] = (st["cursor"] + 1) % nch
                    data = b'{"u":"s%d-%d","p":"%b"}' % (i, next(serial), pad)
                    sent = time.time_ns()
                    try:
                        await store.publish(ch, data, info=info)
                    except StoreOverloaded:
                        st["errors"]["overloaded"] = st["errors"].get("overloaded", 0) + 1
                        await asyncio.sleep(0.001)
                        continue
                    except StoreError as exc:
                        key = f"{type(exc).__name__}: {exc}"[:120]
                        st["errors"][key] = st["errors"].get(key, 0) + 1
                        continue
                    now = time.time_ns()
                    st["ok"] += 1
                    if win_start <= now < win_end:
                        st["win_ok"] += 1
                        v = (now - sent) // 1000
                        counts[bucket_index(v)] += 1
                        lat.n += 1
                        lat.total += v
                        if v > lat.max:
                            lat.max = v

            def sample() -> tuple[int, float, dict[int, tuple[str, float]], dict[str, int], dict[str, Any]]:
                s = store.stats
                return (time.time_ns(), cpu_self(), pg.cpu(), machine_jiffies(),
                        {"batches": s.batches, "rows": s.rows, "max_rows": s.max_rows,
                         "retries": s.retries, "commit_seconds": s.commit_seconds})

            tasks = [asyncio.ensure_future(publisher(i)) for i in range(n)]
            await asyncio.sleep(max(0.0, (win_start - time.time_ns()) / 1e9))
            samples["t0"] = sample()
            await asyncio.sleep(max(0.0, (win_end - time.time_ns()) / 1e9))
            samples["t1"] = sample()
            st["running"] = False
            done, pending = await asyncio.wait(tasks, timeout=args.timeout)
            for t in pending:
                t.cancel()
            st["unanswered"] = len(pending)
            st["samples"] = samples
            return st

        print(f"  {n} publisher tasks; warm-up {args.warmup:g} s...", flush=True)
        warm_start = time.monotonic()
        warm = await phase(0.0, args.warmup)
        await asyncio.sleep(max(STATS_SETTLE_S, warm_start + IDLE_STATS_FLUSH_S - time.monotonic()))
        await store.publish(marker, b'{"marker":1}')
        snap_a = await db_snapshot(mon, marker)
        print(f"  measuring {args.duration:g} s (after {args.ramp:g} s ramp)...", flush=True)
        meas = await phase(args.ramp, args.duration)
        await asyncio.sleep(STATS_SETTLE_S)
        await store.publish(marker, b'{"marker":2}')
        snap_b = await db_snapshot(mon, marker)
        window = await db_window(mon, snap_a, snap_b)
        check = await verify(mon, marker, warm["ok"] + meas["ok"], warm["unanswered"] + meas["unanswered"])
        stats = store.stats
    finally:
        if store is not None:
            await store.close(drain_seconds=args.timeout)
        await mon.close()
        await pool.close()

    t0, t1 = meas["samples"]["t0"], meas["samples"]["t1"]
    wall = (t1[0] - t0[0]) / 1e9
    win_ok = meas["win_ok"]
    ncpu = len(os.sched_getaffinity(0))
    jw = jiffies_window(t0[3], t1[3])
    pg_cpu = cpu_delta(t0[2], t1[2])
    own = t1[1] - t0[1]
    b0, b1 = t0[4], t1[4]
    batches = b1["batches"] - b0["batches"]
    rows = b1["rows"] - b0["rows"]
    result.update({
        "throughput": {"publications": win_ok, "window_s": round(wall, 3),
                       "per_s": round(win_ok / wall, 1) if wall else 0.0},
        "latency_ms": meas["lat"].summary_ms(),
        "db_window": window,
        "integrity": check,
        "batch_stats": {
            "window": {"batches": batches, "rows": rows,
                       "avg_rows": round(rows / batches, 1) if batches else None,
                       "commit_ms_avg": round((b1["commit_seconds"] - b0["commit_seconds"]) * 1e3 / batches, 2)
                       if batches else None,
                       "retries": b1["retries"] - b0["retries"]},
            "total": {"batches": stats.batches, "rows": stats.rows, "avg_rows": round(stats.avg_rows, 1),
                      "max_rows": stats.max_rows, "retries": stats.retries,
                      "failed_rows": stats.failed_rows},
        },
        "phases": {name: {"ok": ph["ok"], "errors": ph["errors"], "unanswered": ph["unanswered"]}
                   for name, ph in (("warmup", warm), ("measure", meas))},
        "cpu_window": {
            "cores": ncpu, "core_seconds_available": round(wall * ncpu, 2),
            "machine_busy_pct": round(100 * jw["busy_frac"], 1),
            "python_s": round(own, 2), "postgres_s": pg_cpu,
            "irq_s": round(jw["irq_s"], 2), "steal_s": round(jw["steal_s"], 2),
            "other_s": round(max(0.0, jw["busy_s"] - own - pg_cpu.get("total", 0.0) - jw["irq_s"]), 2),
            "python_us_per_pub": round(own * 1e6 / win_ok, 1) if win_ok else None,
            "postgres_us_per_pub": round(pg_cpu.get("total", 0.0) * 1e6 / win_ok, 1) if win_ok else None,
        },
    })
    return result

async def machine_busy(seconds: float) -> float:
    """Fraction of all CPUs busy over the next ``seconds``."""
    a = machine_jiffies()
    await asyncio.sleep(seconds)
    b = machine_jiffies()
    return (b["busy"] - a["busy"]) / max(1, b["total"] - a["total"])


async def wait_idle(limit: float) -> float:
    """Wait up to ``limit`` seconds for the machine to be idle; returns how busy it was over
    the last second measured."""
    busy = await machine_busy(1.0)
    if busy > BUSY_LIMIT and limit > 0:
        print(f"  machine {busy * 100:.0f}% busy: waiting up to {limit:g} s for it to be idle...",
              flush=True)
    waited = 0.0
    while busy > BUSY_LIMIT and waited < limit:
        busy = await machine_busy(1.0)
        waited += 1.0
    return busy


async def run_all(args: argparse.Namespace, result: dict[str, Any], pg: Postgres) -> None:
    layers = ["store", "gateway"] if args.layer == "both" else [args.layer]
    fastest = speed_check_ms()
    # The gateway layer's clients do the same work per publication in every run: their CPU
    # per publication shows a host slowed DURING a run, which checks around it can miss.
    cheapest_clients = float("inf")
    for layer in layers:
        for nch in args.channels:
            for attempt in range(args.retry_disturbed + 1):
                print(f"{layer} layer, {nch} channel(s)..." + (f" (attempt {attempt + 1})" if attempt else ""),
                      flush=True)
                busy = await wait_idle(args.wait_idle)
                speed = speed_check_ms()
                run = await (run_gateway if layer == "gateway" else run_store)(pg, nch, args)
                # PostgreSQL may still be flushing or vacuuming after the load: let it settle
                # (briefly) so that its work is not taken for a slow host.
                await wait_idle(min(args.wait_idle, 5.0))
                after = speed_check_ms()
                fastest = min(fastest, speed, after)
                run["machine_busy_before"] = round(busy, 3)
                run["speed_check_ms"] = speed
                run["speed_check_after_ms"] = after
                c = run["cpu_window"]
                run["others_disturbed"] = c["other_s"] > OTHERS_LIMIT * c["core_seconds_available"]
                clients_us = run["cpu_window"].get("clients_us_per_pub") or 0.0
                if clients_us:
                    cheapest_clients = min(cheapest_clients, clients_us)
                run["host_slowed"] = (max(speed, after) > SLOWED_FACTOR * fastest
                                      or clients_us > CLIENTS_SLOWED_FACTOR * cheapest_clients)
                run["disturbed"] = run["others_disturbed"] or run["host_slowed"]
                run["attempt"] = attempt + 1
                print(report_run(run), flush=True)
                if not run["disturbed"] or attempt == args.retry_disturbed:
                    result["runs"].append(run)
                    break
                result.setdefault("disturbed_runs", []).append(run)
    # A host slowed from the start makes the first checks the reference: judge every run
    # again against the fastest check of the whole invocation (too late to retry them, not
    # too late to mark them).
    for run in result["runs"]:
        clients_us = run["cpu_window"].get("clients_us_per_pub") or 0.0
        if not run["host_slowed"] and (
                max(run["speed_check_ms"], run["speed_check_after_ms"]) > SLOWED_FACTOR * fastest
                or clients_us > CLIENTS_SLOWED_FACTOR * cheapest_clients):
            run["host_slowed"] = run["disturbed"] = True
            print(f"{run['layer']} layer, {run['channels']} channel(s): marked disturbed afterwards "
                  f"(host speed check {run['speed_check_ms']}/{run['speed_check_after_ms']} ms, "
                  f"fastest of the invocation {fastest} ms; clients {clients_us or '-'} us per "
                  f"publication, cheapest {cheapest_clients if clients_us else '-'})", flush=True)
