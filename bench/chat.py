"""Chat product benchmark: ``messages.send`` acknowledgement and fan-out to a 1,000-member
channel, and ``messages.list`` on a channel holding 1,000,000 messages.

    python -m bench.chat [--members 1000] [--rate 20] [--duration 30] [--history 1000000] ...

What runs, all on loopback:

1. An embedded PostgreSQL (or ``--dsn``) with a fresh database, and ``sentchat serve`` (one
   worker) on the embedded default configuration (gateway/defaults.toml: chat enabled,
   durable ``chat`` namespace with ``acl = "chat"``), pointed at it.
2. Setup through the product's own API: ``--members`` users created with the admin HTTP
   API (``PUT /v1/admin/users/{id}``, X-API-Key), a public channel created by the first
   user (``POST /v1/channels``) and every other user invited in batches of 100
   (``POST /v1/channels/{id}/invite``). The membership rows are the service's own.
3. History: a second channel, created through the API, then filled with ``--history``
   messages by one ``INSERT ... SELECT generate_series`` straight into ``chat_messages``
   (plus a reaction on every 20th message). This bulk load bypasses the service (no
   audit records, no events): fine for a read benchmark, and the only way to get a
   million rows in seconds. ``ANALYZE`` follows, as autovacuum would do after such a load.
4. Fan-out: one WebSocket connection per member (raw Centrifugo JSON protocol, spread over
   ``--client-procs`` processes) subscribed to ``chat:<id>``; ``--senders`` extra
   connections (the first members' second devices) call ``messages.send`` over RPC, open
   loop, at ``--rate`` messages/s in all. Measured: acknowledgement latency (RPC sent ->
   RPC reply) and delivery latency (RPC sent -> ``message.created`` publication received,
   one sample per subscriber and message); every subscriber must receive every
   acknowledged message exactly once.
5. Reads: ``messages.list`` through RPC and ``GET /v1/channels/{id}/messages`` over HTTP
   keep-alive, ``--list-requests`` each, closed loop at each ``--list-concurrency``,
   rotating over the latest page, ``before`` a random id and ``after`` a random id (50
   messages a page, the default).

The target (issue 5): both P95 < 50 ms on the 2-vCPU machine. Clients, gateway and
PostgreSQL share its cores, so the figures include their contention. Prints the figures
and writes them to bench/results/chat-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import orjson
import uvloop

from bench.common import (
    ROOT,
    GatewayProcess,
    Histogram,
    WsClient,
    abort_all,
    client_frame,
    collect_from_pipes,
    cpu_seconds,
    free_port,
    machine_info,
    next_message,
    open_ws,
    pipe_inbox,
    run_client_process,
    split_evenly,
)
from bench.durable import Postgres, cpu_delta

TARGET_P95_MS = 50.0
DEFAULTS_TOML = ROOT / "gateway" / "defaults.toml"
PAGE = 50
"""messages.list page size: the API's default."""


def user_id(i: int) -> str:
    """The i-th benchmark user."""
    return f"u{i:05d}"


def token_for(secret: str, user: str) -> str:
    return jwt.encode({"sub": user}, secret, algorithm="HS256")


# ---- a minimal Centrifugo JSON-protocol client over raw WebSocket framing -----------------


