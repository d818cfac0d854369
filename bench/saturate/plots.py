"""The PNG plots written next to the JSON (needs matplotlib).

Every plot shares one time axis: zero is the first publication (the first phase's start),
so connecting and holding are negative. Each rate phase is a shaded span labelled with its
rate, and the pause between two phases a hatched span labelled "gap". :func:`plot_data`
builds everything drawn (series, spans, labels) from the result without matplotlib;
:func:`plot` only draws it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from bench.saturate.shared import TARGET_P95_MS, WINDOW_S

TIME_AXIS = "seconds since the first publication (before 0: connecting, holding)"
STYLES = {"sentchat": "-", "reference": "--"}
LATENCY_COLORS = (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red"),
                  ("max_ms", "tab:gray"))


def first_publication_s(run: dict[str, Any]) -> float:
    """When the run's first publication was due, in seconds since the run's origin (the time
    base of its series); 0 for a run without phases or from before phases had start times."""
    phases = run.get("phases") or []
    return float(phases[0].get("start_s", 0.0)) if phases else 0.0


def phase_spans(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's rate phases and the gaps between them on the shared time axis: ``kind``
    ("phase" or "gap"), ``start``, ``end``, ``label``, and for a phase its rates."""
    phases = [ph for ph in run.get("phases") or [] if "start_s" in ph]
    t0 = first_publication_s(run)
    spans: list[dict[str, Any]] = []
    for i, ph in enumerate(phases):
        start, end = ph["start_s"] - t0, ph["end_s"] - t0
        if spans and start > spans[-1]["end"]:
            spans.append({"kind": "gap", "start": spans[-1]["end"], "end": start,
                          "label": f"gap\n{start - spans[-1]['end']:g} s"})
        offered = ph["offered_deliveries_per_s"]
        spans.append({"kind": "phase", "start": start, "end": end,
                      "group_rate": ph["group_rate"], "offered_deliveries_per_s": offered,
                      "label": f"phase {i + 1}\n{ph['group_rate']:,.4g} pub/s\n"
                               f"offered {offered:,.0f}/s"})
    return spans


