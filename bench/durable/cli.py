"""Durable publish benchmark: sustained publications/s into PostgreSQL-backed channels.

`python -m bench.durable`: the command line (the first line above is the description its
``--help`` prints) and the invocation's whole run."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.common import (
    ROOT,
    machine_info,
)
from bench.common import (
    split_evenly as _split,
)
from bench.durable.report import summary_table
from bench.durable.run import run_all
from bench.durable.servers import Postgres
from bench.durable.shared import IDLE_STATS_FLUSH_S, TARGET_P95_MS, TARGET_RATE


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.durable", description=__doc__.split("\n")[0])
    ap.add_argument("--layer", choices=("gateway", "store", "both"), default="both")
    ap.add_argument("--channels", default="1,1000",
                    help="comma-separated channel counts, one run each (default 1,1000)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="seconds of load before the measured phase (default 3)")
    ap.add_argument("--ramp", type=float, default=1.0,
                    help="seconds of load at the start of the measured phase not counted (default 1)")
    ap.add_argument("--connections", type=int, default=400,
                    help="gateway layer: WebSocket connections in all (default 400)")
    ap.add_argument("--client-procs", type=int, default=2,
                    help="gateway layer: client processes; process i binds to 127.0.0.(2+i) (default 2)")
    ap.add_argument("--pipeline", type=int, default=1,
                    help="gateway layer: publish commands in flight per connection (default 1)")
    ap.add_argument("--workers", type=int, default=1,
                    help="gateway layer: `sentchat serve --workers N` (default 1; N > 1 adds the "
                         "embedded Valkey and sequences offsets in PostgreSQL)")
    ap.add_argument("--publishers", type=int, default=500,
                    help="store layer: concurrent publisher tasks (default 500)")
    ap.add_argument("--payload-bytes", type=int, default=100,
                    help="approximate size of each publication's JSON data (default 100)")
    ap.add_argument("--dsn", help="use this PostgreSQL (creates and drops databases sentchat_bench_*) "
                                  "instead of an embedded one under /tmp")
    ap.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="limit of each waiting phase: start, connecting, draining (default 60)")
    ap.add_argument("--concurrency", type=int, default=200,
                    help="gateway layer: handshakes in flight per client process (default 200)")
    ap.add_argument("--wait-idle", type=float, default=60.0,
                    help="before each run, wait up to this many seconds for the machine to be "
                         "less than 25%% busy (default 60; 0 = do not wait)")
    ap.add_argument("--retry-disturbed", type=int, default=0,
                    help="run a layout again, up to this many times, when other processes used "
                         "more than 5%% of the machine during its window or the host was slowed "
                         "(a speed check before or after it 1.3x the invocation's fastest; default 0)")
    ap.add_argument("--json-out", help="result file (default bench/results/durable-<timestamp>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.channels = [int(x) for x in str(args.channels).split(",") if x.strip()]
    except ValueError:
        raise SystemExit("--channels takes comma-separated positive integers") from None
    if not args.channels or min(args.channels) < 1:
        raise SystemExit("--channels takes comma-separated positive integers")
    if args.connections < 1 or args.pipeline < 1 or args.workers < 1 or args.publishers < 1 or args.duration <= 0:
        raise SystemExit("--connections, --pipeline, --publishers and --duration must be positive")
    if not 1 <= args.client_procs <= 250:
        raise SystemExit("--client-procs must be between 1 and 250")
    if max(_split(args.connections, args.client_procs)) > 19_000:
        raise SystemExit("more than 19,000 connections per client process: raise --client-procs")
    result: dict[str, Any] = {
        "benchmark": "durable",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.executable).name, "-m", "bench.durable", *(argv if argv is not None else sys.argv[1:])],
        "machine": machine_info(),
        "load_average_at_start": os.getloadavg(),
        "target": {"publications_per_s": TARGET_RATE, "p95_ms": TARGET_P95_MS},
        "runs": [],
    }
    m = result["machine"]
    print(f"durable: layers {args.layer}, channels {args.channels}, {args.duration:g} s measured; "
          f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, git {m.get('git', '?')}, "
          f"load average {result['load_average_at_start'][0]:.2f}", flush=True)
    layers = 1 if args.layer != "both" else 2
    hard_limit = layers * len(args.channels) * (args.retry_disturbed + 1) * (
        args.wait_idle + IDLE_STATS_FLUSH_S + args.warmup + args.ramp + args.duration + 4 * args.timeout + 60)

    async def guarded() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # noqa: S101
        handle = loop.call_later(hard_limit, task.cancel)
        pg = Postgres(args.dsn)
        try:
            await pg.start()
            result["postgres"] = pg.info
            print(f"PostgreSQL {pg.info.get('version')} "
                  f"({'--dsn' if args.dsn else 'embedded, ' + str(pg.tmp)}); "
                  f"fsync={pg.info.get('fsync')}, synchronous_commit={pg.info.get('synchronous_commit')}, "
                  f"wal_sync_method={pg.info.get('wal_sync_method')}", flush=True)
            await run_all(args, result, pg)
        finally:
            handle.cancel()
            await pg.stop()

    try:
        uvloop.run(guarded())
    finally:
        out = Path(args.json_out) if args.json_out else (
            ROOT / "bench" / "results" / time.strftime("durable-%Y%m%d-%H%M%S.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    runs = result["runs"]
    print()
    print(summary_table(runs))
    print(f"results written to {out}")
    return 0 if runs and all(r["integrity"]["ok"] for r in runs) else 1