class RpcClient(WsClient):
    """One connection (bench/common.py's WsClient) speaking the Centrifugo client protocol
    (JSON): commands with futures for their replies, pushes handed to ``on_push`` with their
    arrival time."""

    def __init__(self, host_header: str, token: str,
                 on_push: Callable[[dict[str, Any], int], None] | None = None) -> None:
        super().__init__(host_header, asyncio.get_running_loop().create_future())
        self.token = token
        self.on_push = on_push
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pings = 0

    def on_upgraded(self) -> None:
        fut = self.command({"connect": {"token": self.token, "name": "sentchat-bench-chat"}})
        fut.add_done_callback(self._connected)

    def note_ping(self) -> None:
        self.pings += 1

    def _connected(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        if self.ready.done():
            return
        exc = fut.exception()
        if exc is not None:
            self.ready.set_exception(exc)
        elif "error" in fut.result():
            self.ready.set_exception(ConnectionError(f"connect refused: {fut.result()['error']}"))
        else:
            self.ready.set_result(fut.result())

    def command(self, body: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send one command; the future gets its reply (``error`` included, not raised)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.closing or self.transport is None:
            fut.set_exception(ConnectionError(self.end_reason or "not connected"))
            return fut
        self.next_id += 1
        self.waiting[self.next_id] = fut
        self.transport.write(client_frame(orjson.dumps({"id": self.next_id, **body})))
        return fut

    async def rpc(self, method: str, data: dict[str, Any]) -> dict[str, Any]:
        """An RPC call's result data; RuntimeError on an error reply."""
        reply = await self.command({"rpc": {"method": method, "data": data}})
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("rpc", {}).get("data", {})

    def on_text(self, payload: bytes, now: int) -> None:
        for line in payload.split(b"\n") if b"\n" in payload else (payload,):
            if line == b"{}":  # the server's ping: answered with an empty command
                self.pong()
                continue
            msg = orjson.loads(line)
            rid = msg.get("id")
            if rid:
                fut = self.waiting.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif self.on_push is not None and "push" in msg:
                self.on_push(msg["push"], now)

    def end(self, reason: str, *, abort: bool = True) -> None:
        super().end(reason, abort=abort)
        self._fail_waiting(reason)

    def abort(self) -> None:
        super().abort()
        self._fail_waiting(self.end_reason or "closed by the benchmark")

    def _fail_waiting(self, reason: str) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        self.waiting.clear()

    def close(self) -> None:
        self.abort()


async def ws_open(host: str, port: int, token: str,
                  on_push: Callable[[dict[str, Any], int], None] | None = None,
                  limit_s: float = 30.0) -> RpcClient:
    """A connected (Centrifugo ``connect`` answered) client, within ``limit_s`` seconds."""
    proto = RpcClient(f"{host}:{port}", token, on_push)
    try:
        await open_ws(proto, host, port, None, limit_s)
        await asyncio.wait_for(proto.ready, limit_s)
    except BaseException:
        proto.close()
        raise
    return proto


# ---- a minimal HTTP/1.1 keep-alive client --------------------------------------------------


class HttpClient:
    """One keep-alive HTTP/1.1 connection, one request at a time (Content-Length bodies)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: Any = None) -> tuple[int, Any]:
        """Status and decoded JSON body."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.reader is not None  # noqa: S101
        data = b"" if body is None else orjson.dumps(body)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(data)}", "Connection: keep-alive"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        length = 0
        close = False
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, orjson.loads(payload) if payload else None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ---- subscriber processes -------------------------------------------------------------------


class Deliveries:
    """What one client process's subscribers received: per connection a byte per message
    sequence number (how often it arrived), and the delivery latency histogram."""

    def __init__(self, count: int, max_seq: int) -> None:
        self.seen = [bytearray(max_seq + 1) for _ in range(count)]
        self.latency = Histogram()
        self.other: dict[str, int] = {}
        self.personal = 0
        self.bad = 0

    def handler(self, index: int, channel: str) -> Callable[[dict[str, Any], int], None]:
        """The push callback of connection ``index``."""
        seen = self.seen[index]

        def on_push(push: dict[str, Any], now: int) -> None:
            pub = push.get("pub")
            if pub is None:
                key = next(iter(push.keys() - {"channel"}), "?")
                self.other[key] = self.other.get(key, 0) + 1
                return
            if push.get("channel") != channel:
                self.personal += 1  # the personal channel: notifications, membership
                return
            data = pub.get("data") or {}
            if data.get("type") != "message.created":
                t = str(data.get("type"))
                self.other[t] = self.other.get(t, 0) + 1
                return
            cmid = data["message"].get("client_msg_id") or ""
            # client_msg_id = "b<seq>.<send time ns>", written by the sender.
            try:
                seq_s, sent_s = cmid[1:].split(".")
                seq, sent = int(seq_s), int(sent_s)
            except ValueError:
                self.bad += 1
                return
            if seq >= len(seen):
                self.bad += 1
                return
            if seen[seq] < 255:
                seen[seq] += 1
            self.latency.record((now - sent) // 1000)

        return on_push


async def _subscriber_main(index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    loop = asyncio.get_running_loop()
    inbox = pipe_inbox(pipe)

    users: list[str] = cfg["users"][index]
    channel: str = cfg["channel"]
    deliveries = Deliveries(len(users), cfg["max_seq"])
    conns: list[RpcClient | None] = [None] * len(users)
    failures: dict[str, int] = {}
    sem = asyncio.Semaphore(cfg["concurrency"])

    async def one(i: int) -> None:
        async with sem:
            try:
                c = await ws_open(cfg["host"], cfg["port"], token_for(cfg["secret"], users[i]),
                                  deliveries.handler(i, channel), cfg["timeout"])
                reply = await asyncio.wait_for(c.command({"subscribe": {"channel": channel}}), cfg["timeout"])
            except (OSError, TimeoutError, ConnectionError) as exc:
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                failures[key] = failures.get(key, 0) + 1
                return
            if "error" in reply:
                key = f"subscribe error {reply['error']}"
                failures[key] = failures.get(key, 0) + 1
                c.close()
                return
            conns[i] = c

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(users))))
    pipe.send(("ready", {"subscribed": sum(1 for c in conns if c is not None), "failures": failures,
                         "seconds": round(time.perf_counter() - started, 2)}))
    msg = await next_message(inbox)
    while msg[0] == "check":
        acked: list[int] = msg[1]
        missing = duplicated = unexpected = 0
        conns_missing = 0
        acked_set = set(acked)
        for i, seen in enumerate(deliveries.seen):
            if conns[i] is None:
                continue
            miss = sum(1 for s in acked if seen[s] == 0)
            missing += miss
            conns_missing += 1 if miss else 0
            duplicated += sum(n - 1 for n in seen if n > 1)
            unexpected += sum(1 for s, n in enumerate(seen) if n and s not in acked_set)
        pipe.send(("check", {
            "missing": missing, "connections_missing": conns_missing, "duplicated": duplicated,
            "unexpected": unexpected, "received": deliveries.latency.n,
            "latency": deliveries.latency.to_dict(), "other_events": deliveries.other,
            "personal_pushes": deliveries.personal, "unparsable": deliveries.bad,
            "closed": sum(1 for c in conns if c is not None and c.end_reason is not None),
            "pings": sum(c.pings for c in conns if c is not None)}))
        msg = await next_message(inbox)
    await abort_all(conns)
    loop.remove_reader(pipe.fileno())


