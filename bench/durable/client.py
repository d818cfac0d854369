"""The client side of the gateway layer, run in each client process: WebSocket connections
that keep ``--pipeline`` durable publish commands in flight and time every answer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections import deque
from multiprocessing.connection import Connection as Pipe
from typing import Any

import jwt
import orjson

from bench.common import (
    Histogram,
    WsClient,
    abort_all,
    bucket_index,
    client_frame,
    connect_many,
    connect_ws,
    next_message,
    pipe_inbox,
    run_client_process,
)
from bench.durable.shared import cpu_self


class LoadState:
    """One client process's counters; a phase resets the per-phase ones."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.pipeline: int = cfg["pipeline"]
        self.pad = b"x" * cfg["pad"]
        self.channels: list[bytes] = []
        self.cursor = 0
        self.running = False
        self.win_start = 0
        self.win_end = 0
        self.connect = Histogram()
        self.unanswered_closed = 0
        self.ready = 0
        self.failed: dict[str, int] = {}
        self.reset_phase()

    def reset_phase(self) -> None:
        self.latency = Histogram()
        self.sent = 0
        self.ok = 0
        self.win_ok = 0
        self.errors: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.protocol_errors = 0
        self.other_pushes = 0
        self.pings = 0
        self.cpu_win: list[float] = []
        self.outstanding = 0  # publishes sent and not answered, over all connections
        self.stopped = asyncio.Event()
        self.drained = asyncio.Event()

    def answered(self, n: int = 1) -> None:
        self.outstanding -= n
        if self.outstanding <= 0 and not self.running:
            self.drained.set()

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


# A successful publish reply's tail: {"id":N,"publish":{}}.
PUBLISH_OK = b',"publish":{}}'


class Publisher(WsClient):
    """One connection (bench/common.py's WsClient) keeping ``pipeline`` publish commands in
    flight. Replies arrive in command order."""

    __slots__ = ("st", "inflight", "next_id", "tag", "__weakref__")

    def __init__(self, st: LoadState, tag: int, host_header: str, token: str,
                 ready: asyncio.Future[None]) -> None:
        super().__init__(host_header, ready, client_frame(
            orjson.dumps({"id": 1, "connect": {"token": token, "name": "sentchat-bench"}})))
        self.st = st
        self.inflight: deque[tuple[int, int]] = deque()  # (command id, send time ns)
        self.next_id = 1
        self.tag = str(tag).encode()

    def read_frames(self, now: int) -> None:
        super().read_frames(now)
        self.refill()

    def note_ping(self) -> None:
        self.st.pings += 1

    def note_protocol_error(self) -> None:
        self.st.protocol_errors += 1

    def refill(self) -> None:
        """Top the connection up to ``pipeline`` publishes in flight, in one frame."""
        st = self.st
        if not st.running or self.closing:
            return
        missing = st.pipeline - len(self.inflight)
        if missing <= 0:
            return
        now = time.time_ns()
        channels = st.channels
        nch = len(channels)
        parts = []
        for _ in range(missing):
            self.next_id += 1
            rid = self.next_id
            ch = channels[st.cursor]
            st.cursor = (st.cursor + 1) % nch
            parts.append(b'{"id":%d,"publish":{"channel":"%b","data":{"u":"%b-%d","p":"%b"}}}'
                         % (rid, ch, self.tag, rid, st.pad))
            self.inflight.append((rid, now))
        st.sent += missing
        st.outstanding += missing
        assert self.transport is not None  # noqa: S101 - only connected publishers refill
        self.transport.write(client_frame(b"\n".join(parts)))

    def on_text(self, payload: bytes, now: int) -> None:
        st = self.st
        for line in payload.split(b"\n") if b"\n" in payload else (payload,):
            if line == b"{}":  # server ping: answer with an empty command
                self.pong()
                continue
            if line.startswith(b'{"id":') and line.endswith(PUBLISH_OK):
                # The common reply, read by position (the clients share the cores with the
                # gateway: every microsecond here is one the gateway does not get).
                rid, err = int(line[6:-len(PUBLISH_OK)]), None
            else:
                try:
                    msg = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.protocol_error("bad JSON")
                    return
                rid = msg.get("id")
                if not rid:
                    st.other_pushes += 1
                    continue
                err = msg.get("error")
            if rid == 1:
                if self.ready.done():
                    self.protocol_error("second connect reply")
                    return
                if err is not None:
                    self.end(f"connect error {err.get('code')} {err.get('message', '')}")
                    return
                st.connect.record(int((time.perf_counter() - self.t0) * 1e6))
                self.ready.set_result(None)
                continue
            inflight = self.inflight
            if not inflight or inflight[0][0] != rid:
                self.protocol_error(f"reply {rid} out of order")
                return
            sent = inflight.popleft()[1]
            st.answered()
            if err is not None:
                st.count(st.errors, f"{err.get('code')} {err.get('message', '')}")
                continue
            st.ok += 1
            if st.win_start <= now < st.win_end:
                st.win_ok += 1
                lat = (now - sent) // 1000
                h = st.latency
                h.counts[bucket_index(lat)] += 1
                h.n += 1
                h.total += lat
                if lat > h.max:
                    h.max = lat

    def on_gone(self, reason: str) -> None:
        self.st.count(self.st.closed, reason)
        # Publishes in flight on a dead connection will never be answered.
        self.st.unanswered_closed += len(self.inflight)
        self.st.answered(len(self.inflight))
        self.inflight.clear()


