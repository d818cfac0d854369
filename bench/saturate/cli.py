"""`sentchat bench saturate` and `sentchat bench idle`: the operators' load suite.

The command lines, and each command's whole run (the first line above is the description
`sentchat bench saturate --help` prints)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.common import (
    ROOT,
    GatewayProcess,
    free_port,
    machine_info,
    rss_kb,
    speed_check_ms,
    split_evenly,
)
from bench.saturate.plots import plot
from bench.saturate.report import clean, compare, report, targets
from bench.saturate.run import drive
from bench.saturate.servers import ExternalTarget, ReferenceTarget, SentchatTarget, Target
from bench.saturate.shared import SATURATE_CONFIG, SOCKETS_PER_PROCESS, TARGET_FRESH_MB


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_common(ap: argparse.ArgumentParser, connections: int) -> None:
    ap.add_argument("--connections", type=int, default=connections, help=f"connections (default {connections})")
    ap.add_argument("--workers", type=int, default=0,
                    help="gateway workers the bench starts (default: one per 15,000 connections)")
    ap.add_argument("--client-procs", type=int, default=0,
                    help="client processes (default: one per 14,000 connections)")
    ap.add_argument("--sources-per-proc", type=int, default=1,
                    help="loopback source addresses per client process: process i uses "
                         "127.0.0.(2+i*S) .. (default 1; ~28k ports per address)")
    ap.add_argument("--channels", type=int, default=1000, help="group channels (default 1000)")
    ap.add_argument("--ramp-rate", type=float, default=2000.0, help="new connections per second (default 2000)")
    ap.add_argument("--concurrency", type=int, default=200, help="handshakes in flight per client process")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold before measuring/publishing")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for one connect or HTTP call")
    ap.add_argument("--json-out", help="result file (default bench/results/<command>-<timestamp>.json)")
    ap.add_argument("--quiet", action="store_true", help="no live progress lines")


def build_saturate_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sentchat bench saturate", description=__doc__.split("\n")[0])
    add_common(ap, 50_000)
    ap.add_argument("--url", help="load a running gateway (ws://HOST:PORT) instead of starting one; "
                                  "needs --secret and --api-key (or SENTCHAT_TOKEN_HMAC_SECRET / "
                                  "SENTCHAT_API_KEY) and the namespaces of --print-config")
    ap.add_argument("--secret", default=os.environ.get("SENTCHAT_TOKEN_HMAC_SECRET", ""))
    ap.add_argument("--api-key", default=os.environ.get("SENTCHAT_API_KEY", ""))
    ap.add_argument("--redis", default="", help="redis:// URLs for the bench's gateway (default: "
                                                "in-process broker for 1 worker, embedded Valkey for more)")
    ap.add_argument("--rate", default="1000", type=_rates, dest="rates",
                    help="group publications per second, comma-separated for phases of --duration "
                         "each (default 1000: with 50 subscribers a channel, 50,000 deliveries/s)")
    ap.add_argument("--personal-rate", type=float, default=100.0,
                    help="personal-channel publications per second during each phase (default 100)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per publishing phase (default 15)")
    ap.add_argument("--phase-gap", type=float, default=2.0, help="seconds between phases (default 2)")
    ap.add_argument("--publishers", type=int, default=16,
                    help="HTTP connections publishing group channels (default 16)")
    ap.add_argument("--batch", type=int, default=1,
                    help="publications per HTTP request: 1 = one POST /api/publish each (default); "
                         "N > 1 = the publications due at one tick on one connection, up to N per "
                         "POST /api/batch")
    ap.add_argument("--client-tick-ms", type=float, default=1.0,
                    help="once connected, each client process runs at most one event-loop "
                         "iteration per this many ms, so it wakes once for many deliveries "
                         "(latencies include up to this delay; 0 = wake per read; default 1)")
    ap.add_argument("--max-pending", type=int, default=256,
                    help="unanswered pipelined requests per publishing connection before the "
                         "publisher waits (and falls behind schedule; default 256)")
    ap.add_argument("--payload-bytes", type=int, default=100, help="publication data size (default 100)")
    ap.add_argument("--drain-timeout", type=float, default=30.0,
                    help="seconds to wait for deliveries after the last publication (default 30)")
    ap.add_argument("--broadcast", action="store_true",
                    help="one big channel: every connection's group channel is group:g-0; "
                         "--broadcasts publications, one every --broadcast-interval seconds")
    ap.add_argument("--broadcasts", type=int, default=5)
    ap.add_argument("--broadcast-interval", type=float, default=2.0)
    ap.add_argument("--reference", action="store_true",
                    help="then run the identical load against the bare reference server")
    ap.add_argument("--reference-fanout", choices=("frame", "broadcast"), default="frame",
                    help="the reference's fan-out: frame = framed once, the same bytes written to "
                         "every subscriber (default); broadcast = websockets.broadcast()")
    ap.add_argument("--reference-only", action="store_true",
                    help="run only the bare reference (what the harness and this machine can do)")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="hard bound for the whole command (default: computed from the load)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--print-config", action="store_true",
                    help="print the gateway configuration the load needs and exit")
    return ap


def _defaults(args: argparse.Namespace) -> None:
    n = args.connections
    if n < 1:
        raise SystemExit("--connections must be positive")
    if getattr(args, "client_tick_ms", 0.0) < 0:
        raise SystemExit("--client-tick-ms must be 0 (no pacing) or more")
    args.workers = args.workers or max(1, math.ceil(n / 15_000))
    args.client_procs = args.client_procs or max(1, math.ceil(n / 14_000))
    if max(split_evenly(n, args.client_procs)) > SOCKETS_PER_PROCESS:
        raise SystemExit("more than 19,000 connections per client process: raise --client-procs")
    if getattr(args, "broadcast", False):
        args.channels = 1
    args.channels = max(1, min(args.channels, n))


def _bound(args: argparse.Namespace) -> float:
    if args.max_seconds:
        return args.max_seconds
    per_target = (args.connections / args.ramp_rate + args.hold + 60
                  + len(args.rates) * (args.duration + args.phase_gap)
                  + (args.broadcasts * args.broadcast_interval if args.broadcast else 0)
                  + args.drain_timeout + 60)
    return per_target * (2 if args.reference and not args.reference_only else 1) + 60


def _out_path(args: argparse.Namespace, kind: str) -> Path:
    return Path(args.json_out) if args.json_out else (
        ROOT / "bench" / "results" / time.strftime(f"{kind}-%Y%m%d-%H%M%S.json"))


def _run_target(make: Callable[[], Target], args: argparse.Namespace, label: str,
                steps: list[int] | None = None) -> dict[str, Any]:
    target = make()
    # The VM does not report its host's other guests (steal stays 0): a slow check marks a
    # run made on a slowed host, whose figures are not comparable with the others.
    speed = speed_check_ms()
    print(f"{label}: starting {target.describe()}...", flush=True)
    target.start(args.timeout)
    try:
        run = uvloop.run(asyncio.wait_for(drive(target, args, label, steps), args.max_seconds))
    finally:
        run_stop = target.stop()
    run["stop"] = run_stop
    run["speed_check_ms"] = speed
    return run


def saturate(argv: list[str] | None = None) -> int:
    """`sentchat bench saturate`."""
    args = build_saturate_parser().parse_args(argv)
    if args.print_config:
        print(SATURATE_CONFIG)
        return 0
    _defaults(args)
    args.max_seconds = _bound(args)
    if args.url and not (args.secret and args.api_key):
        raise SystemExit("--url needs --secret and --api-key (or SENTCHAT_TOKEN_HMAC_SECRET / SENTCHAT_API_KEY)")
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "saturate", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": ["sentchat", "bench", "saturate", *(argv if argv is not None else sys.argv[3:])],
        "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k not in ("secret", "api_key")},
        "runs": {},
    }
    print(f"saturate: {args.connections:,} connections from {args.client_procs} client processes, "
          f"{args.workers} worker(s); stops within {args.max_seconds:.0f} s", flush=True)
    if args.url:
        make: Callable[[], Target] = lambda: ExternalTarget(args.url, args.secret, args.api_key)  # noqa: E731
    else:
        make = lambda: SentchatTarget(args.workers, args.redis)  # noqa: E731
    if not args.reference_only:
        result["runs"]["sentchat"] = _run_target(make, args, "sentchat")
    if args.reference or args.reference_only:
        workers = (result["runs"]["sentchat"]["server"]["worker_processes"] if "sentchat" in result["runs"]
                   else 0) or args.workers
        args.max_seconds = max(60.0, args.max_seconds - (time.monotonic() - started))
        result["runs"]["reference"] = _run_target(lambda: ReferenceTarget(workers, args.reference_fanout), args,
                                                   "reference")
        if "sentchat" in result["runs"]:
            result["ratios"] = compare(result["runs"]["sentchat"], result["runs"]["reference"])
    result["targets"] = targets(result) if "sentchat" in result["runs"] else {}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    out = _out_path(args, "saturate-broadcast" if args.broadcast else "saturate")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        result["plots"] = plot(result, out.with_suffix(""))
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))
    print(f"results written to {out}" + (f"; plots: {', '.join(result.get('plots', []))}" if result.get("plots") else ""))
    return 0 if all(clean(r) for r in result["runs"].values()) else 1




# ---- idle --------------------------------------------------------------------------------


def build_idle_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sentchat bench idle",
                                 description="RSS of a fresh gateway worker, then per idle connection")
    add_common(ap, 10_000)
    ap.add_argument("--steps", default="1000,10000",
                    help="connection counts to measure at, ascending (default 1000,10000)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after start before reading RSS")
    return ap


def fresh_worker_rss(config: str | None, label: str, settle: float, timeout: float) -> dict[str, Any]:
    """Start `sentchat serve` (one worker) with ``config`` (None: the embedded defaults,
    which start an embedded PostgreSQL for the durable namespaces) and read its RSS."""
    if config is None:
        config = (ROOT / "gateway" / "defaults.toml").read_text()
    gw = GatewayProcess(free_port(), config=config)
    gw.start(timeout)
    try:
        time.sleep(settle)
        kb = rss_kb(gw.pid)
        with open(f"/proc/{gw.pid}/smaps_rollup") as fh:
            rollup = {line.split(":")[0]: int(line.split()[1]) for line in fh if line.endswith("kB\n")}
    finally:
        gw.cleanup()
    return {"config": label, "rss_kb": kb, "rss_mib": round(kb / 1024, 2), "rss_mb": round(kb * 1.024 / 1000, 2),
            "pss_kb": rollup.get("Pss"), "anonymous_kb": rollup.get("Anonymous"),
            "under_40_mb": kb * 1024 < TARGET_FRESH_MB * 1e6}


def idle(argv: list[str] | None = None) -> int:
    """`sentchat bench idle`."""
    args = build_idle_parser().parse_args(argv)
    steps = sorted(int(x) for x in args.steps.split(","))
    args.connections = steps[-1]
    _defaults(args)
    # Fields drive() reads that only saturate sets.
    args.broadcast, args.rates, args.personal_rate, args.duration = False, [], 0.0, 0.0
    args.phase_gap, args.publishers, args.payload_bytes, args.drain_timeout = 0.0, 1, 100, 5.0
    args.broadcasts, args.broadcast_interval, args.client_tick_ms = 0, 1.0, 0.0
    args.max_seconds = steps[-1] / args.ramp_rate + args.hold * len(steps) + 240
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "idle", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": ["sentchat", "bench", "idle", *(argv if argv is not None else sys.argv[3:])],
        "machine": machine_info(), "params": vars(args).copy(), "fresh": []}
    for cfg, label in ((None, "embedded defaults (durable chat/dm: embedded PostgreSQL)"),
                       (SATURATE_CONFIG, "bench saturate config (no durable namespace)")):
        print(f"fresh worker, {label}...", flush=True)
        result["fresh"].append(fresh_worker_rss(cfg, label, args.settle, args.timeout))
    run = _run_target(lambda: SentchatTarget(args.workers), args, "idle", steps)
    result["connections"] = run["connect_levels"]
    result["run"] = {k: run[k] for k in ("target", "server_before", "connections", "stop")}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    m = result["machine"]
    lines = [f"idle: machine {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, git {m.get('git', '?')}"]
    for f in result["fresh"]:
        lines.append(f"  fresh worker ({f['config']}): RSS {f['rss_mib']:.1f} MiB = {f['rss_mb']:.1f} MB "
                     f"(PSS {(f['pss_kb'] or 0) / 1024:.1f} MiB) -> target < 40 MB "
                     f"{'met' if f['under_40_mb'] else 'NOT met'}")
    base = run["server_before"]["server"]
    lines.append(f"  {args.workers} worker(s) before connecting: {base / 1024:.1f} MiB")
    for lv in result["connections"]:
        lines.append(f"  {lv['held']:>6,} idle connections (personal + group subscription): server RSS "
                     f"{lv['server_rss_kb'] / 1024:.1f} MiB -> {lv['rss_kb_per_connection']} KiB per connection"
                     + (f"; failed {lv['failed']}" if lv["failed"] else ""))
    print("\n".join(lines))
    out = _out_path(args, "idle")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results written to {out}")
    return 0 if all(lv["held"] == lv["requested"] for lv in result["connections"]) else 1


def main(argv: list[str] | None = None) -> int:
    """`sentchat bench <saturate|idle> ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"saturate": saturate, "idle": idle}
    if not argv or argv[0] not in commands:
        print("usage: sentchat bench {saturate,idle} [options]  (--help after the command for its options)",
              file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
