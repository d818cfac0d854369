"""Pieces shared by the benchmarks: a compact latency histogram, the gateway under test as a
subprocess, /proc readings and a description of the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- histogram ----------------------------------------------------------------------------

# Log-linear buckets over integer microseconds, HDR-style: values below 128 µs are exact,
# above that each power-of-two range is split into 64 buckets (relative error < 1.6 %).
SUB_BITS = 7
HALF = 1 << (SUB_BITS - 1)  # 64
NBUCKETS = (40 + 1) * HALF  # up to 2**40 µs (~12 days)


def bucket_index(v: int) -> int:
    """Bucket of ``v`` µs (negative values count as 0)."""
    if v < 0:
        return 0
    bl = v.bit_length()
    if bl <= SUB_BITS:
        return v
    s = bl - SUB_BITS
    return min((s << (SUB_BITS - 1)) + (v >> s), NBUCKETS - 1)


def bucket_bounds(idx: int) -> tuple[int, int]:
    """[low, high) of a bucket in µs."""
    if idx < 2 * HALF:
        return idx, idx + 1
    s = (idx >> (SUB_BITS - 1)) - 1
    m = idx - (s << (SUB_BITS - 1))
    return m << s, (m + 1) << s


class Histogram:
    """Counts of integer microsecond values; cheap to record, merge and ship between processes.

    Hot loops may update ``counts`` directly with :func:`bucket_index` and then call
    :meth:`note` for the exact count/sum/max.
    """

    __slots__ = ("counts", "n", "total", "max", "min")

    def __init__(self) -> None:
        self.counts = [0] * NBUCKETS
        self.n = 0
        self.total = 0
        self.max = 0
        self.min = -1

    def record(self, v: int) -> None:
        self.counts[bucket_index(v)] += 1
        self.n += 1
        self.total += v
        if v > self.max:
            self.max = v
        if self.min < 0 or v < self.min:
            self.min = v

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)
        if other.min >= 0 and (self.min < 0 or other.min < self.min):
            self.min = other.min

    def percentile(self, p: float) -> int:
        """Upper edge of the bucket holding the p-th percentile (capped at the exact max)."""
        if self.n == 0:
            return 0
        rank = max(1, -(-int(p * self.n * 1000) // 100000))  # ceil(p/100 * n) without floats
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(bucket_bounds(i)[1] - 1 if i >= 2 * HALF else i, self.max)
        return self.max

    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Sparse form: {"buckets": {index: count}, ...}."""
        return {"n": self.n, "total": self.total, "max": self.max, "min": self.min,
                "buckets": {str(i): c for i, c in enumerate(self.counts) if c}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        h = cls()
        h.n, h.total, h.max, h.min = d["n"], d["total"], d["max"], d["min"]
        for i, c in d["buckets"].items():
            h.counts[int(i)] = c
        return h

    def summary_ms(self) -> dict[str, float]:
        def ms(us: float) -> float:
            return round(us / 1000, 3)

        return {"count": self.n, "p50": ms(self.percentile(50)), "p95": ms(self.percentile(95)),
                "p99": ms(self.percentile(99)), "max": ms(self.max), "mean": ms(self.mean())}


# ---- /proc -------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included) from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # the name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = line.split(":", 1)[1].strip()
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total": mem_total,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "hostname": socket.gethostname(),
    }
    versions = {}
    for mod in ("uvloop", "websockets", "orjson", "msgspec", "jwt"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    info["packages"] = versions
    git = shutil.which("git")
    if git:
        with contextlib.suppress(Exception):
            head = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=5).stdout.strip()
            dirty = subprocess.run([git, "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            info["git"] = head + ("-dirty" if dirty else "")
    return info


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---- the gateway under test -----------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the forked child before exec: SIGTERM it if the benchmark process dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class GatewayProcess:
    """`sentchat serve` on a loopback port with fresh secrets and a temporary data dir."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", log_level: str = "WARNING",
                 extra_env: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.secret = secrets.token_urlsafe(32)
        self.api_key = secrets.token_urlsafe(24)
        self.log_level = log_level
        self.extra_env = extra_env or {}
        self.tmp = tempfile.TemporaryDirectory(prefix="sentchat-bench-")
        self.log_path = Path(self.tmp.name) / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.killed = False

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101
        return self.proc.pid

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("sentchat")
        base = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
        return [*base, "serve", "--host", self.host, "--port", str(self.port),
                "--workers", "1", "--log-level", self.log_level]

    def start(self, timeout: float) -> None:
        env = dict(os.environ)
        env.update({"SENTCHAT_TOKEN_HMAC_SECRET": self.secret, "SENTCHAT_API_KEY": self.api_key,
                    "SENTCHAT_DATA_DIR": self.tmp.name, **self.extra_env})
        env.pop("SENTCHAT_CONFIG", None)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.port}/health"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway not healthy within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        """The gateway's Prometheus counters (unlabelled ones and `name{labels}` keys)."""
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    key, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        out[key] = float(value)
        return out

    def stop(self, grace: float = 10.0) -> float:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns seconds it took to exit."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.killed = True
            proc.kill()
            proc.wait(5)
        self.exit_code = proc.returncode
        return time.monotonic() - started

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self, limit: int = 20) -> tuple[int, list[str]]:
        """Count of WARNING/ERROR/CRITICAL/Traceback lines in the server log, and the first few."""
        found: list[str] = []
        n = 0
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0, []
        for line in text.splitlines():
            if any(k in line for k in (" ERROR ", " CRITICAL ", " WARNING ", "Traceback")):
                n += 1
                if len(found) < limit:
                    found.append(line[:300])
        return n, found

    def cleanup(self) -> None:
        self.stop()
        self.tmp.cleanup()
