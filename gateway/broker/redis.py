"""Redis broker: channels sharded over N Redis servers, for many processes and many nodes.

- A channel lives on one shard (``shard_index``), so all its state and its pub/sub traffic go
  through one single-threaded server: one Lua script per publication allocates the offset,
  appends to the capped stream and PUBLISHes, so every node sees a channel's publications in
  offset order.
- A process subscribes only to the channels its own clients hold, over ``pubsub_per_shard``
  connections per shard (a channel always uses the same one, which keeps its order).
  SUBSCRIBE/UNSUBSCRIBE requests arriving within ``BATCH_DELAY`` are sent as one command.
  ``subscribe()`` returns once Redis confirmed, so a history read that follows cannot miss a
  publication: it is either in the stream already or still to arrive on the connection.
- Connections are plain asyncio protocols speaking RESP2 (no client library): per shard one
  command connection, auto-pipelined (the commands of one event-loop step leave in one
  write), and the pub/sub connections, whose frames are parsed and delivered synchronously
  in arrival order (no task and no await per message).
- A shard that is down makes operations on its channels raise ``BrokerUnavailable`` (code 100,
  temporary) within the socket timeouts. Pub/sub connections reconnect by themselves with
  capped, jittered exponential backoff, resubscribe, then call ``deliveries.shard_reset``
  (when the node has it) because publications may have been missed meanwhile.

Pub/sub payloads: ``p<offset>:<epoch>:<body>`` (a publication; offset 0 and empty epoch without
history; the script writes the header because only it knows the offset), ``j<info>`` (join),
``l<info>`` (leave); ``body`` and ``info`` are msgpack (msgspec, array-like Structs).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec
import orjson

from centrifugo_bridge import codes
from centrifugo_bridge.codes import ClientError
from centrifugo_bridge.effects import StreamState
from centrifugo_bridge.protocol import EMPTY, ClientInfo, Publication, Raw, StreamPosition
from gateway.broker import redis_scripts as lua
from gateway.broker.base import Deliveries
from gateway.broker.sharding import channel_hashes, jump_hash, shard_index

__all__ = [
    "BrokerUnavailable", "RedisBroker", "decode_body", "decode_info", "decode_publication_message",
    "encode_body", "encode_info", "redact", "shard_index",
]

log = logging.getLogger("sentchat.broker.redis")

# A connect on a LAN takes milliseconds; a shard that has not accepted in 1 s is down as far
# as a client waiting for its publish reply is concerned.
CONNECT_TIMEOUT = 1.0
# The slowest command is a presence sweep after a node died (tens of ms for thousands of
# clients); a shard that needs more than 2 s is unusable and the client should retry.
COMMAND_TIMEOUT = 2.0
# After a failed connect, commands fail at once for this long instead of each trying again:
# a dead shard costs callers nothing, and a restarted one is found within a quarter second
# (sooner when a pub/sub connection gets through first).
CONNECT_RETRY_DELAY = 0.25
# Presence refreshes go out in pipelines of this many scripts: one write of ~300 KB, and the
# shard serves other clients between pipelines.
REFRESH_BATCH = 1000
# How long subscribe() waits for Redis to confirm before telling the client to retry.
SUBSCRIBE_TIMEOUT = 5.0
# Subscribe storms (thousands of clients reconnecting) become one command per connection per
# millisecond instead of one per channel; 1 ms adds nothing a client could notice.
BATCH_DELAY = 0.001
# Channels per SUBSCRIBE/UNSUBSCRIBE command (and the size that flushes a batch early): a
# command of some 30 KB, and a burst of confirmations short enough not to stall deliveries.
BATCH_MAX = 512
# Idle pub/sub connections PING this often; one interval without any byte back means the
# connection is dead (a silently dropped network never sends a FIN).
PING_INTERVAL = 5.0
# Reconnect backoff: first retry after ~50 ms (a restarted server is back at once), doubling
# up to 3 s so a long outage costs the shard a handful of connects per process.
RECONNECT_BASE_DELAY = 0.05
RECONNECT_MAX_DELAY = 3.0
# One warning per shard per this many seconds: an outage must not flood the log.
ERROR_LOG_INTERVAL = 5.0

_CONTROL = object()  # marks the control channel in a listener's channel map
_MISSING = object()
_rng = secrets.SystemRandom()


class BrokerUnavailable(ClientError):
    """A Redis shard cannot be reached: code 100, temporary, so clients retry."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(*codes.INTERNAL)
        self.detail = detail


# ---- payloads -------------------------------------------------------------------------------


class _Info(msgspec.Struct, array_like=True, omit_defaults=True):
    user: str
    client: str
    conn_info: bytes = b""
    chan_info: bytes = b""


class _Body(msgspec.Struct, array_like=True, omit_defaults=True):
    """A Publication without its offset (the stream entry ID or the payload header has it)."""

    data: bytes = b""
    info: _Info | None = None
    tags: dict[str, str] = {}
    time: int = 0
    delta: bool = False
    channel: str = ""
    key: str = ""
    removed: bool = False
    score: int = 0
    epoch: str = ""
    version: int = 0


_encoder = msgspec.msgpack.Encoder()
_info_decoder = msgspec.msgpack.Decoder(_Info)
_body_decoder = msgspec.msgpack.Decoder(_Body)


def _pack_info(info: ClientInfo) -> _Info:
    return _Info(info.user, info.client, bytes(info.conn_info), bytes(info.chan_info))


