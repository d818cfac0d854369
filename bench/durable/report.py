"""The text report: one block per run and the summary table."""

from __future__ import annotations

from typing import Any

from bench.durable.shared import CLIENTS_SLOWED_FACTOR, SLOWED_FACTOR, TARGET_P95_MS, TARGET_RATE


def _meets(r: dict[str, Any]) -> bool:
    return r["throughput"]["per_s"] >= TARGET_RATE and r["latency_ms"]["p95"] < TARGET_P95_MS


def report_run(r: dict[str, Any]) -> str:
    lat, th, w, c, chk = r["latency_ms"], r["throughput"], r["db_window"], r["cpu_window"], r["integrity"]
    pgc = c["postgres_s"]
    pg_parts = ", ".join(f"{k} {v:.2f}" for k, v in pgc.items() if k != "total" and v >= 0.01)
    if r["layer"] == "gateway":
        head = (f"gateway, {r['channels']} channel(s): {r['connections']['held']} connections "
                f"x pipeline {r['params']['pipeline']}, {r['params']['client_procs']} client process(es)"
                + (f", {r['params']['workers']} gateway workers" if r["params"]["workers"] > 1 else ""))
        who = (f"gateway {c['gateway_s']:.2f} s ({c['gateway_us_per_pub']} us/pub), postgres "
               f"{pgc.get('total', 0):.2f} s ({c['postgres_us_per_pub']} us/pub), clients "
               f"{c['clients_s']:.2f} s ({c['clients_us_per_pub']} us/pub), kernel irq {c['irq_s']:.2f} s, "
               f"other processes {c['other_s']:.2f} s")
        ph = r["phases"]["measure"]
        extra = []
        if ph["errors"]:
            extra.append(f"errors {ph['errors']}")
        if ph["closed"] or ph["protocol_errors"]:
            extra.append(f"closed {ph['closed']}, protocol errors {ph['protocol_errors']}")
        if r["server"]["log_problem_lines"]:
            extra.append(f"server log: {r['server']['log_problem_lines']} warning/error lines, e.g. "
                         f"{r['server']['log_problems'][:2]}")
    else:
        head = f"store, {r['channels']} channel(s): {r['params']['publishers']} publisher tasks"
        who = (f"python (store + publishers) {c['python_s']:.2f} s ({c['python_us_per_pub']} us/pub), "
               f"postgres {pgc.get('total', 0):.2f} s ({c['postgres_us_per_pub']} us/pub), kernel irq "
               f"{c['irq_s']:.2f} s, other processes {c['other_s']:.2f} s")
        bs = r["batch_stats"]
        extra = [f"BatchStats          window: {bs['window']['batches']} transactions, avg "
                 f"{bs['window']['avg_rows']} rows, commit {bs['window']['commit_ms_avg']} ms avg; "
                 f"whole run: avg {bs['total']['avg_rows']}, max {bs['total']['max_rows']} rows, "
                 f"retries {bs['total']['retries']}"]
        if r["phases"]["measure"]["errors"]:
            extra.append(f"errors {r['phases']['measure']['errors']}")
    lines = [
        head,
        f"  publications/s      {th['per_s']:,.0f} ({th['publications']:,} acknowledged in {th['window_s']:.2f} s)",
        f"  publish->reply ms   P50 {lat['p50']:.2f}  P95 {lat['p95']:.2f}  P99 {lat['p99']:.2f}  "
        f"max {lat['max']:.2f}",
        f"  rows/commit         {w['rows_per_commit']} ({w['rows']:,} rows, {w['commits']:,} commits in "
        f"pg_stat_database; {w['write_xacts']:,} write transactions by xid); WAL {w['wal_bytes_per_row']} B/row",
        f"  CPU in window       {c['core_seconds_available']:.1f} core-s available, machine busy "
        f"{c['machine_busy_pct']:.0f} %: {who}",
        f"  postgres CPU        {pg_parts}",
        f"  integrity           {'OK' if chk['ok'] else 'FAILED'}: {chk['rows']:,} rows = "
        f"{chk['acknowledged']:,} acknowledged (unanswered {chk['unanswered']}), {chk['unique_ids']:,} unique ids, "
        f"{chk['channels']} channels, {chk['channels_with_gaps']} with offset gaps",
    ]
    lines.extend("  " + x for x in extra)
    if "speed_check_ms" in r:
        lines.append(f"  host speed check    {r['speed_check_ms']} ms for a fixed Python loop before the run"
                     + (f", {r['speed_check_after_ms']} ms after" if "speed_check_after_ms" in r else "")
                     + " (higher = slower host)")
    if r.get("host_slowed"):
        lines.append(f"  DISTURBED           the host was slowed (speed check over {SLOWED_FACTOR:g}x the "
                     f"fastest of this invocation, or the clients' CPU per publication over "
                     f"{CLIENTS_SLOWED_FACTOR:g}x the cheapest run's): not a clean figure")
    if r.get("others_disturbed", r.get("disturbed") and not r.get("host_slowed")):
        lines.append(f"  DISTURBED           other processes used {c['other_s']:.2f} core-s of the window "
                     f"(machine {r['machine_busy_before'] * 100:.0f}% busy before the run): not a clean figure")
    return "\n".join(lines)


