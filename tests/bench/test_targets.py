"""A target verdict names the target it compares with, and a run too small to measure a
target says so instead of failing it."""

from __future__ import annotations

from typing import Any

from bench.saturate import targets


def result(requested: int, held: int, offered: float, achieved: float, p95: float) -> dict[str, Any]:
    run = {
        "connections": {"requested": requested, "held": held, "failed": {} if held == requested
                        else {"timeout waiting for subscribe reply": requested - held},
                        "closed_during_run": {}},
        "server": {"rss_kb_per_idle_connection": 11.3},
        "deliveries": {"lost": 0, "duplicated": 0, "reordered": 0, "misrouted": 0},
        "publish": {"failed": 0},
        "phases": [{"group_rate": 100.0, "offered_deliveries_per_s": offered,
                    "deliveries_per_s": achieved, "latency_ms": {"count": 10, "p95": p95}}],
    }
    return {"runs": {"sentchat": run}, "params": {"broadcast": False}}


def test_a_small_clean_run_does_not_fail_the_size_targets() -> None:
    t = targets(result(1_000, 1_000, offered=500, achieved=500, p95=3.0))
    c = t["connections_held_0_errors"]
    assert c["met"] is None
    assert c["verdict"] == ("target 50,000 connections held, 0 errors: not measured at this size "
                            "(1,000 connections, all held)")
    d = t["p95_under_50ms_at_50k_deliveries"]
    assert d["met"] is None and "not measured at this size (offered at most 500" in d["verdict"]
    assert "NOT met" not in " ".join(v["verdict"] for v in t.values())


def test_errors_fail_the_connection_target_at_any_size() -> None:
    c = targets(result(1_000, 990, offered=500, achieved=500, p95=3.0))["connections_held_0_errors"]
    assert c["met"] is False and c["verdict"] == "target 50,000 connections held, 0 errors: NOT met"


def test_a_full_size_run_is_judged() -> None:
    t = targets(result(50_000, 50_000, offered=60_000, achieved=40_000, p95=20.0))
    assert t["connections_held_0_errors"]["met"] is True
    d = t["p95_under_50ms_at_50k_deliveries"]
    assert d["met"] is False and d["verdict"].startswith("target P95 < 50 ms at 50,000 deliveries/s: NOT met")