def _unpack_info(info: _Info) -> ClientInfo:
    return ClientInfo(user=info.user, client=info.client,
                      conn_info=Raw(info.conn_info) if info.conn_info else EMPTY,
                      chan_info=Raw(info.chan_info) if info.chan_info else EMPTY)


def encode_info(info: ClientInfo) -> bytes:
    """ClientInfo as stored in presence and sent in join/leave payloads."""
    return _encoder.encode(_pack_info(info))


def decode_info(data: bytes | memoryview) -> ClientInfo:
    """Inverse of ``encode_info``."""
    return _unpack_info(_info_decoder.decode(data))


def encode_body(pub: Publication) -> bytes:
    """A publication as kept in the stream and carried by pub/sub (offset excluded)."""
    return _encoder.encode(_Body(
        data=bytes(pub.data), info=_pack_info(pub.info) if pub.info is not None else None,
        tags=pub.tags, time=pub.time, delta=pub.delta, channel=pub.channel, key=pub.key,
        removed=pub.removed, score=pub.score, epoch=pub.epoch, version=pub.version))


def decode_body(data: bytes | memoryview, offset: int) -> Publication:
    """Inverse of ``encode_body``, with the offset put back."""
    body = _body_decoder.decode(data)
    return Publication(
        data=Raw(body.data) if body.data else EMPTY,
        info=_unpack_info(body.info) if body.info is not None else None,
        offset=offset, tags=body.tags, time=body.time, delta=body.delta, channel=body.channel,
        key=body.key, removed=body.removed, score=body.score, epoch=body.epoch,
        version=body.version)


def decode_publication_message(data: bytes) -> tuple[Publication, str]:
    """A ``p<offset>:<epoch>:<body>`` pub/sub payload -> (publication, epoch)."""
    i = data.index(b":", 1)
    j = data.index(b":", i + 1)
    offset = int(data[1:i])
    return decode_body(memoryview(data)[j + 1:], offset), data[i + 1:j].decode()


# ---- RESP (the pub/sub connections speak it directly) ---------------------------------------


class _RespError(Exception):
    """An error reply (``-ERR ...``) from the server."""


class _ProtocolError(Exception):
    """Bytes that are not RESP: the connection is dropped and re-established."""


def _parse(buf: bytearray, pos: int) -> tuple[Any, int] | None:
    """One RESP2 value at ``pos``: (value, next position), or None when incomplete.
    Bulk strings are bytes, simple strings str, errors ``_RespError``."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return None
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 42:  # * array
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        items: list[Any] = []
        at = end + 2
        for _ in range(n):
            parsed = _parse(buf, at)
            if parsed is None:
                return None
            value, at = parsed
            items.append(value)
        return items, at
    if kind == 58:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 43:  # + simple string
        return buf[pos + 1:end].decode(), end + 2
    if kind == 45:  # - error
        return _RespError(buf[pos + 1:end].decode(errors="replace")), end + 2
    raise _ProtocolError(f"unexpected RESP type byte {kind!r}")


def _resp_command(*parts: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            part = part.encode("utf-8", "surrogatepass")
        elif isinstance(part, int):
            part = b"%d" % part
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _Owner:
    """What a ``_Proto`` reports to: parsed frames and the end of the connection."""

    name: str

    def on_frames(self, proto: _Proto, frames: list[Any]) -> None:
        raise NotImplementedError

    def on_lost(self, proto: _Proto, exc: Exception | None) -> None:
        raise NotImplementedError


class _Proto(asyncio.Protocol):
    """One socket to Redis: RESP frames are parsed and handed to the owner in order."""

    def __init__(self, owner: _Owner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        frames: list[Any] = []
        pos = 0
        try:
            while pos < len(buf):
                parsed = _parse(buf, pos)
                if parsed is None:
                    break
                frames.append(parsed[0])
                pos = parsed[1]
        except (_ProtocolError, ValueError) as exc:
            log.error("%s: unreadable reply (%s), reconnecting", self.owner.name, exc)
            self.abort()
            return
        if pos:
            del buf[:pos]
        self.owner.on_frames(self, frames)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.on_lost(self, exc)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# ---- shards and their pub/sub connections ---------------------------------------------------


class _Address:
    """Where and how to reach one Redis server, parsed from its URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "valkey", "valkeys"):
            raise ValueError(f"not a redis:// URL: {redact(url)}")
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else ""
        self.password = unquote(parts.password) if parts.password else ""
        path = parts.path.strip("/")
        self.db = int(path) if path else 0
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme in ("rediss", "valkeys") else None)

    def handshake(self) -> list[tuple[bytes | str | int, ...]]:
        """Commands a fresh connection sends before anything else."""
        commands: list[tuple[bytes | str | int, ...]] = []
        if self.password:
            commands.append((b"AUTH", self.username, self.password) if self.username
                            else (b"AUTH", self.password))
        return commands


