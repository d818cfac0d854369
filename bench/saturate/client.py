"""The client side, run in each client process: one connection per user on its group and
personal channels, every delivery checked for loss, duplication and order and timed."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from array import array
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection as Pipe
from typing import Any

import orjson

try:  # the bench extra's matplotlib brings numpy; without it deliveries are absorbed in Python
    import numpy as np
except ImportError:  # pragma: no cover
    # a module or None, which mypy cannot spell for a module: users test `np is None`
    np = None  # type: ignore[assignment]

from bench.common import (
    NBUCKETS,
    PONG,
    SUB_BITS,
    Histogram,
    WsClient,
    abort_all,
    client_frame,
    connect_many,
    connect_ws,
    pipe_inbox,
    rss_kb,
    run_client_process,
    start_pacing,
)
from bench.saturate.shared import USER_PREFIX, group_channel, hs256, personal_channel


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
            win = self.windows.get(wk)
            if win is None:
                win = self.windows[wk] = Histogram()
            _fold(win, b[sel], lat[sel])
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
                assert self.transport is not None  # noqa: S101 - set in connection_made, before any data
                self.transport.write(PONG)
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

            def connect_nth(i: int, base: int = next_user) -> Awaitable[None]:
                return connect_one(base + i)
            await connect_many(todo, connect_nth, cfg["concurrency"], rate)
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