def summary_table(runs: list[dict[str, Any]]) -> str:
    head = (f"{'layer':<8} {'channels':>8} {'load':>14} {'pubs/s':>9} {'rows/commit':>11} "
            f"{'P50 ms':>7} {'P95 ms':>7} {'P99 ms':>7} {'host ms':>11}  "
            f"target (>= {TARGET_RATE:,}/s, P95 < {TARGET_P95_MS:g} ms)")
    out = [head, "-" * len(head)]
    for r in runs:
        if r["layer"] == "gateway":
            load = f"{r['connections']['held']}x{r['params']['pipeline']} conn"
        else:
            load = f"{r['params']['publishers']} tasks"
        lat = r["latency_ms"]
        verdict = "met" if _meets(r) else "NOT met"
        if r.get("disturbed"):
            verdict += " (disturbed)"
        if not r["integrity"]["ok"]:
            verdict += " (INTEGRITY FAILED)"
        # The host speed checks before/after the run (≈ 15 ms on this machine's usual host):
        # a host slowed for a whole invocation is flagged by no comparison, only by these.
        host = f"{r.get('speed_check_ms', '-')}/{r.get('speed_check_after_ms', '-')}"
        out.append(f"{r['layer']:<8} {r['channels']:>8} {load:>14} {r['throughput']['per_s']:>9,.0f} "
                   f"{r['db_window']['rows_per_commit'] or 0:>11} {lat['p50']:>7.2f} {lat['p95']:>7.2f} "
                   f"{lat['p99']:>7.2f} {host:>11}  {verdict}")
    for layer in ("store", "gateway"):
        mine = [r for r in runs if r["layer"] == layer]
        if not mine:
            continue
        met = sum(1 for r in mine if _meets(r))
        c = [r["cpu_window"] for r in mine]
        if layer == "store":
            costs = ", ".join(f"{x['python_us_per_pub']} us Python + {x['postgres_us_per_pub']} us PostgreSQL"
                              for x in c)
        else:
            costs = ", ".join(f"{x['gateway_us_per_pub']} us gateway + {x['postgres_us_per_pub']} us "
                              f"PostgreSQL + {x['clients_us_per_pub']} us clients" for x in c)
        line = f"{layer}: target met in {met} of {len(mine)} layout(s); CPU per publication: {costs}"
        if layer == "gateway":
            worst = max(x["gateway_us_per_pub"] or 0.0 for x in c)
            best = min(x["gateway_us_per_pub"] or 1e9 for x in c)
            if best and best < 1e9:
                line += (f"; one gateway process at {best:.0f}-{worst:.0f} us/publication tops out near "
                         f"{1e6 / worst:,.0f}-{1e6 / best:,.0f}/s on a full core")
        out.append(line)
    return "\n".join(out)