def subscriber_process(index: int, cfg: dict[str, Any], pipe: Pipe) -> None:
    """Entry point of a client process holding subscriber connections."""
    run_client_process(_subscriber_main, index, cfg, pipe)


# ---- setup --------------------------------------------------------------------------------


async def create_users(gw: GatewayProcess, count: int, parallel: int = 8) -> float:
    """``count`` users through the admin HTTP API; returns seconds taken."""
    started = time.perf_counter()
    queue = list(range(count))
    headers = {"X-API-Key": gw.api_key}

    async def worker() -> None:
        http = HttpClient(gw.host, gw.port)
        try:
            while queue:
                i = queue.pop()
                status, body = await http.request("PUT", f"/v1/admin/users/{user_id(i)}", headers,
                                                  {"display_name": f"Bench User {i}", "title": "Engineer"})
                if status != 200:
                    raise RuntimeError(f"admin user upsert: {status} {body}")
        finally:
            http.close()

    await asyncio.gather(*(worker() for _ in range(parallel)))
    return time.perf_counter() - started


async def create_channel(gw: GatewayProcess, owner: str, name: str, members: list[str]) -> tuple[str, float]:
    """A public channel created by ``owner``, the others invited 100 at a time through the
    HTTP API (the service's own membership rows); returns its id and seconds taken."""
    started = time.perf_counter()
    http = HttpClient(gw.host, gw.port)
    auth = {"Authorization": f"Bearer {token_for(gw.secret, owner)}"}
    try:
        status, body = await http.request("POST", "/v1/channels", auth, {"name": name})
        if status != 201:
            raise RuntimeError(f"channels.create: {status} {body}")
        channel_id: str = body["channel"]["id"]
        others = [m for m in members if m != owner]
        for i in range(0, len(others), 100):
            status, body = await http.request("POST", f"/v1/channels/{channel_id}/invite", auth,
                                              {"user_ids": others[i:i + 100]})
            if status != 200:
                raise RuntimeError(f"channels.invite: {status} {body}")
    finally:
        http.close()
    return channel_id, time.perf_counter() - started


class DeadEventsUrl:
    """``--dead-app``'s events URL: a local HTTP server that answers Slack's
    ``url_verification`` challenge once (so ``PATCH /v1/apps/{id}`` accepts the URL) and
    then stops listening: every event delivery after it is refused, and the outbox retries
    it with backoff until it is dead-lettered."""

    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.challenges = 0
        self.stopped = asyncio.get_running_loop().create_future()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}/slack/events"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = orjson.loads(await reader.readexactly(length)) if length else {}
            if isinstance(body, dict) and body.get("type") == "url_verification":
                answer = orjson.dumps({"challenge": body.get("challenge")})
                self.challenges += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             + f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer)
            else:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
        if self.challenges and not self.stopped.done():
            self.stop()
            self.stopped.set_result(None)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()  # stops listening: later connections are refused
            self.server = None


async def register_dead_app(gw: GatewayProcess, channel_id: str) -> tuple[str, DeadEventsUrl]:
    """``--dead-app``: an app registered through ``POST /v1/apps`` (X-API-Key) in
    ``channel_id`` (its bot joins it) for ``message`` events, its events URL set with
    ``PATCH /v1/apps/{id}`` (the url_verification handshake), after which that URL stops
    answering. Returns the app id and the (stopped) server."""
    dead = DeadEventsUrl()
    url = await dead.start()
    http = HttpClient(gw.host, gw.port)
    headers = {"X-API-Key": gw.api_key}
    try:
        status, body = await http.request("POST", "/v1/apps", headers, {
            "name": "bench-dead-app", "channels": [channel_id], "events": ["message"]})
        if status != 201:
            raise RuntimeError(f"POST /v1/apps: {status} {body}")
        app_id: str = body["app"]["id"]
        status, body = await http.request("PATCH", f"/v1/apps/{app_id}", headers, {"events_url": url})
        if status != 200:
            raise RuntimeError(f"PATCH /v1/apps/{app_id} events_url: {status} {body}")
        await asyncio.wait_for(dead.stopped, 5)
    finally:
        http.close()
        dead.stop()
    return app_id, dead


