"""The connections of the Redis broker: per shard one pipelined command connection and a
few pub/sub connections, as plain asyncio protocols speaking RESP2 (gateway/broker/resp.py).

- The command connection is auto-pipelined: the commands of one event-loop step leave in one
  write and replies are matched to callers in order.
- A pub/sub connection parses and delivers its frames synchronously, in arrival order (no
  task and no await per message), batches SUBSCRIBE/UNSUBSCRIBE, pings when idle, and
  reconnects by itself with capped, jittered exponential backoff; then it resubscribes and
  reports the channels whose publications may have been missed.

What a pub/sub connection delivers goes to a :class:`PubSubSink` (the broker), which knows
the payload format; nothing here knows channels' streams or presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import ssl
import time
from collections import deque
from typing import Any, Protocol

from centrifugo_bridge import codes
from centrifugo_bridge.codes import ClientError
from gateway.broker.redis_urls import parse_redis_url, redact
from gateway.broker.resp import ProtocolError, RespError, encode_command, parse

__all__ = [
    "BATCH_DELAY", "BATCH_MAX", "COMMAND_TIMEOUT", "CONNECT_RETRY_DELAY", "CONNECT_TIMEOUT",
    "CONTROL", "ERROR_LOG_INTERVAL", "PING_INTERVAL", "RECONNECT_BASE_DELAY",
    "RECONNECT_MAX_DELAY", "SUBSCRIBE_TIMEOUT", "BrokerUnavailable", "Commands", "Listener",
    "Owner", "PubSubSink", "RespProtocol", "Shard", "detail", "open_connection",
]

# The broker's logger: connection failures read as the broker's.
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

CONTROL = object()  # marks the control channel in a listener's channel map
_MISSING = object()
_rng = secrets.SystemRandom()


class BrokerUnavailable(ClientError):
    """A Redis shard cannot be reached: code 100, temporary, so clients retry."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(*codes.INTERNAL)
        self.detail = detail


class PubSubSink(Protocol):
    """Where the pub/sub connections of the shards report (the broker)."""

    # Counters by event name (reconnects, subscribe_commands, ...), exported as metrics.
    stats: dict[str, int]

    def on_message(self, channel: str, data: bytes) -> None:
        """A message of ``channel``, in the order the shard published it."""

    def on_control(self, data: bytes) -> None:
        """A message of the control channel."""

    async def on_resubscribed(self, channels: list[str]) -> None:
        """A connection came back and resubscribed ``channels``: what was published to them
        meanwhile was not heard."""



# ---- one socket speaking RESP ---------------------------------------------------------------


class Owner:
    """What a ``RespProtocol`` reports to: parsed frames and the end of the connection."""

    name: str

    def on_frames(self, proto: RespProtocol, frames: list[Any]) -> None:
        raise NotImplementedError

    def on_lost(self, proto: RespProtocol, exc: Exception | None) -> None:
        raise NotImplementedError


class RespProtocol(asyncio.Protocol):
    """One socket to Redis: RESP frames are parsed and handed to the owner in order."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream socket's transport (asyncio types the argument as the base class).
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        frames: list[Any] = []
        pos = 0
        try:
            while pos < len(buf):
                parsed = parse(buf, pos)
                if parsed is None:
                    break
                frames.append(parsed[0])
                pos = parsed[1]
        except (ProtocolError, ValueError) as exc:
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



async def open_connection(shard: Shard, owner: Owner) -> RespProtocol:
    """A new socket to ``shard``'s server (TCP, TLS or Unix), reporting to ``owner``."""
    loop = asyncio.get_running_loop()
    proto = RespProtocol(owner)
    address = shard.address
    if address.socket_path:
        connect = loop.create_unix_connection(lambda: proto, address.socket_path)
    else:
        connect = loop.create_connection(lambda: proto, address.host, address.port, ssl=shard.ssl)
    await asyncio.wait_for(connect, CONNECT_TIMEOUT)
    return proto


def detail(exc: BaseException) -> str:
    """The most telling text of a connection failure, for logs and client errors."""
    return getattr(exc, "detail", "") or str(exc) or type(exc).__name__


class Shard:
    """One Redis server: a pipelined command connection and a few pub/sub listeners."""

    def __init__(self, index: int, url: str, pubsub: int, sink: PubSubSink,
                 command_timeout: float = COMMAND_TIMEOUT) -> None:
        self.index = index
        self.address = parse_redis_url(url)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if self.address.tls else None
        # Seconds a command may wait for its reply before the connection counts as dead.
        self.command_timeout = command_timeout
        self.name = f"shard {index} ({redact(url)})"
        self.commands = Commands(self)
        self.listeners = [Listener(sink, self, i) for i in range(pubsub)]
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
            log.warning("%s: %s failed: %s%s", self.name, what, detail(exc), more)
            self._last_log = now
            self._suppressed = 0
        else:
            self._suppressed += 1


