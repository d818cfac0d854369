"""The PNG plots written next to the JSON (needs matplotlib)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.saturate.shared import TARGET_P95_MS, WINDOW_S


def plot(result: dict[str, Any], stem: Path) -> list[str]:
    """PNG plots next to the JSON: connections over time, latency percentiles over time and
    deliveries/s, each with the reference's series when it ran. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'sentchat[bench]'): no plots", file=sys.stderr)
        return []
    files = []
    runs = result["runs"]
    styles = {"sentchat": "-", "reference": "--"}

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, run in runs.items():
        pts = run["timeline"]["points"]
        ax.plot([p["t"] for p in pts], [p["connections"] for p in pts], styles[name], label=name)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("connections held")
    ax.set_title("connections over time")
    ax.grid(alpha=0.3)
    ax.legend()
    path = stem.with_name(stem.name + "-connections.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(str(path))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, run in runs.items():
        pts = run["latency_over_time"]
        if not pts:
            continue
        w0 = pts[0]["window"]
        xs = [(p["window"] - w0) * WINDOW_S for p in pts]
        for key, color in (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red"),
                           ("max_ms", "tab:gray")):
            ax.plot(xs, [p[key] for p in pts], styles[name], color=color, label=f"{name} {key[:-3]}")
    ax.axhline(TARGET_P95_MS, color="black", linewidth=0.8, linestyle=":", label="50 ms")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first publication (by send time)")
    ax.set_ylabel("delivery latency, ms")
    ax.set_title("delivery latency percentiles per second")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path = stem.with_name(stem.name + "-latency.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(str(path))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, run in runs.items():
        pts = run["deliveries_over_time"]
        if not pts:
            continue
        w0 = pts[0]["t"]
        ax.plot([p["t"] - w0 for p in pts], [p["deliveries"] / WINDOW_S for p in pts], styles[name], label=name)
    ax.set_xlabel("seconds since the first delivery")
    ax.set_ylabel("deliveries/s")
    ax.set_title("deliveries per second (by receive time)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = stem.with_name(stem.name + "-deliveries.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(str(path))
    return files