def redact(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


async def _open(address: _Address, owner: _Owner) -> _Proto:
    loop = asyncio.get_running_loop()
    proto = _Proto(owner)
    await asyncio.wait_for(
        loop.create_connection(lambda: proto, address.host, address.port, ssl=address.ssl),
        CONNECT_TIMEOUT)
    return proto


def _detail(exc: BaseException) -> str:
    return getattr(exc, "detail", "") or str(exc) or type(exc).__name__


class _Shard:
    """One Redis server: a pipelined command connection and a few pub/sub listeners."""

    def __init__(self, index: int, url: str, pubsub: int, broker: RedisBroker) -> None:
        self.index = index
        self.address = _Address(url)
        self.name = f"shard {index} ({redact(url)})"
        self.commands = _Commands(self)
        self.listeners = [_Listener(broker, self, i) for i in range(pubsub)]
        self._last_log = -math.inf
        self._suppressed = 0

    def back(self) -> None:
        """A connection got through: the others stop waiting out their backoff."""
        self.commands.retry_at = 0.0
        for listener in self.listeners:
            listener.nudge()

    @property
    def up(self) -> bool:
        """Every pub/sub connection is established."""
        return all(listener.connected for listener in self.listeners)

    def report(self, what: str, exc: BaseException) -> None:
        """Log a failure at most once per ERROR_LOG_INTERVAL."""
        now = time.monotonic()
        if now - self._last_log >= ERROR_LOG_INTERVAL:
            more = f" ({self._suppressed} more failures not logged)" if self._suppressed else ""
            log.warning("%s: %s failed: %s%s", self.name, what, _detail(exc), more)
            self._last_log = now
            self._suppressed = 0
        else:
            self._suppressed += 1


class _Commands(_Owner):
    """The command connection of a shard, pipelined: the commands issued during one
    event-loop step leave in one write and replies are matched to callers in order. Redis
    runs a shard's commands one at a time anyway, so one connection does not limit it, and
    it saves a round trip per publish.

    Nothing is retried here: a publish that failed after it was sent may have happened, so
    retrying could publish twice. Callers get BrokerUnavailable and the client retries."""

    def __init__(self, shard: _Shard) -> None:
        self.shard = shard
        self.name = f"{shard.name} commands"
        self._proto: _Proto | None = None
        # Callers waiting for replies, oldest first, with the time after which the
        # connection counts as dead.
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Future[None] | None = None
        # Until then, calls fail at once (a connect just failed).
        self.retry_at = 0.0
        self._closed = False

    async def call(self, *args: bytes | str | int) -> Any:
        """Send one command and return its reply (``_RespError`` for an error reply)."""
        if self._proto is None:
            await self.connect()
        return await self.send(*args)

    async def connect(self) -> None:
        """Connect unless connected; concurrent callers share one attempt."""
        if self._proto is not None:
            return
        if self._closed:
            raise BrokerUnavailable(f"{self.name}: closed")
        if self._connecting is None:
            if time.monotonic() < self.retry_at:
                raise BrokerUnavailable(f"{self.name}: down")
            self._connecting = asyncio.ensure_future(self._open())
            # Retrieved here so an attempt whose callers were all cancelled logs nothing.
            self._connecting.add_done_callback(
                lambda f: None if f.cancelled() else f.exception())
        attempt = self._connecting
        try:
            await asyncio.shield(attempt)
        finally:
            if attempt.done() and self._connecting is attempt:
                self._connecting = None

    async def _open(self) -> None:
        address = self.shard.address
        try:
            proto = await _open(address, self)
            self._proto = proto
            replies = [self.send(*command) for command in address.handshake()]
            if address.db:
                replies.append(self.send(b"SELECT", address.db))
            for result in await asyncio.gather(*replies, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        except (OSError, TimeoutError, _RespError, BrokerUnavailable) as exc:
            self.drop(None)
            self.retry_at = time.monotonic() + CONNECT_RETRY_DELAY
            raise BrokerUnavailable(f"{self.name}: cannot connect: {_detail(exc)}") from exc
        if not self.shard.up:
            self.shard.back()

    def send(self, *args: bytes | str | int) -> asyncio.Future[Any]:
        """Queue one command on the current connection; the future gets its reply."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self._proto is None:
            fut.set_exception(BrokerUnavailable(f"{self.name}: not connected"))
            return fut
        self._pending.append((fut, loop.time() + COMMAND_TIMEOUT))
        self._out.append(_resp_command(*args))
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        if self._watch is None:
            self._watch = loop.call_later(COMMAND_TIMEOUT, self._check)
        return fut

    def _flush(self) -> None:
        self._flush_handle = None
        if self._proto is not None and self._out:
            self._proto.write(b"".join(self._out))
        self._out.clear()

    def _check(self) -> None:
        """One timer per connection, not per command: is the oldest reply overdue?"""
        self._watch = None
        if not self._pending or self._proto is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self._pending[0][1]
        if deadline <= loop.time():
            log.warning("%s: no reply in %.1f s, dropping the connection", self.name,
                        COMMAND_TIMEOUT)
            self.drop(BrokerUnavailable(f"{self.name}: no reply in {COMMAND_TIMEOUT} s"))
            return
        self._watch = loop.call_later(deadline - loop.time(), self._check)

    def on_frames(self, proto: _Proto, frames: list[Any]) -> None:
        if proto is not self._proto:
            return
        pending = self._pending
        for frame in frames:
            if not pending:
                log.error("%s: reply without a command, reconnecting", self.name)
                self.drop(BrokerUnavailable(f"{self.name}: out of step"))
                return
            fut = pending.popleft()[0]
            if fut.done():
                continue  # its caller was cancelled; the reply still had to be consumed
            if isinstance(frame, _RespError):
                fut.set_exception(frame)
            else:
                fut.set_result(frame)

    def on_lost(self, proto: _Proto, exc: Exception | None) -> None:
        if proto is self._proto:
            self.drop(BrokerUnavailable(f"{self.name}: connection lost"))

    def drop(self, error: BrokerUnavailable | None) -> None:
        """Close the connection; every caller still waiting gets ``error``."""
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.abort()
        self._out.clear()
        for handle in (self._flush_handle, self._watch):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._watch = None
        detail = error.detail if error is not None else f"{self.name}: connection closed"
        while self._pending:
            fut = self._pending.popleft()[0]
            if not fut.done():
                # One instance per caller: a shared one would collect every raiser's traceback.
                fut.set_exception(BrokerUnavailable(detail))

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self.drop(None)


class _Listener(_Owner):
    """One pub/sub connection: the channels this process wants from it, batching of
    SUBSCRIBE/UNSUBSCRIBE, keepalive and reconnection."""

    def __init__(self, broker: RedisBroker, shard: _Shard, index: int) -> None:
        self.broker = broker
        self.shard = shard
        self.name = f"{shard.name} pub/sub {index}"
        # Redis channel name -> our channel name (or _CONTROL): what we want to hear.
        self.wanted: dict[bytes, Any] = {}
        # Subscribed according to the last command sent for the name.
        self._sent: set[bytes] = set()
        # Commands sent per name and not confirmed yet.
        self._inflight: dict[bytes, int] = {}
        # Names whose wanted state changed since the last flush.
        self._dirty: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        # Replies other than pub/sub confirmations (AUTH, PING), in command order.
        self._replies: deque[asyncio.Future[Any] | None] = deque()
        self._proto: _Proto | None = None
        self.connected = False
        self._flush_handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._heard = False
        self._lost = asyncio.Event()
        # Set when another connection to the shard got through: retry now, not after backoff.
        self._nudge = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False

    # -- connection lifecycle

    async def connect(self) -> None:
        """Open the connection, authenticate, subscribe every wanted channel and return
        once Redis confirmed them all."""
        loop = asyncio.get_running_loop()
        proto = await _open(self.shard.address, self)
        self._proto = proto
        try:
            for command in self.shard.address.handshake():
                await asyncio.wait_for(self._request(_resp_command(*command)), COMMAND_TIMEOUT)
            self.connected = True
            self._dirty.update(self.wanted)
            self._flush()
            # Replies come in command order: the PING answer follows every confirmation.
            await asyncio.wait_for(self._request(_resp_command(b"PING")), SUBSCRIBE_TIMEOUT)
        except BaseException:
            proto.abort()
            self.on_lost(proto, None)
            raise
        self._heard = True
        self._ping_handle = loop.call_later(PING_INTERVAL, self._keepalive)

    def nudge(self) -> None:
        if not self.connected:
            self._nudge.set()

    def start_supervisor(self) -> None:
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"sentchat-redis-{self.name}")

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._proto is not None:
            proto = self._proto
            proto.abort()
            self.on_lost(proto, None)

    async def _supervise(self) -> None:
        """Reconnect whenever the connection is lost, then report the channels whose
        publications may have been missed."""
        while not self._closing:
            await self._lost.wait()
            self._lost.clear()
            attempt = 0
            started = time.monotonic()
            log.warning("%s: connection lost, reconnecting (%d channels)", self.name,
                        len(self.wanted))
            while not self._closing:
                delay = min(RECONNECT_MAX_DELAY, RECONNECT_BASE_DELAY * 2 ** attempt)
                attempt += 1
                self._nudge.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudge.wait(), _rng.uniform(delay / 2, delay))
                try:
                    await self.connect()
                except Exception as exc:  # whatever happened, keep trying: never give up
                    self.shard.report(f"reconnect attempt {attempt}", exc)
                    self._lost.clear()
                    continue
                break
            if self._closing:
                return
            self.shard.back()
            self.broker.stats["reconnects"] += 1
            channels = [ch for ch in self.wanted.values() if ch is not _CONTROL]
            log.info("%s: reconnected after %.2f s (%d attempts), resubscribed %d channels",
                     self.name, time.monotonic() - started, attempt, len(channels))
            await self.broker._shard_reset(channels)

    def on_lost(self, proto: _Proto, exc: Exception | None) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self.connected = False
        self._sent.clear()
        self._inflight.clear()
        self._dirty.clear()
        for handle in (self._flush_handle, self._ping_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._ping_handle = None
        detail = f"{self.name}: connection lost"
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(BrokerUnavailable(detail))
        self._waiters.clear()
        while self._replies:
            fut = self._replies.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(BrokerUnavailable(detail))
        if not self._closing:
            self._lost.set()

    def _keepalive(self) -> None:
        self._ping_handle = None
        if self._proto is None:
            return
        if not self._heard:
            log.warning("%s: no reply for %.0f s, dropping the connection", self.name,
                        PING_INTERVAL)
            self._proto.abort()
            return
        self._heard = False
        self._replies.append(None)
        self._proto.write(_resp_command(b"PING"))
        self._ping_handle = asyncio.get_running_loop().call_later(PING_INTERVAL, self._keepalive)

    def _request(self, command: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._proto is None:
            fut.set_exception(BrokerUnavailable(f"{self.name}: not connected"))
            return fut
        self._replies.append(fut)
        self._proto.write(command)
        return fut

    # -- incoming frames

    def on_frames(self, proto: _Proto, frames: list[Any]) -> None:
        if proto is not self._proto:
            return
        self._heard = True
        for frame in frames:
            if type(frame) is list:
                kind = frame[0]
                if kind == b"message":
                    self._on_message(frame[1], frame[2])
                elif kind == b"subscribe" or kind == b"unsubscribe":
                    self._on_confirm(frame[1])
                elif kind == b"pong":
                    self._on_reply(frame)
                else:
                    log.debug("%s: ignoring %r", self.name, kind)
            elif isinstance(frame, _RespError):
                # Only AUTH can fail by design; anything else means our view of the
                # connection is wrong, so start over with a fresh one.
                log.error("%s: error reply: %s", self.name, frame)
                fut = self._replies.popleft() if self._replies else None
                if fut is not None and not fut.done():
                    fut.set_exception(frame)
                proto.abort()
                return
            else:
                self._on_reply(frame)

    def _on_reply(self, value: Any) -> None:
        if not self._replies:
            log.debug("%s: unexpected reply %r", self.name, value)
            return
        fut = self._replies.popleft()
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _on_message(self, name: bytes, data: bytes) -> None:
        channel = self.wanted.get(name, _MISSING)
        if channel is _MISSING:
            return  # unsubscribed meanwhile: nobody here wants it any more
        if channel is _CONTROL:
            self.broker._deliver_control(data)
        else:
            self.broker._deliver(channel, data)

    def _on_confirm(self, name: bytes) -> None:
        left = self._inflight.get(name, 0) - 1
        if left > 0:
            self._inflight[name] = left
            return
        self._inflight.pop(name, None)
        if name in self._sent:
            self._resolve(name)

    def _resolve(self, name: bytes) -> None:
        for fut in self._waiters.pop(name, ()):
            if not fut.done():
                fut.set_result(None)

    # -- subscriptions

    async def subscribe(self, name: bytes, channel: Any) -> None:
        self.wanted[name] = channel
        if not self.connected:
            # Still wanted: the reconnection subscribes it and reports it in shard_reset.
            raise BrokerUnavailable(f"{self.name}: not connected")
        if name in self._sent and not self._inflight.get(name):
            return  # already subscribed and confirmed
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(fut)
        self._mark(name)
        try:
            await asyncio.wait_for(fut, SUBSCRIBE_TIMEOUT)
        except TimeoutError:
            raise BrokerUnavailable(f"{self.name}: SUBSCRIBE not confirmed in time") from None

    def unsubscribe(self, name: bytes) -> None:
        if self.wanted.pop(name, _MISSING) is _MISSING:
            return
        # A subscribe still waiting has nobody left to serve: let it return.
        self._resolve(name)
        if self.connected:
            self._mark(name)

    def _mark(self, name: bytes) -> None:
        self._dirty.add(name)
        if len(self._dirty) >= BATCH_MAX:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(BATCH_DELAY, self._flush)

    def _flush(self) -> None:
        """Send what changed since the last flush: one UNSUBSCRIBE and one SUBSCRIBE per
        BATCH_MAX channels."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        proto = self._proto
        if proto is None or not self.connected:
            self._dirty.clear()
            return
        subs: list[bytes] = []
        unsubs: list[bytes] = []
        for name in self._dirty:
            if name in self.wanted:
                if name not in self._sent:
                    subs.append(name)
                elif not self._inflight.get(name):
                    self._resolve(name)  # subscribed and confirmed already
            elif name in self._sent:
                unsubs.append(name)
        self._dirty.clear()
        stats = self.broker.stats
        for verb, names, key in ((b"UNSUBSCRIBE", unsubs, "unsubscribe_commands"),
                                 (b"SUBSCRIBE", subs, "subscribe_commands")):
            for i in range(0, len(names), BATCH_MAX):
                chunk = names[i:i + BATCH_MAX]
                proto.write(_resp_command(verb, *chunk))
                stats[key] += 1
                for name in chunk:
                    self._inflight[name] = self._inflight.get(name, 0) + 1
                    if verb == b"SUBSCRIBE":
                        self._sent.add(name)
                    else:
                        self._sent.discard(name)


# ---- the broker -----------------------------------------------------------------------------


class RedisBroker:
    """Broker over N Redis (or Valkey) shards; see the module docstring."""

    def __init__(self, urls: Sequence[str], *, node_id: str, pubsub_per_shard: int = 2,
                 presence_ttl: float = 60.0, history_meta_ttl: float = 30 * 86400,
                 prefix: str = "sentchat") -> None:
        if not urls:
            raise ValueError("RedisBroker needs at least one Redis URL")
        if pubsub_per_shard < 1:
            raise ValueError("pubsub_per_shard must be at least 1")
        if presence_ttl <= 0:
            raise ValueError("presence_ttl must be positive")
        self.urls = list(urls)
        self.node_id = node_id
        self.pubsub_per_shard = pubsub_per_shard
        self.presence_ttl = presence_ttl
        self.history_meta_ttl = history_meta_ttl
        self.prefix = prefix
        self.stats: dict[str, int] = {
            "reconnects": 0, "shard_resets": 0, "publish_errors": 0, "command_errors": 0,
            "subscribe_commands": 0, "unsubscribe_commands": 0, "messages": 0,
            "bad_messages": 0, "delivery_errors": 0,
        }
        self._shards: list[_Shard] = []
        self._deliveries: Deliveries | None = None
        self._on_control: Callable[[bytes], Any] | None = None
        self._on_reset: Callable[[list[str]], Any] | None = None
        self._registered = False
        self._presence_ttl_ms = max(1, math.ceil(presence_ttl * 1000))
        self._meta_ttl = str(max(1, math.ceil(history_meta_ttl))) if history_meta_ttl > 0 else "0"
        self._control_name = f"{prefix}:control".encode()
        self._nodes_keys = [f"{prefix}:nodes", f"{prefix}:nodes:exp"]

    # ---- lifecycle

    async def start(self, deliveries: Deliveries) -> None:
        """Connect to every shard (commands and pub/sub). Raises BrokerUnavailable if one
        cannot be reached: a node must not start half-connected."""
        self._deliveries = deliveries
        self._on_control = getattr(deliveries, "deliver_control", None)
        self._on_reset = getattr(deliveries, "shard_reset", None)
        self._shards = [_Shard(i, url, self.pubsub_per_shard, self)
                        for i, url in enumerate(self.urls)]
        control = self._listener(self._control_name.decode(), 0)
        control.wanted[self._control_name] = _CONTROL
        try:
            for shard in self._shards:
                await shard.commands.call(b"PING")
                loads = [shard.commands.send(b"SCRIPT", b"LOAD", script.source)
                         for script in lua.ALL]
                for result in await asyncio.gather(*loads, return_exceptions=True):
                    if isinstance(result, BaseException):
                        raise result
                for listener in shard.listeners:
                    await listener.connect()
        except (OSError, TimeoutError, BrokerUnavailable, _RespError) as exc:
            detail = _detail(exc)
            if shard.name not in detail:
                detail = f"{shard.name}: {detail}"
            log.error("cannot start the Redis broker: %s", detail)
            await self.close()
            raise BrokerUnavailable(detail) from exc
        for shard in self._shards:
            for listener in shard.listeners:
                listener.start_supervisor()
        log.info("connected to %d Redis shard(s), %d pub/sub connections each",
                 len(self._shards), self.pubsub_per_shard)

    async def close(self) -> None:
        """Close every connection and task; forget this node in the registry."""
        if self._registered and self._shards:
            commands = self._shards[0].commands
            with contextlib.suppress(BrokerUnavailable, _RespError, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await commands.call(b"HDEL", self._nodes_keys[0], self.node_id)
                    await commands.call(b"ZREM", self._nodes_keys[1], self.node_id)
            self._registered = False
        for shard in self._shards:
            for listener in shard.listeners:
                await listener.close()
            await shard.commands.close()
        self._shards = []
        self._deliveries = None

    # ---- routing

    def shards_up(self) -> list[bool]:
        """Per shard: are all its pub/sub connections established (for health checks)."""
        return [shard.up for shard in self._shards]

    def shard_of(self, channel: str) -> int:
        """Index of the shard holding ``channel``."""
        return shard_index(channel, len(self.urls))

    def _listener(self, channel: str, shard: int | None = None) -> _Listener:
        h_shard, h_conn = channel_hashes(channel)
        n = len(self._shards)
        index = shard if shard is not None else (jump_hash(h_shard, n) if n > 1 else 0)
        listeners = self._shards[index].listeners
        return listeners[h_conn % len(listeners)]

    def _shard(self, channel: str) -> _Shard:
        if not self._shards:
            raise BrokerUnavailable("broker not started")
        return self._shards[self.shard_of(channel)]

    def _pubsub_name(self, channel: str) -> bytes:
        return f"{self.prefix}:c:{channel}".encode("utf-8", "surrogatepass")

    def _history_keys(self, channel: str) -> list[str]:
        return [f"{self.prefix}:h:{channel}", f"{self.prefix}:hm:{channel}"]

    def _presence_keys(self, channel: str) -> list[str]:
        p = self.prefix
        return [f"{p}:p:{channel}", f"{p}:pz:{channel}", f"{p}:pu:{channel}", f"{p}:pc:{channel}"]

    # ---- commands

    async def _script(self, shard: _Shard, script: lua.Script, keys: Sequence[str],
                      args: Sequence[bytes | str | int]) -> Any:
        commands = shard.commands
        try:
            try:
                return await commands.call(b"EVALSHA", script.sha, len(keys), *keys, *args)
            except _RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
            # The server restarted (or SCRIPT FLUSH): load it again, once.
            await commands.call(b"SCRIPT", b"LOAD", script.source)
            return await commands.call(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except (BrokerUnavailable, _RespError) as exc:
            # An error reply here means an overloaded or misconfigured server (OOM,
            # READONLY replica, ACL): as temporary for the client as a lost connection.
            self.stats["command_errors"] += 1
            shard.report(script.name, exc)
            raise BrokerUnavailable(f"{shard.name}: {script.name}: {_detail(exc)}") from exc

    async def _call(self, shard: _Shard, what: str, *args: bytes | str | int) -> Any:
        try:
            return await shard.commands.call(*args)
        except (BrokerUnavailable, _RespError) as exc:
            self.stats["command_errors"] += 1
            shard.report(what, exc)
            raise BrokerUnavailable(f"{shard.name}: {what}: {_detail(exc)}") from exc

    # ---- Broker: fan-out

    async def subscribe(self, channel: str) -> None:
        """Start hearing ``channel``; returns once Redis confirmed the subscription.

        Idempotent: for a channel already subscribed it returns at once, and while a
        SUBSCRIBE is in flight it waits for the same confirmation. On BrokerUnavailable the
        channel stays wanted (it is subscribed again and listed in ``shard_reset`` when the
        shard is back); call ``unsubscribe`` to give it up."""
        if not self._shards:
            raise BrokerUnavailable("broker not started")
        await self._listener(channel).subscribe(self._pubsub_name(channel), channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop hearing ``channel``: nothing more is delivered for it from now on."""
        if self._shards:
            self._listener(channel).unsubscribe(self._pubsub_name(channel))

    async def publish(self, channel: str, pub: Publication, history_size: int,
                      history_ttl: float) -> StreamPosition:
        """Append to the stream (when history is on) and fan out, atomically on the
        channel's shard. Raises BrokerUnavailable when the shard cannot be reached."""
        shard = self._shard(channel)
        body = encode_body(pub)
        try:
            if history_size > 0 and history_ttl > 0:
                ttl_ms = max(1, math.ceil(history_ttl * 1000))
                res = await self._script(
                    shard, lua.PUBLISH, self._history_keys(channel),
                    [self._pubsub_name(channel), body, history_size, ttl_ms, self._meta_ttl,
                     secrets.token_hex(4)])
                pub.offset = int(res[0])
                return StreamPosition(offset=pub.offset, epoch=res[1].decode())
            await self._call(shard, "publish", "PUBLISH", self._pubsub_name(channel),
                             b"p0::" + body)
            return StreamPosition()
        except BrokerUnavailable:
            self.stats["publish_errors"] += 1
            raise

    def publish_committed(self, channel: str, pub: Publication, epoch: str) -> asyncio.Future[Any]:
        """Fan out a publication that PostgreSQL already sequenced and committed (durable
        namespaces). Queued at once, so calls made in offset order are sent in that order;
        a lost one is filled from PostgreSQL by the receivers' reorder buffers."""
        payload = b"p%d:%s:" % (pub.offset, epoch.encode()) + encode_body(pub)
        fut = self._shard(channel).commands.send(b"PUBLISH", self._pubsub_name(channel), payload)
        fut.add_done_callback(self._committed_sent)
        return fut

    def _committed_sent(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.stats["publish_errors"] += 1

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Tell every node's subscribers of ``channel`` that ``info`` joined."""
        await self._call(self._shard(channel), "join", "PUBLISH", self._pubsub_name(channel),
                         b"j" + encode_info(info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """Tell every node's subscribers of ``channel`` that ``info`` left."""
        await self._call(self._shard(channel), "leave", "PUBLISH", self._pubsub_name(channel),
                         b"l" + encode_info(info))

    # ---- Broker: history

    async def history(self, channel: str, limit: int, since: StreamPosition | None,
                      reverse: bool) -> StreamState:
        """Publications of the stream, MemoryBroker's semantics: ``limit`` < 0 all retained,
        0 position only; ``since`` filters by offset (after it, or before it when
        ``reverse``). Raises ClientError 112 when ``since.epoch`` is not the stream's."""
        mode, first, second = "0", "", ""
        count = "" if limit < 0 else str(limit)
        if limit != 0:
            if not reverse:
                mode, second = "f", "+"
                if since is None:
                    first = "-"
                elif since.offset >= (1 << 63):
                    mode = "e"  # beyond any offset a stream can reach
                else:
                    first = f"{since.offset + 1}-0"
            else:
                mode, second = "r", "-"
                if since is None:
                    first = "+"
                elif since.offset <= 0:
                    mode = "e"
                else:
                    first = f"{min(since.offset - 1, (1 << 63) - 1)}-0"
        res = await self._script(
            self._shard(channel), lua.HISTORY, self._history_keys(channel),
            [secrets.token_hex(4), self._meta_ttl, since.epoch if since is not None else "",
             mode, first, second, count])
        top, epoch = int(res[0]), res[1].decode()
        if not int(res[2]):
            raise codes.error(codes.UNRECOVERABLE_POSITION)
        pubs: list[Publication] = []
        if len(res) > 3:
            try:
                pubs = [decode_body(fields[1], int(entry_id.split(b"-", 1)[0]))
                        for entry_id, fields in res[3]]
            except (msgspec.DecodeError, ValueError, IndexError) as exc:
                log.error("channel %r: unreadable history entry: %s", channel, exc)
                raise codes.error(codes.INTERNAL) from exc
        return StreamState(epoch=epoch, offset=top, publications=pubs)

    async def remove_history(self, channel: str) -> None:
        """Drop the retained publications; the epoch and top offset stay."""
        await self._call(self._shard(channel), "remove_history", "DEL",
                         self._history_keys(channel)[0])

    # ---- Broker: presence

    async def add_presence(self, channel: str, info: ClientInfo) -> None:
        """Add (or refresh) ``info`` in the channel's presence for ``presence_ttl``."""
        await self._script(self._shard(channel), lua.PRESENCE_ADD, self._presence_keys(channel),
                           [info.client, info.user, encode_info(info), self._presence_ttl_ms])

    async def remove_presence(self, channel: str, client: str) -> None:
        """Remove ``client`` from the channel's presence."""
        await self._script(self._shard(channel), lua.PRESENCE_REMOVE,
                           self._presence_keys(channel), [client])

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Present clients (expired entries removed first): client id -> info."""
        flat = await self._script(self._shard(channel), lua.PRESENCE_GET,
                                  self._presence_keys(channel), [])
        out: dict[str, ClientInfo] = {}
        for i in range(0, len(flat), 2):
            try:
                out[flat[i].decode()] = decode_info(flat[i + 1])
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                log.error("channel %r: unreadable presence entry: %s", channel, exc)
        return out

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(clients, distinct users) present, computed in Redis from counters."""
        clients, users = await self._script(self._shard(channel), lua.PRESENCE_STATS,
                                            self._presence_keys(channel), [])
        return int(clients), int(users)

    async def refresh_presence(self, items: Iterable[tuple[str, ClientInfo]]) -> None:
        """Re-add many (channel, info) pairs: one pipeline per shard, shards in parallel.
        Call every ``presence_ttl``/3 for local presence subscribers, so that the clients of
        a node that died vanish within one TTL. Raises BrokerUnavailable if any shard failed
        (the others were refreshed)."""
        if not self._shards:
            raise BrokerUnavailable("broker not started")
        by_shard: dict[int, list[tuple[str, ClientInfo]]] = {}
        for channel, info in items:
            by_shard.setdefault(self.shard_of(channel), []).append((channel, info))
        results = await asyncio.gather(
            *(self._refresh_shard(self._shards[i], group) for i, group in by_shard.items()),
            return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _refresh_shard(self, shard: _Shard, items: list[tuple[str, ClientInfo]]) -> None:
        commands, sha, ttl = shard.commands, lua.PRESENCE_ADD.sha, self._presence_ttl_ms
        try:
            for i in range(0, len(items), REFRESH_BATCH):
                batch = items[i:i + REFRESH_BATCH]
                for attempt in range(2):
                    await commands.connect()
                    replies = [commands.send(b"EVALSHA", sha, 4, *self._presence_keys(channel),
                                             info.client, info.user, encode_info(info), ttl)
                               for channel, info in batch]
                    results = await asyncio.gather(*replies, return_exceptions=True)
                    failed = [(item, r) for item, r in zip(batch, results, strict=True)
                              if isinstance(r, BaseException)]
                    if not failed:
                        break
                    if attempt == 0 and all(str(r).startswith("NOSCRIPT") for _, r in failed):
                        await commands.call(b"SCRIPT", b"LOAD", lua.PRESENCE_ADD.source)
                        batch = [item for item, _ in failed]
                        continue
                    raise failed[0][1]
        except (BrokerUnavailable, _RespError) as exc:
            self.stats["command_errors"] += 1
            shard.report("refresh_presence", exc)
            raise BrokerUnavailable(f"{shard.name}: refresh_presence: {_detail(exc)}") from exc

    # ---- control and node registry

    async def publish_control(self, data: bytes) -> None:
        """Send ``data`` to every node's ``deliver_control`` (this node's included)."""
        if not self._shards:
            raise BrokerUnavailable("broker not started")
        await self._call(self._shards[0], "control", "PUBLISH", self._control_name, data)

    async def register_node(self, info: dict[str, Any], ttl: float) -> None:
        """Record this node (``info`` as JSON) as live for ``ttl`` seconds."""
        if not self._shards:
            raise BrokerUnavailable("broker not started")
        await self._script(self._shards[0], lua.NODES_REGISTER, self._nodes_keys,
                           [self.node_id, orjson.dumps(info), max(1, math.ceil(ttl * 1000))])
        self._registered = True

    async def nodes(self) -> list[dict[str, Any]]:
        """``info`` of every node whose registration has not expired."""
        if not self._shards:
            raise BrokerUnavailable("broker not started")
        values = await self._script(self._shards[0], lua.NODES_LIST, self._nodes_keys, [])
        return [orjson.loads(v) for v in values]

    # ---- deliveries (called by listeners, synchronously, in arrival order)

    def _deliver(self, channel: str, data: bytes) -> None:
        deliveries = self._deliveries
        if deliveries is None:
            return
        self.stats["messages"] += 1
        tag = data[:1]
        pub: Publication | None = None
        info: ClientInfo | None = None
        try:
            if tag == b"p":
                pub = decode_publication_message(data)[0]
            elif tag == b"j" or tag == b"l":
                info = decode_info(memoryview(data)[1:])
            else:
                raise ValueError(f"unknown payload tag {tag!r}")
        except (ValueError, msgspec.DecodeError) as exc:
            self.stats["bad_messages"] += 1
            log.error("channel %r: unreadable pub/sub payload: %s", channel, exc)
            return
        try:
            if pub is not None:
                deliveries.deliver_publication(channel, pub)
            elif tag == b"j":
                deliveries.deliver_join(channel, info)  # type: ignore[arg-type]
            else:
                deliveries.deliver_leave(channel, info)  # type: ignore[arg-type]
        except Exception:
            self.stats["delivery_errors"] += 1
            log.exception("channel %r: delivery failed", channel)

    def _deliver_control(self, data: bytes) -> None:
        if self._on_control is None:
            return
        try:
            self._on_control(data)
        except Exception:
            self.stats["delivery_errors"] += 1
            log.exception("control delivery failed")

    async def _shard_reset(self, channels: list[str]) -> None:
        if not channels:
            return
        self.stats["shard_resets"] += 1
        if self._on_reset is None:
            return
        try:
            result = self._on_reset(channels)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("shard_reset handler failed")
