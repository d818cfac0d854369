"""What the parts of the durable benchmark share: the targets, the limits that mark a run as
disturbed, the gateway configuration, the machine's CPU jiffies."""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
NAMESPACE = "log"
TARGET_RATE = 20_000
TARGET_P95_MS = 50.0
BUSY_LIMIT = 0.25
"""Whole-machine CPU use (fraction) above which ``--wait-idle`` waits before a run."""
OTHERS_LIMIT = 0.05
"""CPU used by processes outside the benchmark during the measured window, as a fraction of
the machine, above which a run is marked as disturbed."""
SLOWED_FACTOR = 1.3
"""A run whose host speed check, before or after it, is this much slower than the fastest
check of the invocation is marked as disturbed: the VM does not report its host's other
guests (steal stays 0), and a host can slow down in the middle of a run."""
CLIENTS_SLOWED_FACTOR = 1.15
"""A gateway run whose load clients spent this much more CPU per publication than in the
invocation's cheapest run is marked as disturbed too (host slowed during the run: ≈ 17–20
µs per publication at the usual speed here, 21–27 µs slowed)."""
STATS_SETTLE_S = 1.1
"""PostgreSQL backends flush their statistics at most once a second: after this pause the
next writer transaction (the "marker" publication) flushes everything pending."""
IDLE_STATS_FLUSH_S = 11.5
"""A backend that goes idle within a second of its last flush keeps its counts for
PGSTAT_IDLE_INTERVAL (10 s). The pool connections that load the channels' streams during
the warm-up (two transactions per new channel) then stay idle, so the first snapshot waits
until this long after the warm-up began: their counts must not land in the window."""

CONFIG_TOML = f"""\
# bench.durable: one durable namespace, clients publish without subscribing.
[http]
host = "127.0.0.1"

[[channel.namespaces]]
name = "{NAMESPACE}"
durable = true
retention = "1d"
allow_publish_for_client = true
allow_subscribe_for_client = true
"""

def machine_jiffies() -> dict[str, int]:
    """Jiffies of all CPUs since boot (/proc/stat): busy (all but idle and iowait), total,
    irq (hard + soft interrupts: loopback TCP work not charged to any process) and steal."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]] + [0] * 8
    total = sum(f[:8])  # guest time is already in user/nice
    return {"busy": total - f[3] - f[4], "total": total, "irq": f[5] + f[6], "steal": f[7]}


def jiffies_window(a: dict[str, int], b: dict[str, int]) -> dict[str, float]:
    """Machine use between two ``machine_jiffies`` readings, in core-seconds."""
    total = max(1, b["total"] - a["total"])
    wall_core_s = total / CLK_TCK  # all CPUs together
    return {"busy_frac": (b["busy"] - a["busy"]) / total,
            "busy_s": (b["busy"] - a["busy"]) / CLK_TCK,
            "irq_s": (b["irq"] - a["irq"]) / CLK_TCK,
            "steal_s": (b["steal"] - a["steal"]) / CLK_TCK,
            "core_s": wall_core_s}


def cpu_self() -> float:
    """This process's CPU seconds (user + system)."""
    t = os.times()
    return t.user + t.system