class Commands(Owner):
    """The command connection of a shard, pipelined: the commands issued during one
    event-loop step leave in one write and replies are matched to callers in order. Redis
    runs a shard's commands one at a time anyway, so one connection does not limit it, and
    it saves a round trip per publish.

    Nothing is retried here: a publish that failed after it was sent may have happened, so
    retrying could publish twice. Callers get BrokerUnavailable and the client retries."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.name = f"{shard.name} commands"
        self.timeout = shard.command_timeout
        self._proto: RespProtocol | None = None
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
        """Send one command and return its reply (``RespError`` for an error reply)."""
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
            proto = await open_connection(self.shard, self)
            self._proto = proto
            replies = [self.send(*command) for command in address.handshake()]
            if address.db:
                replies.append(self.send(b"SELECT", address.db))
            for result in await asyncio.gather(*replies, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        except (OSError, TimeoutError, RespError, BrokerUnavailable) as exc:
            self.drop(None)
            self.retry_at = time.monotonic() + CONNECT_RETRY_DELAY
            raise BrokerUnavailable(f"{self.name}: cannot connect: {detail(exc)}") from exc
        if not self.shard.up:
            self.shard.back()

    def send(self, *args: bytes | str | int) -> asyncio.Future[Any]:
        """Queue one command on the current connection; the future gets its reply."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self._proto is None:
            fut.set_exception(BrokerUnavailable(f"{self.name}: not connected"))
            return fut
        self._pending.append((fut, loop.time() + self.timeout))
        self._out.append(encode_command(*args))
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        if self._watch is None:
            self._watch = loop.call_later(self.timeout, self._check)
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
                        self.timeout)
            self.drop(BrokerUnavailable(f"{self.name}: no reply in {self.timeout} s"))
            return
        self._watch = loop.call_later(deadline - loop.time(), self._check)

    def on_frames(self, proto: RespProtocol, frames: list[Any]) -> None:
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
            if isinstance(frame, RespError):
                fut.set_exception(frame)
            else:
                fut.set_result(frame)

    def on_lost(self, proto: RespProtocol, exc: Exception | None) -> None:
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


class Listener(Owner):
    """One pub/sub connection: the channels this process wants from it, batching of
    SUBSCRIBE/UNSUBSCRIBE, keepalive and reconnection."""

    def __init__(self, sink: PubSubSink, shard: Shard, index: int) -> None:
        self.sink = sink
        self.shard = shard
        self.name = f"{shard.name} pub/sub {index}"
        # Redis channel name -> our channel name (or CONTROL): what we want to hear.
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
        self._proto: RespProtocol | None = None
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
        proto = await open_connection(self.shard, self)
        self._proto = proto
        try:
            for command in self.shard.address.handshake():
                await asyncio.wait_for(self._request(encode_command(*command)),
                                       self.shard.command_timeout)
            self.connected = True
            self._dirty.update(self.wanted)
            self._flush()
            # Replies come in command order: the PING answer follows every confirmation.
            await asyncio.wait_for(self._request(encode_command(b"PING")), SUBSCRIBE_TIMEOUT)
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
            self.sink.stats["reconnects"] += 1
            channels = [ch for ch in self.wanted.values() if ch is not CONTROL]
            log.info("%s: reconnected after %.2f s (%d attempts), resubscribed %d channels",
                     self.name, time.monotonic() - started, attempt, len(channels))
            await self.sink.on_resubscribed(channels)

    def on_lost(self, proto: RespProtocol, exc: Exception | None) -> None:
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
            reply = self._replies.popleft()
            if reply is not None and not reply.done():
                reply.set_exception(BrokerUnavailable(detail))
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
        self._proto.write(encode_command(b"PING"))
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

    def on_frames(self, proto: RespProtocol, frames: list[Any]) -> None:
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
            elif isinstance(frame, RespError):
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
        if channel is CONTROL:
            self.sink.on_control(data)
        else:
            self.sink.on_message(channel, data)

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
        stats = self.sink.stats
        for verb, names, key in ((b"UNSUBSCRIBE", unsubs, "unsubscribe_commands"),
                                 (b"SUBSCRIBE", subs, "subscribe_commands")):
            for i in range(0, len(names), BATCH_MAX):
                chunk = names[i:i + BATCH_MAX]
                proto.write(encode_command(verb, *chunk))
                stats[key] += 1
                for name in chunk:
                    self._inflight[name] = self._inflight.get(name, 0) + 1
                    if verb == b"SUBSCRIBE":
                        self._sent.add(name)
                    else:
                        self._sent.discard(name)
