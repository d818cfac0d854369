"""`python -m bench.chat --dead-app` at a tiny scale against the session's PostgreSQL: the app
is registered through the real `/v1/apps` API, its events URL passes the url_verification
handshake and then stops, and the sends still succeed while the app's events pile up in the
outbox (no timing is asserted: the figures are in bench/README.md)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def test_dead_app_flag_registers_a_failing_app_and_sends_stay_clean(pg_dsn: str, tmp_path: Path) -> None:
    out_json = tmp_path / "chat.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.chat", "--members", "12", "--history", "500", "--warmup", "0.5",
        "--duration", "2", "--rate", "10", "--settle", "1", "--list-requests", "10",
        "--list-concurrency", "1", "--dead-app", "--dsn", pg_dsn, "--json-out", str(out_json),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    result = json.loads(out_json.read_text())
    send = result["send"]
    assert send["integrity"]["ok"] and send["acknowledged"] == send["sent"] > 0
    dead = result["dead_app"]
    assert dead["app_id"].startswith("A") and dead["channel"] == result["channels"]["fanout"]
    ob = dead["outbox_after_sends"]
    # One event per acknowledged message, none delivered: the URL stopped after the handshake.
    assert ob["delivered"] == 0
    assert ob["pending"] + ob["dead"] == send["acknowledged"]
    assert ob["attempts"] >= 1 and "Connect" in ob["last_error"]
    assert "outbox after the sends" in text
