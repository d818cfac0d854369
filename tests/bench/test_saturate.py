"""`sentchat bench saturate` as a behaviour check: every delivery arrives exactly once, in
order, on its own channel (no timing is asserted).

The first test loads the session's in-process gateway factory (tests/conftest.py) through
`--url`, so the bench runs as a subprocess while the pytest loop serves; the second lets the
bench start `sentchat serve --workers 2` and the bare reference server itself, in broadcast
mode, and checks the JSON and PNG outputs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.saturate import SATURATE_CONFIG
from tests.conftest import API_KEY, SECRET, Server

ROOT = Path(__file__).resolve().parents[2]
# Generous bounds: the machine is shared; these only stop a hung run.
RUN_TIMEOUT = 240


async def bench(*args: str, timeout: float = RUN_TIMEOUT, command: str = "saturate") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "bench", command, *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def assert_clean(run: dict[str, Any], connections: int) -> None:
    c, d = run["connections"], run["deliveries"]
    assert c["held"] == connections, c
    assert not c["failed"] and not c["closed_during_run"], c
    assert run["publish"]["failed"] == 0, run["publish"]
    assert d["expected"] > 0 and d["received"] == d["expected"], d
    assert (d["lost"], d["duplicated"], d["reordered"], d["misrouted"]) == (0, 0, 0, 0), d


async def test_small_saturation_loses_nothing(make_server: Callable[..., Awaitable[Server]],
                                              tmp_path: Path) -> None:
    """2,000 connections (personal + group channel each) from 2 client processes on two
    source addresses; group and personal publications through the HTTP API."""
    settings = tomllib.loads(SATURATE_CONFIG)
    settings["client"]["token"] = {"hmac_secret_key": SECRET}
    settings["http_api"] = {"key": API_KEY}
    srv = await make_server(settings)
    out = tmp_path / "saturate.json"
    rc, text = await bench("--url", f"ws://127.0.0.1:{srv.port}", "--secret", SECRET, "--api-key", API_KEY,
                           "--connections", "2000", "--client-procs", "2", "--channels", "40",
                           "--rate", "100", "--personal-rate", "50", "--duration", "3", "--hold", "0.5",
                           "--ramp-rate", "2000", "--quiet", "--no-plots", "--json-out", str(out))
    assert rc == 0, text
    result = json.loads(out.read_text())
    run = result["runs"]["sentchat"]
    assert_clean(run, 2000)
    # 300 group publications to 50 subscribers each + 150 personal ones, one subscriber each
    assert run["deliveries"]["expected"] == 300 * 50 + 150
    # the phase's place on the series' time base (the plots' axis), on whole seconds
    [phase] = run["phases"]
    assert phase["end_s"] - phase["start_s"] == 3 and phase["start_s"] == int(phase["start_s"]) > 0
    sources = {s for p in run["clients"]["per_process"] for s in p["sources"]}
    assert len(sources) == 2
    # the server's processes were found by its port: this pytest process
    assert run["server"]["worker_processes"] == 1


async def test_broadcast_with_workers_and_reference(tmp_path: Path) -> None:
    """The bench starts `sentchat serve --workers 2` and the bare reference (2 workers):
    one channel with every connection, each publication reaches all of them once."""
    out = tmp_path / "broadcast.json"
    rc, text = await bench("--workers", "2", "--connections", "600", "--client-procs", "2",
                           "--broadcast", "--broadcasts", "3", "--broadcast-interval", "0.5",
                           "--hold", "0.5", "--ramp-rate", "2000", "--reference", "--quiet",
                           "--json-out", str(out))
    assert rc == 0, text
    result = json.loads(out.read_text())
    for name in ("sentchat", "reference"):
        run = result["runs"][name]
        assert_clean(run, 600)
        b = run["broadcast"]
        assert b["complete"] == 3 and all(p["delivered"] == 600 for p in b["publications"]), b
    assert result["runs"]["sentchat"]["server"]["worker_processes"] == 2
    assert result["ratios"]["broadcast_time_to_all"] is not None
    assert len(result["plots"]) == 3 and all(Path(p).stat().st_size > 0 for p in result["plots"])


async def test_idle_measures_fresh_workers_and_idle_connections(tmp_path: Path) -> None:
    """`sentchat bench idle` end to end, small: both fresh-worker readings (the embedded
    defaults start an embedded PostgreSQL) and one step of idle connections."""
    out = tmp_path / "idle.json"
    rc, text = await bench("--steps", "200", "--client-procs", "1", "--hold", "1", "--settle", "0.5",
                           "--json-out", str(out), command="idle")
    assert rc == 0, text
    result = json.loads(out.read_text())
    assert [f["rss_kb"] > 0 for f in result["fresh"]] == [True, True], result["fresh"]
    [level] = result["connections"]
    assert (level["requested"], level["held"], level["failed"]) == (200, 200, {}), level
    assert level["rss_kb_per_connection"] > 0


async def test_bad_options_are_refused_by_name() -> None:
    rc, text = await bench("--client-tick-ms", "-1", timeout=60)
    assert rc != 0 and "--client-tick-ms must be 0 (no pacing) or more" in text, text
    rc, text = await bench("--connections", "0", timeout=60)
    assert rc != 0 and "--connections must be positive" in text, text