async def outbox_states(dsn: str, app_id: str) -> dict[str, Any]:
    """The app's ``integ_outbox`` rows by state, and the delivery attempts made."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT state, count(*) AS n, coalesce(sum(attempts), 0) AS attempts,
                      max(last_error) AS last_error
               FROM integ_outbox WHERE app_id = $1 GROUP BY state""", app_id)
    finally:
        await conn.close()
    out: dict[str, Any] = {"pending": 0, "delivered": 0, "dead": 0, "attempts": 0, "last_error": ""}
    for r in rows:
        out[r["state"]] = r["n"]
        out["attempts"] += r["attempts"]
        out["last_error"] = out["last_error"] or r["last_error"] or ""
    return out


async def bulk_load(dsn: str, channel_id: str, count: int, authors: list[str]) -> dict[str, Any]:
    """``count`` messages into ``chat_messages`` straight in SQL (bypassing the service: no
    audit, no events), a reaction on every 20th, then ANALYZE. Ids come from the table's
    identity, so they are real message ids the API pages over."""
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO chat_messages (channel_id, author_id, text, created_at)
                   SELECT $1, ($2::text[])[1 + g % cardinality($2::text[])],
                          'history message ' || g || ': the quick brown fox jumps over the lazy dog, '
                          || 'a line of ordinary chat text of about a hundred characters.',
                          now() - make_interval(secs => ($3 - g) * 0.5)
                   FROM generate_series(1, $3) AS g""", channel_id, authors, count)
            ids = await conn.fetchrow(
                "SELECT min(id) AS lo, max(id) AS hi, count(*) AS n FROM chat_messages WHERE channel_id = $1",
                channel_id)
            await conn.execute(
                """INSERT INTO chat_reactions (message_id, user_id, emoji)
                   SELECT id, $2, 'thumbsup' FROM chat_messages WHERE channel_id = $1 AND id % 20 = 0""",
                channel_id, authors[0])
            await conn.execute("UPDATE chat_channels SET last_message_id = $2 WHERE id = $1",
                               channel_id, ids["hi"])
        t1 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE chat_messages")
        await conn.execute("VACUUM ANALYZE chat_reactions")
        t2 = time.perf_counter()
        size = await conn.fetchval("SELECT pg_total_relation_size('chat_messages')")
    finally:
        await conn.close()
    return {"messages": ids["n"], "min_id": ids["lo"], "max_id": ids["hi"], "insert_s": round(t1 - t0, 2),
            "vacuum_analyze_s": round(t2 - t1, 2), "chat_messages_bytes": size}


# ---- fan-out phase ------------------------------------------------------------------------


async def run_sends(gw: GatewayProcess, channel_id: str, senders: list[str], rate: float, warmup: float,
                    duration: float, max_seq: int) -> dict[str, Any]:
    """Open-loop ``messages.send`` at ``rate``/s over ``senders`` connections; the
    acknowledgement latency of messages sent after ``warmup`` seconds is measured."""
    loop = asyncio.get_running_loop()
    conns = [await ws_open(gw.host, gw.port, token_for(gw.secret, u)) for u in senders]
    total = min(max_seq, int(rate * (warmup + duration)))
    warm_n = int(rate * warmup)
    ack = Histogram()
    ack_all = Histogram()
    lag = Histogram()
    acked: list[int] = []
    errors: dict[str, int] = {}

    async def send(seq: int, when: float) -> None:
        c = conns[seq % len(conns)]
        now = loop.time()
        if now < when:
            await asyncio.sleep(when - now)
        lag.record(int((loop.time() - when) * 1e6))
        sent = time.time_ns()
        try:
            reply = await c.command({"rpc": {"method": "messages.send", "data": {
                "channel_id": channel_id, "client_msg_id": f"b{seq}.{sent}",
                "text": f"benchmark message {seq}: an ordinary line of chat text, no mentions."}}})
        except ConnectionError as exc:
            errors[str(exc)[:100]] = errors.get(str(exc)[:100], 0) + 1
            return
        us = (time.time_ns() - sent) // 1000
        if "error" in reply:
            key = str(reply["error"])[:100]
            errors[key] = errors.get(key, 0) + 1
            return
        acked.append(seq)
        ack_all.record(us)
        if seq >= warm_n:
            ack.record(us)

    cpu0 = cpu_seconds(gw.pid)
    t0 = loop.time() + 0.2
    started_wall = time.time()
    # One task per message, created up front and sleeping until its time: the schedule
    # does not slip when a reply is slow (no coordinated omission).
    pending = [asyncio.create_task(send(seq, t0 + seq / rate)) for seq in range(total)]
    await asyncio.gather(*pending)
    elapsed = loop.time() - t0
    gw_cpu = cpu_seconds(gw.pid) - cpu0
    for c in conns:
        c.close()
    return {"sent": total, "acked": sorted(acked), "errors": errors, "warmup_messages": warm_n,
            "ack_measured": ack, "ack_all": ack_all, "schedule_lag": lag, "elapsed_s": round(elapsed, 2),
            "started_at": started_wall, "gateway_cpu_s": round(gw_cpu, 2)}


# ---- messages.list phase ------------------------------------------------------------------


def list_params(kind: str, rng: random.Random, lo: int, hi: int) -> dict[str, Any]:
    """Parameters of one page request: the latest page, a page before a random id, or a
    page after a random id (random depth in the channel's whole history)."""
    if kind == "latest":
        return {}
    if kind == "before":
        return {"before": rng.randint(lo + PAGE, hi)}
    return {"after": rng.randint(lo, hi - PAGE)}


KINDS = ("latest", "before", "after")


async def run_list(gw: GatewayProcess, channel_id: str, reader: str, lo: int, hi: int, requests: int,
                   concurrency: int, transport: str, seed: int) -> dict[str, Any]:
    """``requests`` page reads over ``concurrency`` connections, one request in flight on
    each (closed loop), kinds in rotation; latency per kind and overall."""
    hists = {k: Histogram() for k in KINDS}
    every = Histogram()
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    token = token_for(gw.secret, reader)
    checked = {"pages": 0, "wrong_size": 0}

    async def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        ws: RpcClient | None = None
        http: HttpClient | None = None
        if transport == "rpc":
            ws = await ws_open(gw.host, gw.port, token)
        else:
            http = HttpClient(gw.host, gw.port)
        try:
            # A few unmeasured reads first: the first call of a user creates its row and
            # the first of a connection warms the server's caches.
            for kind in KINDS:
                params = {"channel_id": channel_id, **list_params(kind, rng, lo, hi)}
                if ws is not None:
                    await ws.rpc("messages.list", params)
                else:
                    assert http is not None  # noqa: S101
                    await http.request("GET", f"/v1/channels/{channel_id}/messages",
                                       {"Authorization": f"Bearer {token}"})
            for n in counter:
                kind = KINDS[n % len(KINDS)]
                params = list_params(kind, rng, lo, hi)
                t = time.perf_counter_ns()
                body: Any  # the decoded reply: the page, or the error
                if ws is not None:
                    reply = await ws.command({"rpc": {"method": "messages.list",
                                                      "data": {"channel_id": channel_id, **params}}})
                    ok = "error" not in reply
                    body = reply.get("rpc", {}).get("data") if ok else reply.get("error")
                else:
                    assert http is not None  # noqa: S101
                    query = "&".join(f"{k}={v}" for k, v in params.items())
                    status, body = await http.request(
                        "GET", f"/v1/channels/{channel_id}/messages" + (f"?{query}" if query else ""),
                        {"Authorization": f"Bearer {token}"})
                    ok = status == 200
                us = (time.perf_counter_ns() - t) // 1000
                if not ok:
                    errors[str(body)[:100]] = errors.get(str(body)[:100], 0) + 1
                    continue
                hists[kind].record(us)
                every.record(us)
                checked["pages"] += 1
                # Every page asked for is full: the random ids keep a page away from both
                # ends, and nothing is sent to the history channel meanwhile.
                if len(body["messages"]) != PAGE:
                    checked["wrong_size"] += 1
        finally:
            if ws is not None:
                ws.close()
            if http is not None:
                http.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"transport": transport, "concurrency": concurrency, "requests": every.n,
            "per_s": round(every.n / elapsed, 1) if elapsed else 0.0, "elapsed_s": round(elapsed, 2),
            "latency_ms": every.summary_ms(), "by_kind_ms": {k: h.summary_ms() for k, h in hists.items()},
            "errors": errors, "pages_checked": checked}


