"""Worker-scaling benchmark: the same group fan-out load against 1, 2 and 4 gateway workers.

    python -m bench.workers [--connections 2000] [--channels 40] [--rate R] [--publications M]
                            [--client-procs 2] [--workers-list 1,2,4] [--redis-one] [--repeat K]

Runs bench.fanout once per worker count, one after another, each with a fresh gateway
(`sentchat serve --workers N`): 1 worker uses the in-process memory broker (no Redis), 2 and
more the Valkey the supervisor embeds. ``--redis-one`` adds a run of 1 worker over a Valkey
the benchmark starts, which separates the cost of the Redis hop from the cost of more
processes. Prints every run's report, then one comparison table; writes everything to
bench/results/workers-<timestamp>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from bench import fanout
from bench.common import ROOT, machine_busy, machine_info

# A process here cannot hold 20,000 sockets (machine-facts.md); leave room for the rest.
SOCKETS_PER_WORKER = 19_000
# Whole-machine CPU use before a run above which the numbers are not worth quoting.
BUSY_WARNING = 0.25
# CPU used by processes outside the benchmark while publishing, as a fraction of the machine,
# above which a run is marked as disturbed.
OTHERS_WARNING = 0.03


def _label(workers: int, redis: str) -> str:
    if redis == "bench":
        return "valkey (bench)"
    return "memory (in-process)" if workers == 1 else "valkey (embedded)"


def _row(workers: int, redis: str, r: dict[str, Any], busy_before: float) -> dict[str, Any]:
    d, p, s = r["deliveries"], r["publish"], r["server"]
    v = s["valkey"]
    return {
        "workers": workers, "broker": _label(workers, redis), "clean": fanout.clean(r),
        "held": r["connections"]["held"], "per_worker": r["connections"]["per_worker"],
        "connect_s": r["connections"]["connect_s"],
        "achieved_rate": p["achieved_rate"], "publish_errors": sum(p["errors"].values()),
        "http_call_p50_ms": p["http_call_ms"]["p50"],
        "deliveries_per_s": d["per_s"], "expected": d["expected"], "received": d["received"],
        "p50_ms": d["latency_ms"]["p50"], "p95_ms": d["latency_ms"]["p95"],
        "p99_ms": d["latency_ms"]["p99"], "max_ms": d["latency_ms"]["max"],
        "sched_p95_ms": d["latency_from_schedule_ms"]["p95"],
        "sched_p99_ms": d["latency_from_schedule_ms"]["p99"],
        "lost": d["lost"], "duplicated": d["duplicated"], "reordered": d["reordered"],
        "misrouted": d["misrouted"],
        "gateway_cpu_s": s["cpu_s_publish"], "gateway_cores": s["cores_publish"],
        "valkey_cpu_s": v["cpu_s_publish"] if v else None,
        "valkey_rss_mib": round(v["rss_kb_n"] / 1024, 1) if v else None,
        "publish_phase_s": s["publish_phase_s"],
        "machine_busy": s["machine_busy_publish"], "machine_busy_before": round(busy_before, 3),
        "others_cpu_s": s["others_cpu_s_publish"],
        "postgres_cpu_s": s["postgres_cpu_s_publish"],
        "rss_kb_per_connection": s["rss_kb_per_connection"],
        "rss_mib_n": round(s["rss_kb_n"] / 1024, 1),
        "client_cpu_s": round(sum(x["cpu_s"] for x in r["clients"]["per_process"]), 2),
        "worker_restarts": s["worker_restarts"], "log_problem_lines": s["log_problem_lines"],
    }


def table(rows: list[dict[str, Any]], params: dict[str, Any], machine: dict[str, Any]) -> str:
    n, c = params["connections"], params["channels"]
    each = "–".join(str(x) for x in sorted({n // c, -(-n // c)}))
    asked = params["rate"] * n / c
    lines = [
        f"workers: {n} subscribers over {c} channel(s) ({each} each), {params['publications']} "
        f"publications round-robin at {params['rate']:g}/s by {params['publishers']} HTTP "
        f"connection(s) (≈ {asked:,.0f} deliveries/s asked), "
        f"{params['payload_bytes']} B payload, {params['client_procs']} client processes; history "
        + ("durable (PostgreSQL)" if params["durable"] else "in the broker"),
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"git {machine.get('git', '?')}",
        "",
        f"{'workers':>7}  {'broker':<19}  {'pubs/s':>7}  {'call ms':>7}  {'deliv/s':>8}  {'P50 ms':>7}  "
        f"{'P95 ms':>7}  {'P99 ms':>7}  {'sched P99':>9}  {'lost/dup/reord':>14}  "
        f"{'gw CPU s':>8}  {'valkey CPU s':>12}  " + (f"{'pg CPU s':>8}  " if params["durable"] else "")
        + f"{'busy':>5}  {'others s':>8}  {'KB/conn':>7}",
    ]
    for x in rows:
        if x.get("skipped"):
            lines.append(f"{x['workers']:>7}  {x['broker']:<19}  skipped: {x['skipped']}")
            continue
        ldr = f"{x['lost']}/{x['duplicated']}/{x['reordered']}"
        vk = f"{x['valkey_cpu_s']:.2f}" if x["valkey_cpu_s"] is not None else "-"
        busy = f"{x['machine_busy'] * 100:.0f}%" if x["machine_busy"] is not None else "-"
        lines.append(
            f"{x['workers']:>7}  {x['broker']:<19}  {x['achieved_rate']:>7.1f}  {x['http_call_p50_ms']:>7.2f}  "
            f"{x['deliveries_per_s']:>8.0f}  {x['p50_ms']:>7.2f}  {x['p95_ms']:>7.2f}  "
            f"{x['p99_ms']:>7.2f}  {x['sched_p99_ms']:>9.2f}  {ldr:>14}  "
            f"{x['gateway_cpu_s']:>8.2f}  {vk:>12}  "
            + (f"{x['postgres_cpu_s'] or 0:>8.2f}  " if params["durable"] else "")
            + f"{busy:>5}  {x['others_cpu_s']:>8.2f}  "
            f"{x['rss_kb_per_connection']:>7.2f}"
            + ("" if x["clean"] else "  NOT CLEAN"))
    lines += [
        "",
        "memory (in-process): 1 worker, publications fan out inside the gateway, no Redis.",
        "valkey (embedded): `sentchat serve --workers N` starts a valkey-server; every publication",
        "  is one Lua script on it, then one PUBLISH message to each worker holding subscribers.",
    ]
    if any(x["broker"] == "valkey (bench)" for x in rows):
        lines.append("valkey (bench): 1 worker over a valkey-server the benchmark started "
                     "(the Redis hop without more processes).")
    phases = [x["publish_phase_s"] for x in rows if not x.get("skipped")]
    lines += [
        "pubs/s achieved; call ms = HTTP publish call P50 (each publishing connection waits for it);",
        "deliv/s = received / (first send .. last receive); latency = receive - send;",
        "sched P99 = receive - scheduled send (grows when the publisher falls behind: saturated).",
        f"gw CPU s = CPU of all workers while publishing+delivering ({min(phases):.1f}–{max(phases):.1f} s "
        "of wall time); valkey CPU s the same for valkey-server;" if phases else "",
        "busy = whole machine (gateway, Valkey, clients, publisher) in that phase; others s = CPU of",
        "processes outside the benchmark in that phase; KB/conn = worker RSS growth / connections.",
    ]
    disturbed = [x for x in rows if not x.get("skipped") and x["disturbed"]]
    if disturbed:
        lines.append("WARNING: other processes competed for the CPUs in "
                     + ", ".join(f"the {x['workers']}-worker {x['broker']} run (machine "
                                 f"{x['machine_busy_before'] * 100:.0f}% busy before, others "
                                 f"{x['others_cpu_s']:.2f} s during)" for x in disturbed)
                     + ": do not quote these numbers.")
    return "\n".join(line for line in lines if line is not None)


def _disturbed(row: dict[str, Any], nproc: int) -> bool:
    """Other processes competed for the CPUs before or during the run."""
    return (row["machine_busy_before"] > BUSY_WARNING
            or row["others_cpu_s"] > OTHERS_WARNING * nproc * row["publish_phase_s"])


def _wait_idle(limit: float) -> float:
    """Wait up to ``limit`` seconds for the machine to be idle; returns how busy it was over
    the last second measured. After a busy spell it waits a random 2-12 s more and looks
    again, so that two benchmarks waiting for the same idle moment do not start together."""
    busy = machine_busy(1.0)
    if busy <= BUSY_WARNING or limit <= 0:
        return busy
    print(f"machine {busy * 100:.0f}% busy: waiting up to {limit:g} s for it to be idle...",
          flush=True)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy = machine_busy(min(5.0, max(1.0, deadline - time.monotonic())))
        if busy > BUSY_WARNING:
            continue
        time.sleep(random.uniform(2.0, 12.0))  # jitter
        busy = machine_busy(1.0)
        if busy <= BUSY_WARNING:
            break
    return busy


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    # 15,000 deliveries/s: about a third of this 2-core machine with 1 worker, so all worker
    # counts run unsaturated and their latencies compare. Four publishing connections, so that
    # with several workers publications enter through several of them.
    fanout.add_load_options(ap, connections=2000, channels=40, publications=6000, rate=300.0,
                            client_procs=2, publishers=4)
    ap.add_argument("--workers-list", default="1,2,4",
                    help="worker counts to run, in order (default 1,2,4)")
    ap.add_argument("--redis-one", action="store_true",
                    help="also run 1 worker over a Valkey the benchmark starts (after the 1-worker run)")
    ap.add_argument("--repeat", type=int, default=1, help="run the whole series K times (default 1)")
    ap.add_argument("--pause", type=float, default=2.0,
                    help="seconds between runs; the last of them measures how busy the machine is "
                         "(default 2)")
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="before each run wait up to S seconds for the machine to be less than "
                         f"{BUSY_WARNING * 100:.0f}%% busy (other work on a shared machine; default 0)")
    ap.add_argument("--retry-disturbed", type=int, default=0,
                    help="run a configuration up to K more times when other processes competed for "
                         "the CPUs during it; the table shows the last attempt (default 0)")
    ap.add_argument("--json-out", help="result file (default bench/results/workers-<timestamp>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fanout.check_load(args)
    try:
        counts = [int(x) for x in args.workers_list.split(",") if x.strip()]
    except ValueError:
        raise SystemExit("--workers-list: comma-separated integers, e.g. 1,2,4") from None
    if not counts or min(counts) < 1 or max(counts) > 64 or args.repeat < 1 or args.retry_disturbed < 0:
        raise SystemExit("--workers-list needs 1..64 workers, --repeat at least 1, "
                         "--retry-disturbed at least 0")
    series: list[tuple[int, str]] = []
    for w in counts:
        series.append((w, "auto"))
        if w == 1 and args.redis_one:
            series.append((1, "bench"))
    series *= args.repeat

    params = {k: getattr(args, k) for k in ("connections", "channels", "publications", "rate",
                                            "publishers",
                                            "payload_bytes", "client_procs", "timeout", "concurrency",
                                            "durable")}
    machine = machine_info()
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for i, (w, redis) in enumerate(series):
        label = _label(w, redis)
        if -(-args.connections // w) > SOCKETS_PER_WORKER:
            rows.append({"workers": w, "broker": label, "skipped":
                         f"{args.connections} connections need more than {SOCKETS_PER_WORKER:,} "
                         "sockets per process (20,000 open files)"})
            continue
        for attempt in range(args.retry_disturbed + 1):
            if i or attempt:
                time.sleep(max(0.0, args.pause - 1.0))
            busy = _wait_idle(args.wait_idle)
            print(f"\n=== run {i + 1}/{len(series)}"
                  + (f" (attempt {attempt + 1})" if attempt else "")
                  + f": {w} worker(s), {label}; machine {busy * 100:.0f}% busy before the run ===",
                  flush=True)
            run_args = argparse.Namespace(**params, workers=w, redis=redis, port=0, json_out=None)
            result = fanout.run(run_args)
            result["command"] = [Path(sys.executable).name, "-m", "bench.workers", *sys.argv[1:]]
            result["machine_busy_before"] = round(busy, 3)
            print(fanout.report(result), flush=True)
            row = _row(w, redis, result, busy)
            result["disturbed"] = row["disturbed"] = _disturbed(row, machine["nproc"])
            runs.append(result)
            if not row["disturbed"] or attempt == args.retry_disturbed:
                break
            print(f"disturbed by other processes (others {row['others_cpu_s']:.2f} s CPU while "
                  "publishing): running it again", flush=True)
        rows.append(row)

    print()
    print(table(rows, params, machine))
    out = Path(args.json_out) if args.json_out else (
        ROOT / "bench" / "results" / time.strftime("workers-%Y%m%d-%H%M%S.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "workers", "started_at": started,
        "command": [Path(sys.executable).name, "-m", "bench.workers", *sys.argv[1:]],
        "machine": machine, "params": {**params, "series": series}, "rows": rows, "runs": runs,
    }, indent=2) + "\n")
    print(f"results written to {out}")
    return 0 if all(x.get("clean") for x in rows if not x.get("skipped")) else 1


if __name__ == "__main__":
    sys.exit(main())
