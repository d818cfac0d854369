"""The publisher: the publications' schedule, paced open-loop over pipelined HTTP/1.1
connections to the server API."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from typing import Any

import orjson

from bench.common import Histogram
from bench.saturate.servers import Target
from bench.saturate.shared import GROUP_PREFIX_B, PERSONAL_PREFIX_B


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
    for slot_conns in slots:
        for c in slot_conns:
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