# ---- main ---------------------------------------------------------------------------------


def fmt(s: dict[str, float]) -> str:
    return f"P50 {s['p50']:.2f}  P95 {s['p95']:.2f}  P99 {s['p99']:.2f}  max {s['max']:.2f} ms"


async def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    pg = Postgres(args.dsn)
    gw: GatewayProcess | None = None
    procs: list[Any] = []
    pipes: list[Pipe] = []
    try:
        await pg.start()
        result["postgres"] = pg.info
        dsn = await pg.create_database("sentchat_bench_chat")
        port = args.port or free_port()
        gw = GatewayProcess(port, extra_env={"SENTCHAT_POSTGRES_DSN": dsn})
        # The embedded defaults as they are (chat on): the product as shipped is measured.
        gw.config_path.write_text(DEFAULTS_TOML.read_text())
        t0 = time.perf_counter()
        gw.start(args.timeout)
        print(f"PostgreSQL {pg.info.get('version')} ({'--dsn' if args.dsn else 'embedded'}; "
              f"fsync={pg.info.get('fsync')}, synchronous_commit={pg.info.get('synchronous_commit')}); "
              f"gateway up in {time.perf_counter() - t0:.1f} s (pid {gw.pid}, port {port})", flush=True)

        members = [user_id(i) for i in range(args.members)]
        setup: dict[str, Any] = {}
        setup["users_s"] = round(await create_users(gw, args.members), 2)
        print(f"setup: {args.members} users via PUT /v1/admin/users in {setup['users_s']} s", flush=True)
        fan_id, setup["channel_s"] = await create_channel(gw, members[0], "bench-fanout", members)
        setup["channel_s"] = round(setup["channel_s"], 2)
        print(f"setup: channel {fan_id} with {args.members} members (create + invite x100) in "
              f"{setup['channel_s']} s", flush=True)
        dead_app: str | None = None
        if args.dead_app:
            # Before the subscribers connect: the bot's member.joined is not in what they count.
            dead_app, _ = await register_dead_app(gw, fan_id)
            result["dead_app"] = {"app_id": dead_app, "events": ["message"], "channel": fan_id}
            print(f"setup: app {dead_app} subscribed to message events of {fan_id} through POST /v1/apps; "
                  f"its events URL passed url_verification and then stopped listening", flush=True)
        hist_id, _ = await create_channel(gw, members[0], "bench-history", members[:1])
        load = await bulk_load(dsn, hist_id, args.history, members[: min(50, len(members))])
        setup["bulk_load"] = load
        print(f"setup: {load['messages']:,} messages bulk-loaded into {hist_id} (INSERT ... SELECT "
              f"generate_series, bypassing the service) in {load['insert_s']} s, VACUUM ANALYZE "
              f"{load['vacuum_analyze_s']} s; chat_messages {load['chat_messages_bytes'] / 2**20:.0f} MiB", flush=True)
        result["setup"] = setup
        result["channels"] = {"fanout": fan_id, "history": hist_id}

        # Subscribers: one connection per member, in client processes.
        max_seq = int(args.rate * (args.warmup + args.duration)) + 1
        subscription = f"chat:{fan_id}"
        counts = split_evenly(len(members), args.client_procs)
        groups: list[list[str]] = []
        at = 0
        for n in counts:
            groups.append(members[at:at + n])
            at += n
        cfg = {"host": gw.host, "port": gw.port, "secret": gw.secret, "channel": subscription,
               "users": groups, "max_seq": max_seq, "concurrency": 50, "timeout": args.timeout,
               "hard_limit_s": args.hard_limit}
        ctx = mp.get_context("spawn")
        for i in range(args.client_procs):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=subscriber_process, args=(i, cfg, child_end), daemon=True)
            p.start()
            child_end.close()
            procs.append(p)
            pipes.append(parent_end)
        t0 = time.perf_counter()
        ready = await loop.run_in_executor(None, collect_from_pipes, pipes, "ready", args.timeout * 4)
        subscribed = sum(r["subscribed"] for r in ready)
        result["subscribers"] = {"wanted": len(members), "subscribed": subscribed,
                                 "failures": [r["failures"] for r in ready],
                                 "seconds": round(time.perf_counter() - t0, 2)}
        print(f"subscribers: {subscribed}/{len(members)} connected and subscribed to {subscription} "
              f"in {result['subscribers']['seconds']} s ({args.client_procs} client processes)", flush=True)
        if subscribed != len(members):
            raise RuntimeError(f"subscriptions failed: {result['subscribers']['failures']}")

        # Fan-out phase.
        senders = members[: args.senders]
        print(f"messages.send: {args.rate:g}/s from {len(senders)} sender connections for "
              f"{args.warmup:g} s warm-up + {args.duration:g} s measured...", flush=True)
        pg_cpu0 = pg.cpu()
        sends = await run_sends(gw, fan_id, senders, args.rate, args.warmup, args.duration, max_seq)
        pg_cpu = cpu_delta(pg_cpu0, pg.cpu())
        await asyncio.sleep(args.settle)  # deliveries still in flight after the last ack
        for pipe in pipes:
            pipe.send(("check", sends["acked"]))
        checks = await loop.run_in_executor(None, collect_from_pipes, pipes, "check", args.timeout * 2)
        delivery = Histogram()
        for c in checks:
            delivery.merge(Histogram.from_dict(c["latency"]))
        acked = len(sends["acked"])
        integrity = {
            "acknowledged": acked, "expected_deliveries": acked * subscribed,
            "received": sum(c["received"] for c in checks),
            "missing": sum(c["missing"] for c in checks),
            "connections_missing": sum(c["connections_missing"] for c in checks),
            "duplicated": sum(c["duplicated"] for c in checks),
            "unexpected": sum(c["unexpected"] for c in checks),
            "unparsable": sum(c["unparsable"] for c in checks),
            "closed_connections": sum(c["closed"] for c in checks),
            "other_events": [c["other_events"] for c in checks],
            "personal_pushes": sum(c["personal_pushes"] for c in checks),
        }
        integrity["ok"] = (integrity["missing"] == 0 and integrity["duplicated"] == 0
                           and integrity["unexpected"] == 0 and integrity["closed_connections"] == 0
                           and not sends["errors"] and acked == sends["sent"])
        result["send"] = {
            "rate_per_s": args.rate, "senders": len(senders), "members": len(members),
            "subscribers": subscribed, "warmup_s": args.warmup, "duration_s": args.duration,
            "sent": sends["sent"], "acknowledged": acked, "errors": sends["errors"],
            "elapsed_s": sends["elapsed_s"],
            "ack_ms": sends["ack_measured"].summary_ms(), "ack_all_ms": sends["ack_all"].summary_ms(),
            "delivery_ms": delivery.summary_ms(), "schedule_lag_ms": sends["schedule_lag"].summary_ms(),
            "cpu": {"gateway_s": sends["gateway_cpu_s"],
                    "gateway_ms_per_message": round(sends["gateway_cpu_s"] * 1000 / max(1, acked), 2),
                    "postgres_s": pg_cpu, "core_s_available": round(sends["elapsed_s"] * (os.cpu_count() or 1), 1)},
            "integrity": integrity,
        }
        r = result["send"]
        print(f"  ack (send -> RPC reply)     {fmt(r['ack_ms'])}  ({r['ack_ms']['count']} measured)", flush=True)
        print(f"  delivery (send -> event)    {fmt(r['delivery_ms'])}  ({r['delivery_ms']['count']:,} deliveries)",
              flush=True)
        print(f"  integrity                   {'OK' if integrity['ok'] else 'FAILED'}: {acked}/{sends['sent']} "
              f"acknowledged, {integrity['received']:,} of {integrity['expected_deliveries']:,} deliveries, "
              f"missing {integrity['missing']}, duplicated {integrity['duplicated']}, unexpected "
              f"{integrity['unexpected']}, errors {sends['errors'] or 0}", flush=True)
        print(f"  CPU                         gateway {r['cpu']['gateway_s']:.2f} s "
              f"({r['cpu']['gateway_ms_per_message']} ms/message), PostgreSQL {pg_cpu.get('total', 0):.2f} s, "
              f"of {r['cpu']['core_s_available']} core-s; sender schedule lag P99 "
              f"{r['schedule_lag_ms']['p99']:.2f} ms", flush=True)

        if dead_app is not None:
            result["dead_app"]["outbox_after_sends"] = ob = await outbox_states(dsn, dead_app)
            print(f"  dead app outbox             {ob['pending']} pending, {ob['dead']} dead, "
                  f"{ob['delivered']} delivered; {ob['attempts']} delivery attempts "
                  f"(last error: {ob['last_error'][:80] or '-'})", flush=True)

        # Reads.
        lists = []
        for transport in ("rpc", "http"):
            for conc in args.list_concurrency:
                res = await run_list(gw, hist_id, members[0], load["min_id"], load["max_id"],
                                     args.list_requests, conc, transport, seed=args.seed)
                lists.append(res)
                kinds = "; ".join(f"{k} P95 {v['p95']:.2f}" for k, v in res["by_kind_ms"].items())
                print(f"messages.list {transport.upper():<4} x{conc:<2} {fmt(res['latency_ms'])}  "
                      f"({res['requests']} pages, {res['per_s']:.0f}/s; {kinds}; errors {res['errors'] or 0}, "
                      f"short pages {res['pages_checked']['wrong_size']})", flush=True)
        result["list"] = lists
        if dead_app is not None:
            result["dead_app"]["outbox_at_end"] = ob = await outbox_states(dsn, dead_app)
            print(f"dead app outbox at the end: {ob['pending']} pending, {ob['dead']} dead, "
                  f"{ob['delivered']} delivered; {ob['attempts']} delivery attempts", flush=True)
        n_problems, problems = gw.log_problems()
        # Expected on the embedded defaults: a generated encryption key (not a problem); with
        # --dead-app, its events being dead-lettered.
        expected = [p for p in problems if "no chat encryption key configured" in p
                    or (dead_app is not None and f"for app {dead_app} dead-lettered" in p)]
        n_problems -= len(expected)
        problems = [p for p in problems if p not in expected]
        result["server_log"] = {"problem_lines": n_problems, "first": problems}
        if n_problems:
            print(f"server log: {n_problems} warning/error lines, e.g. {problems[:3]}", flush=True)
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
        if gw is not None:
            gw.cleanup()
        await pg.stop()