async def _connect_one(st: LoadState, cfg: dict[str, Any], source: str, tag: int,
                       conns: list[Publisher]) -> None:
    token = jwt.encode({"sub": f"bench-{tag}"}, cfg["secret"], algorithm="HS256")
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    proto = Publisher(st, tag, f"{cfg['host']}:{cfg['port']}", token, ready)
    why = await connect_ws(proto, cfg["host"], cfg["port"], source, cfg["timeout"])
    if why is not None:
        st.count(st.failed, why)
        return
    conns.append(proto)
    st.ready += 1


def _at(loop: asyncio.AbstractEventLoop, wall_ns: int, fn: Any) -> asyncio.TimerHandle:
    """Call ``fn`` when the wall clock reaches ``wall_ns``."""
    return loop.call_later(max(0.0, (wall_ns - time.time_ns()) / 1e9), fn)


async def _run_phase(st: LoadState, conns: list[Publisher], phase: dict[str, Any]) -> dict[str, Any]:
    """Publish from ``start`` to ``stop`` (wall-clock ns), count the window, then drain."""
    loop = asyncio.get_running_loop()
    st.reset_phase()
    st.channels = [c.encode() for c in phase["channels"]]
    st.cursor = (phase["proc_index"] * len(st.channels)) // max(1, phase["procs"])
    st.win_start, st.win_end = phase["win_start"], phase["win_end"]

    def start() -> None:
        st.running = True
        for c in conns:
            c.refill()

    def stop() -> None:
        st.cpu_win.append(cpu_self())
        st.running = False
        st.stopped.set()
        if st.outstanding <= 0:
            st.drained.set()

    _at(loop, phase["start"], start)
    _at(loop, phase["win_start"], lambda: st.cpu_win.append(cpu_self()))
    _at(loop, phase["win_end"], stop)
    await st.stopped.wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(st.drained.wait(), phase["drain_s"])
    unanswered = sum(len(c.inflight) for c in conns) + st.unanswered_closed
    st.unanswered_closed = 0
    return {"sent": st.sent, "ok": st.ok, "win_ok": st.win_ok, "errors": st.errors,
            "unanswered": unanswered, "closed": st.closed, "protocol_errors": st.protocol_errors,
            "other_pushes": st.other_pushes, "pings": st.pings,
            "latency": st.latency.to_dict(),
            "cpu_window_s": st.cpu_win[1] - st.cpu_win[0] if len(st.cpu_win) == 2 else None,
            "open": sum(1 for c in conns if not c.closing)}


async def _client_main(index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    loop = asyncio.get_running_loop()
    inbox = pipe_inbox(pipe)
    st = LoadState(cfg)
    source = f"127.0.0.{2 + index}"
    count = cfg["counts"][index]
    first = sum(cfg["counts"][:index])
    conns: list[Publisher] = []
    pipe.send(("started", os.getpid()))

    await next_message(inbox)  # "connect"
    started = time.perf_counter()
    await connect_many(count, lambda i: _connect_one(st, cfg, source, first + i, conns),
                       cfg["concurrency"])
    gc.collect()
    gc.freeze()
    pipe.send(("ready", {"ready": st.ready, "failed": st.failed,
                         "connect_s": time.perf_counter() - started,
                         "connect_hist": st.connect.to_dict()}))
    while True:
        msg = await next_message(inbox)
        if msg[0] != "phase":
            break
        result = await _run_phase(st, conns, msg[1])
        result["source"] = source
        result["connections"] = len(conns)
        result["cpu_s"] = cpu_self()
        pipe.send(("phase", result))
    await abort_all(conns)
    loop.remove_reader(pipe.fileno())


def client_process(index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    """Entry point of a publisher client process."""
    run_client_process(_client_main, index, cfg, pipe)
