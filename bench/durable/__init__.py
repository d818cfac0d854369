"""Durable publish benchmark: sustained publications/s into PostgreSQL-backed channels.

    python -m bench.durable [--layer both] [--channels 1,1000] [--duration 10] ...

Two layers, each for one hot channel and for many channels:

- ``gateway``: ``sentchat serve`` (one worker) with a durable namespace ``log:`` and
  SENTCHAT_POSTGRES_DSN pointing at the benchmark's PostgreSQL; client processes speak the
  Centrifugo JSON protocol over WebSocket, each connection keeping ``--pipeline`` publish
  commands in flight (a durable publish is answered only after its batch committed).
- ``store``: ``PublicationStore.publish`` called by ``--publishers`` concurrent tasks in this
  process, no WebSocket.

Each (layer, channels) run gets a fresh database on one PostgreSQL server (embedded, under
/tmp, unless ``--dsn``); rows per transaction come from ``pg_stat_database.xact_commit`` and
row counts, and every run ends by checking that the rows equal the acknowledged
publications. See bench/README.md for how to read the output.

The package, by concern:

- ``shared``   targets, limits, the gateway configuration, machine CPU jiffies
- ``client``   the gateway layer's client processes (``Publisher``)
- ``servers``  PostgreSQL (``Postgres``), its statistics and integrity check, the gateway
- ``run``      the gateway and store layers' runs and the invocation's runs (``run_all``)
- ``report``   the text report (``report_run``, ``summary_table``)
- ``cli``      ``python -m bench.durable`` (``build_parser``, ``main``)
"""

from bench.durable.cli import build_parser, main
from bench.durable.client import Publisher, client_process
from bench.durable.report import report_run, summary_table
from bench.durable.run import run_all, run_gateway, run_store
from bench.durable.servers import DurableGateway, Postgres, cpu_delta, verify
from bench.durable.shared import CONFIG_TOML, NAMESPACE, TARGET_P95_MS, TARGET_RATE

__all__ = [
    "CONFIG_TOML", "NAMESPACE", "TARGET_P95_MS", "TARGET_RATE", "DurableGateway", "Postgres", "Publisher",
    "build_parser", "client_process", "cpu_delta", "main", "report_run", "run_all", "run_gateway",
    "run_store", "summary_table", "verify",
]