def offered_series(spans: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The offered deliveries/s as a step line: each phase's rate over the phase, 0 between."""
    xs: list[float] = []
    ys: list[float] = []
    for sp in spans:
        if sp["kind"] != "phase":
            continue
        rate = sp["offered_deliveries_per_s"]
        xs += [sp["start"], sp["start"], sp["end"], sp["end"]]
        ys += [0.0, rate, rate, 0.0]
    return {"x": xs, "y": ys}


def plot_data(result: dict[str, Any]) -> dict[str, Any]:
    """What :func:`plot` draws, by figure ("connections", "latency", "deliveries"): title,
    axis labels, ``series`` (name, label, x, y, style, color) and the shared ``spans``."""
    runs = result["runs"]
    spans = phase_spans(next(iter(runs.values()))) if runs else []
    figs: dict[str, dict[str, Any]] = {
        "connections": {"title": "connections over time", "ylabel": "connections held", "series": []},
        "latency": {"title": "delivery latency percentiles per second (by send time)",
                    "ylabel": "delivery latency, ms", "yscale": "log", "series": [],
                    "hlines": [{"y": TARGET_P95_MS, "label": f"{TARGET_P95_MS:g} ms (target P95)"}]},
        "deliveries": {"title": "deliveries per second (by receive time), offered and achieved",
                       "ylabel": "deliveries/s", "series": []},
    }
    for name, run in runs.items():
        t0 = first_publication_s(run)
        style = STYLES.get(name, "-")
        pts = run["timeline"]["points"]
        figs["connections"]["series"].append({
            "name": name, "label": name, "style": style, "color": None,
            "x": [p["t"] - t0 for p in pts], "y": [p["connections"] for p in pts]})
        # windows of send (latency) or receive (deliveries) time [w, w + WINDOW_S) since the
        # origin: latency at the window's middle, a line broken where a window has no
        # deliveries (a gap); deliveries/s as a step over each window, 0 where none came
        lat = {p["window"]: p for p in run["latency_over_time"]}
        ws = range(min(lat), max(lat) + 1) if lat else range(0)
        xs = [(w + 0.5) * WINDOW_S - t0 for w in ws]
        for key, color in LATENCY_COLORS:
            figs["latency"]["series"].append({
                "name": name, "label": f"{name} {key[:-3]}", "style": style, "color": color,
                "x": xs, "y": [lat[w][key] if w in lat else math.nan for w in ws]})
        recv = {p["t"]: p["deliveries"] for p in run["deliveries_over_time"]}
        dx: list[float] = []
        dy: list[float] = []
        for w in range(min(recv), max(recv) + 1) if recv else range(0):
            dx += [w * WINDOW_S - t0, (w + 1) * WINDOW_S - t0]
            dy += [recv.get(w, 0) / WINDOW_S] * 2
        figs["deliveries"]["series"].append({
            "name": name, "label": f"{name}: achieved", "style": style,
            "color": "tab:blue" if name == "sentchat" else "tab:orange", "x": dx, "y": dy})
    if any(sp["kind"] == "phase" for sp in spans):
        off = offered_series(spans)
        figs["deliveries"]["series"].append({"name": "offered", "label": "offered", "style": ":",
                                             "color": "black", "x": off["x"], "y": off["y"]})
    for fig in figs.values():
        fig["xlabel"] = TIME_AXIS
        fig["spans"] = spans
    return figs


def _draw(plt: Any, fig_data: dict[str, Any], path: Path) -> None:
    from matplotlib.transforms import blended_transform_factory

    fig, ax = plt.subplots(figsize=(11, 4.8))
    label_at = blended_transform_factory(ax.transData, ax.transAxes)
    for sp in fig_data["spans"]:
        if sp["kind"] == "phase":
            ax.axvspan(sp["start"], sp["end"], color="tab:blue", alpha=0.08, linewidth=0)
        else:
            ax.axvspan(sp["start"], sp["end"], facecolor="none", edgecolor="gray", alpha=0.35,
                       hatch="//", linewidth=0)
        ax.text((sp["start"] + sp["end"]) / 2, 0.98, sp["label"], transform=label_at, ha="center",
                va="top", fontsize=7, color="dimgray" if sp["kind"] == "gap" else "black")
    for s in fig_data["series"]:
        if not s["x"]:
            continue
        kw: dict[str, Any] = {"color": s["color"]} if s["color"] else {}
        if s["name"] == "sentchat":
            kw["linewidth"] = 2.0
        ax.plot(s["x"], s["y"], s["style"], label=s["label"], **kw)
    for h in fig_data.get("hlines", []):
        ax.axhline(h["y"], color="black", linewidth=0.8, linestyle=":", label=h["label"])
    if fig_data.get("yscale"):
        ax.set_yscale(fig_data["yscale"])
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel(fig_data["xlabel"])
    ax.set_ylabel(fig_data["ylabel"])
    ax.set_title(fig_data["title"])
    ax.grid(alpha=0.3)
    # room above the data for the span labels
    lo, hi = ax.get_ylim()
    if fig_data.get("yscale") == "log":
        ax.set_ylim(lo, hi * 8)
    else:
        ax.set_ylim(lo, hi + (hi - lo) * 0.35)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(result: dict[str, Any], stem: Path) -> list[str]:
    """PNG plots next to the JSON: connections over time, latency percentiles over time and
    deliveries/s (offered and achieved), each with the reference's series when it ran, on
    one time axis with the phases marked. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'sentchat[bench]'): no plots", file=sys.stderr)
        return []
    files = []
    for kind, fig_data in plot_data(result).items():
        path = stem.with_name(f"{stem.name}-{kind}.png")
        _draw(plt, fig_data, path)
        files.append(str(path))
    return files
