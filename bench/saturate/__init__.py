"""`sentchat bench saturate` and `sentchat bench idle`: the operators' load suite.

    sentchat bench saturate [--connections 50000] [--workers W | --url ws://HOST:PORT]
                            [--channels 1000] [--rate 1000[,1500,...]] [--duration 15]
                            [--broadcast] [--reference] ...
    sentchat bench idle [--steps 1000,10000]

saturate opens N Centrifugo-protocol (v2, JSON) WebSocket connections from several client
processes, each bound to its own loopback source address (127.0.0.2, .3, ...), at a paced
ramp rate. Connection i (user ``bench-i``) is subscribed to its personal channel
``personal:#bench-i`` (a server-side subscription, `subscribe_to_user_personal_channel`) and
to the group channel ``group:g-<i mod C>``. After a hold it publishes through the HTTP API
(`POST /api/publish`) at the given rate(s) — group publications round-robin over the C
channels, plus personal ones — and every client checks each delivery for loss, duplication
and order and records its latency. With ``--reference`` the identical load then runs against
bench/reference.py (bare websockets fan-out, same worker count) and every figure is also
given as a ratio to it. See bench/README.md.

The package, by concern:

- ``shared``   names, targets, the gateway configuration, the clients' tokens
- ``client``   the client processes (``SatClient``, ``Stats``)
- ``servers``  the targets the clients connect to (``SentchatTarget``, ``ExternalTarget``,
               ``ReferenceTarget``)
- ``publish``  the publications' schedule and the HTTP publisher
- ``run``      one run against one target (``drive``) and its figures (``summarize``)
- ``report``   ratios, target verdicts (``targets``) and the text report
- ``plots``    the PNG plots (``plot_data`` is what ``plot`` draws)
- ``cli``      the command lines of ``saturate`` and ``idle``
"""

from bench.saturate.cli import build_idle_parser, build_saturate_parser, idle, main, saturate
from bench.saturate.client import SatClient, Stats, bucket_index_np, client_process
from bench.saturate.plots import plot
from bench.saturate.publish import Schedule, publish
from bench.saturate.report import clean, compare, report, targets
from bench.saturate.run import drive, summarize
from bench.saturate.servers import ExternalTarget, ReferenceTarget, SentchatTarget, Target
from bench.saturate.shared import (
    SATURATE_CONFIG,
    TARGET_CONNECTIONS,
    TARGET_DELIVERIES,
    TARGET_FRESH_MB,
    TARGET_IDLE_KB,
    TARGET_P95_MS,
    TARGET_REF_SHARE,
    WINDOW_S,
    group_channel,
    hs256,
    personal_channel,
)

__all__ = [
    "SATURATE_CONFIG", "TARGET_CONNECTIONS", "TARGET_DELIVERIES", "TARGET_FRESH_MB", "TARGET_IDLE_KB",
    "TARGET_P95_MS", "TARGET_REF_SHARE", "WINDOW_S", "ExternalTarget", "ReferenceTarget", "SatClient",
    "Schedule", "SentchatTarget", "Stats", "Target", "build_idle_parser", "build_saturate_parser",
    "bucket_index_np", "clean", "client_process", "compare", "drive", "group_channel", "hs256", "idle",
    "main", "personal_channel", "plot", "publish", "report", "saturate", "summarize", "targets",
]
