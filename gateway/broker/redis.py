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
- Connections are plain asyncio protocols speaking RESP2 (no client library; resp.py is the
  wire format, redis_connections.py the sockets): per shard one command connection,
  auto-pipelined (the commands of one event-loop step leave in one write), and the pub/sub
  connections, whose frames are parsed and delivered synchronously in arrival order (no
  task and no await per message).
- A shard that is down makes operations on its channels raise ``BrokerUnavailable`` (code 100,
  temporary) within the socket timeouts. Pub/sub connections reconnect by themselves with
  capped, jittered exponential backoff, resubscribe, then call ``deliveries.shard_reset``
  because publications may have been missed meanwhile.
- Server URLs: redis://, rediss://, valkey://, valkeys:// and unix:// (redis_urls.py, the
  parser the configuration check uses too).

Pub/sub payloads: ``p<offset>:<epoch>:<body>`` (a publication; offset 0 and empty epoch without
history; the script writes the header because only it knows the offset), ``j<info>`` (join),
``l<info>`` (leave); ``body`` and ``info`` are msgpack (msgspec, array-like Structs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import orjson

from centrifugo_bridge import codes
from centrifugo_bridge.effects import StreamState
from centrifugo_bridge.protocol import EMPTY, ClientInfo, Publication, Raw, StreamPosition
from gateway.broker import redis_scripts as lua
from gateway.broker.base import ClusterBroker, Deliveries
from gateway.broker.redis_connections import (
    COMMAND_TIMEOUT,
    CONTROL,
    BrokerUnavailable,
    Listener,
    RespProtocol,
    Shard,
)
from gateway.broker.redis_connections import (
    detail as _detail,
)
from gateway.broker.redis_urls import parse_redis_url, redact
from gateway.broker.resp import RespError
from gateway.broker.sharding import channel_hashes, jump_hash, shard_index

__all__ = [
    "COMMAND_TIMEOUT", "BrokerUnavailable", "RedisBroker", "decode_body", "decode_info",
    "decode_publication_message", "encode_body", "encode_info", "redact", "shard_index",
]

log = logging.getLogger("sentchat.broker.redis")

# Presence refreshes go out in pipelines of this many scripts: one write of ~300 KB, and the
# shard serves other clients between pipelines.
REFRESH_BATCH = 1000

# The RESP socket under its former name (tests parse replies through it directly).
_Proto = RespProtocol


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


# ---- the broker -----------------------------------------------------------------------------


class RedisBroker(ClusterBroker):
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
        for url in urls:
            parse_redis_url(url)  # a bad URL fails here, naming itself, not at start()
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
        self._shards: list[Shard] = []
        self._deliveries: Deliveries | None = None
        self._on_control: Callable[[bytes], None] | None = None
        self._on_reset: Callable[[list[str]], None] | None = None
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
        self._on_control = deliveries.deliver_control
        self._on_reset = deliveries.shard_reset
        # COMMAND_TIMEOUT read now, not at import: tests shorten it for one broker.
        self._shards = [Shard(i, url, self.pubsub_per_shard, self, COMMAND_TIMEOUT)
                        for i, url in enumerate(self.urls)]
        control = self._listener(self._control_name.decode(), 0)
        control.wanted[self._control_name] = CONTROL
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
        except (OSError, TimeoutError, BrokerUnavailable, RespError) as exc:
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
            with contextlib.suppress(BrokerUnavailable, RespError, TimeoutError):
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

    def _listener(self, channel: str, shard: int | None = None) -> Listener:
        h_shard, h_conn = channel_hashes(channel)
        n = len(self._shards)
        index = shard if shard is not None else (jump_hash(h_shard, n) if n > 1 else 0)
        listeners = self._shards[index].listeners
        return listeners[h_conn % len(listeners)]

    def _shard(self, channel: str) -> Shard:
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

    async def _script(self, shard: Shard, script: lua.Script, keys: Sequence[str],
                      args: Sequence[bytes | str | int]) -> Any:
        commands = shard.commands
        try:
            try:
                return await commands.call(b"EVALSHA", script.sha, len(keys), *keys, *args)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
            # The server restarted (or SCRIPT FLUSH): load it again, once.
            await commands.call(b"SCRIPT", b"LOAD", script.source)
            return await commands.call(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except (BrokerUnavailable, RespError) as exc:
            # An error reply here means an overloaded or misconfigured server (OOM,
            # READONLY replica, ACL): as temporary for the client as a lost connection.
            self.stats["command_errors"] += 1
            shard.report(script.name, exc)
            raise BrokerUnavailable(f"{shard.name}: {script.name}: {_detail(exc)}") from exc

    async def _call(self, shard: Shard, what: str, *args: bytes | str | int) -> Any:
        try:
            return await shard.commands.call(*args)
        except (BrokerUnavailable, RespError) as exc:
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

    async def _refresh_shard(self, shard: Shard, items: list[tuple[str, ClientInfo]]) -> None:
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
        except (BrokerUnavailable, RespError) as exc:
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

    def on_message(self, channel: str, data: bytes) -> None:
        """A pub/sub message of ``channel``: decode it and hand it to the node."""
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
            elif info is not None:
                if tag == b"j":
                    deliveries.deliver_join(channel, info)
                else:
                    deliveries.deliver_leave(channel, info)
        except Exception:
            self.stats["delivery_errors"] += 1
            log.exception("channel %r: delivery failed", channel)

    def on_control(self, data: bytes) -> None:
        """A control message: hand it to the node."""
        if self._on_control is None:
            return
        try:
            self._on_control(data)
        except Exception:
            self.stats["delivery_errors"] += 1
            log.exception("control delivery failed")

    async def on_resubscribed(self, channels: list[str]) -> None:
        """A pub/sub connection is back: its channels may have missed publications."""
        if not channels:
            return
        self.stats["shard_resets"] += 1
        if self._on_reset is None:
            return
        try:
            self._on_reset(channels)
        except Exception:
            log.exception("shard_reset handler failed")
