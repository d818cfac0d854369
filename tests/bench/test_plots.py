"""The saturation plots: one time axis (zero = the first publication), each rate phase and
each gap between phases marked, the offered rate beside the achieved one; and the PNGs
written. What is drawn is checked on :func:`plot_data`, the figures' data before drawing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.saturate.plots import plot, plot_data


def run(origin_shift: float) -> dict[str, Any]:
    """A run with two 3 s phases (100 and 200 pub/s) 2 s apart, the first publication due
    ``origin_shift`` s after the run's origin (its series' time base)."""
    t0 = origin_shift
    phases = [
        {"group_rate": 100.0, "personal_rate": 100.0, "seconds": 3.0, "start_s": t0, "end_s": t0 + 3,
         "offered_deliveries_per_s": 200.0, "deliveries_per_s": 200.0, "latency_ms": {"count": 600}},
        {"group_rate": 200.0, "personal_rate": 100.0, "seconds": 3.0, "start_s": t0 + 5, "end_s": t0 + 8,
         "offered_deliveries_per_s": 300.0, "deliveries_per_s": 290.0, "latency_ms": {"count": 900}},
    ]
    windows = [0, 1, 2, 5, 6, 7]
    return {
        "phases": phases,
        "timeline": {"t0_unix": 1.0, "points": [{"t": t, "connections": 1000} for t in (1.0, 2.0, 3.0, 4.0)]},
        "latency_over_time": [{"window": int(t0) + w, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
                               "max_ms": 4.0, "deliveries": 200} for w in windows],
        "deliveries_over_time": [{"t": int(t0) + w, "deliveries": 200 if w < 3 else 290} for w in windows],
    }


def result() -> dict[str, Any]:
    return {"runs": {"sentchat": run(4.0), "reference": run(6.0)}, "params": {"broadcast": False}}


def test_phases_and_gaps_are_marked_on_every_figure() -> None:
    figs = plot_data(result())
    assert list(figs) == ["connections", "latency", "deliveries"]
    for fig in figs.values():
        assert fig["xlabel"].startswith("seconds since the first publication")
        spans = [(s["kind"], s["start"], s["end"]) for s in fig["spans"]]
        assert spans == [("phase", 0.0, 3.0), ("gap", 3.0, 5.0), ("phase", 5.0, 8.0)]
        labels = [s["label"] for s in fig["spans"]]
        assert "100 pub/s" in labels[0] and "offered 200/s" in labels[0]
        assert labels[1].startswith("gap") and "2 s" in labels[1]
        assert "200 pub/s" in labels[2] and "offered 300/s" in labels[2]


def test_one_time_axis_zero_at_the_first_publication() -> None:
    """Both runs' series start at the same x although their first publications came at
    different times after their origins."""
    figs = plot_data(result())
    conns = {s["name"]: s["x"] for s in figs["connections"]["series"]}
    assert conns["sentchat"] == [-3.0, -2.0, -1.0, 0.0] and conns["reference"] == [-5.0, -4.0, -3.0, -2.0]
    deliveries = {s["name"]: s for s in figs["deliveries"]["series"]}
    assert deliveries["sentchat"]["x"] == deliveries["reference"]["x"]
    # deliveries/s as a step over each 1 s window of receive time, 0 in the gap
    steps = list(zip(deliveries["sentchat"]["x"], deliveries["sentchat"]["y"], strict=True))
    assert steps[:6] == [(0.0, 200.0), (1.0, 200.0), (1.0, 200.0), (2.0, 200.0), (2.0, 200.0), (3.0, 200.0)]
    assert steps[6:10] == [(3.0, 0.0), (4.0, 0.0), (4.0, 0.0), (5.0, 0.0)]
    assert steps[10:] == [(5.0, 290.0), (6.0, 290.0), (6.0, 290.0), (7.0, 290.0), (7.0, 290.0), (8.0, 290.0)]
    lat = [s for s in figs["latency"]["series"] if s["name"] == "sentchat"]
    assert {s["label"] for s in lat} == {"sentchat p50", "sentchat p95", "sentchat p99", "sentchat max"}
    for s in lat:
        # at each window's middle; no line drawn through the gap, which had no publications
        assert s["x"] == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]
        assert [math.isnan(y) for y in s["y"]] == [False] * 3 + [True] * 2 + [False] * 3


def test_the_offered_rate_is_drawn_beside_the_achieved_one() -> None:
    series = {s["name"]: s for s in plot_data(result())["deliveries"]["series"]}
    assert set(series) == {"sentchat", "reference", "offered"}
    assert series["sentchat"]["label"] == "sentchat: achieved"
    off = series["offered"]
    assert list(zip(off["x"], off["y"], strict=True)) == [
        (0.0, 0.0), (0.0, 200.0), (3.0, 200.0), (3.0, 0.0), (5.0, 0.0), (5.0, 300.0), (8.0, 300.0), (8.0, 0.0)]


def test_a_run_without_phases_has_no_spans_nor_offered_rate() -> None:
    r = result()
    for one in r["runs"].values():
        one["phases"] = []
    figs = plot_data(r)
    assert all(not f["spans"] for f in figs.values())
    assert "offered" not in {s["name"] for s in figs["deliveries"]["series"]}


def test_the_pngs_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    files = plot(result(), tmp_path / "saturate-x")
    assert [Path(f).name for f in files] == [
        "saturate-x-connections.png", "saturate-x-latency.png", "saturate-x-deliveries.png"]
    for f in files:
        assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(f).stat().st_size > 10_000
