"""bench/locustfile.py runs headless against the session gateway for a few seconds: the
WebSocket users connect and subscribe, both user kinds publish, deliveries are reported to
locust with their latency, and nothing fails. (Counts, not timings, are checked.)"""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path

from tests.conftest import API_KEY, SECRET, Server

ROOT = Path(__file__).resolve().parents[2]


async def test_locust_headless(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "SENTCHAT_TOKEN_HMAC_SECRET": SECRET, "SENTCHAT_API_KEY": API_KEY,
           "LOCUST_CHANNELS": "3", "LOCUST_CHANNEL_PREFIX": "chat:locust-"}
    prefix = tmp_path / "locust"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
        "-u", "12", "-r", "12", "-t", "5s", "--host", server.http_url, "--csv", str(prefix),
        "--only-summary", "--stop-timeout", "2", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    assert proc.returncode == 0, text[-3000:]
    connect = rows[("WS connect", "connect+subscribe")]
    assert int(connect["Request Count"]) >= 1 and int(connect["Failure Count"]) == 0, connect
    delivery = rows[("WS delivery", "chat:locust-*")]
    assert int(delivery["Request Count"]) > 0, rows.keys()
    for key, row in rows.items():
        if key[1] != "Aggregated":
            assert int(row["Failure Count"]) == 0, (key, row, text[-2000:])