def summary(result: dict[str, Any]) -> str:
    """The table quoted in the README."""
    lines = []
    s = result.get("send")
    if s:
        ok = s["ack_ms"]["p95"] < TARGET_P95_MS
        lines.append(f"messages.send ack, {s['members']:,}-member channel, {s['rate_per_s']:g} msg/s: "
                     f"{fmt(s['ack_ms'])} -> target P95 < {TARGET_P95_MS:g} ms {'met' if ok else 'NOT met'}")
        lines.append(f"  fan-out delivery to {s['subscribers']:,} subscribers: {fmt(s['delivery_ms'])}; "
                     f"integrity {'OK' if s['integrity']['ok'] else 'FAILED'}")
    d = result.get("dead_app")
    if d and "outbox_after_sends" in d:
        ob = d["outbox_after_sends"]
        lines.append(f"  with a dead app subscribed to the channel's message events: outbox after the sends "
                     f"{ob['pending']} pending, {ob['dead']} dead ({ob['attempts']} failed deliveries)")
    for r in result.get("list", []):
        ok = r["latency_ms"]["p95"] < TARGET_P95_MS
        lines.append(f"messages.list {r['transport'].upper()} x{r['concurrency']}, "
                     f"{result['setup']['bulk_load']['messages']:,} messages: {fmt(r['latency_ms'])} -> "
                     f"{'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.chat", description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=1000, help="channel members = subscriber connections (1000)")
    ap.add_argument("--client-procs", type=int, default=2, help="processes holding the subscribers (2)")
    ap.add_argument("--senders", type=int, default=4, help="sender connections (4)")
    ap.add_argument("--rate", type=float, default=20.0, help="messages.send per second, all senders (20)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of sends not measured (3)")
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds of sends (30)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds after the last ack before deliveries are counted (2)")
    ap.add_argument("--history", type=int, default=1_000_000, help="messages bulk-loaded for the reads (1,000,000)")
    ap.add_argument("--list-requests", type=int, default=600, help="page reads per transport and concurrency (600)")
    ap.add_argument("--list-concurrency", default="1,8",
                    help="comma-separated reader counts, one request in flight each (1,8)")
    ap.add_argument("--seed", type=int, default=1, help="random page positions (1)")
    ap.add_argument("--dead-app", action="store_true",
                    help="register an app (POST /v1/apps) subscribed to the fan-out channel's message events "
                         "whose events URL answers url_verification and then stops: every event delivery "
                         "fails (retries, backoff, dead letters) while the sends are measured")
    ap.add_argument("--dsn", help="use this PostgreSQL (creates database sentchat_bench_chat) instead of an "
                                  "embedded one under /tmp")
    ap.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=30.0, help="limit of each waiting step (30)")
    ap.add_argument("--hard-limit", type=float, default=600.0, help="the whole run is cancelled after this (600)")
    ap.add_argument("--json-out", help="result file (default bench/results/chat-<timestamp>.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.list_concurrency = [int(x) for x in str(args.list_concurrency).split(",") if x.strip()]
    if args.members < 2 or args.senders < 1 or args.senders > args.members or args.rate <= 0 \
            or args.history < 10 * PAGE or not args.list_concurrency or min(args.list_concurrency) < 1:
        raise SystemExit("need --members >= 2, 1 <= --senders <= --members, --rate > 0, "
                         f"--history >= {10 * PAGE}, positive --list-concurrency")
    result: dict[str, Any] = {
        "benchmark": "chat",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.executable).name, "-m", "bench.chat", *(argv if argv is not None else sys.argv[1:])],
        "machine": machine_info(),
        "load_average_at_start": os.getloadavg(),
        "target": {"ack_p95_ms": TARGET_P95_MS, "list_p95_ms": TARGET_P95_MS},
        "params": {k: v for k, v in vars(args).items() if k != "json_out"},
    }
    m = result["machine"]
    print(f"chat: {args.members} members, {args.rate:g} msg/s, {args.history:,} history messages; machine: "
          f"{m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, git {m.get('git', '?')}, "
          f"load average {result['load_average_at_start'][0]:.2f}", flush=True)
    started = time.perf_counter()

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101
        handle = asyncio.get_running_loop().call_later(args.hard_limit, task.cancel)
        try:
            await run(args, result)
        finally:
            handle.cancel()

    try:
        uvloop.run(guarded())
    finally:
        result["wall_s"] = round(time.perf_counter() - started, 1)
        out = Path(args.json_out) if args.json_out else (
            ROOT / "bench" / "results" / time.strftime("chat-%Y%m%d-%H%M%S.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(summary(result))
    print(f"wall time {result['wall_s']} s; results written to {out}")
    ok = "send" in result and result["send"]["integrity"]["ok"] and all(not r["errors"] for r in result["list"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
