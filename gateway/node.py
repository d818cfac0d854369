"""The object that wires a running node: settings, hub, broker, token verification, metrics,
connections, and the operations both clients (via effects) and the server API use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import orjson

from centrifugo_bridge import codes, effects
from centrifugo_bridge.codes import ClientError, Disconnect, DisconnectError
from centrifugo_bridge.protocol import ClientInfo, Publication, Raw, StreamPosition
from centrifugo_bridge.session import Session
from centrifugo_bridge.tokens import InvalidToken, TokenExpired
from gateway import LOG_ROOT, __version__
from gateway.auth import TokenVerifier
from gateway.broker.base import Broker, ClusterBroker
from gateway.broker.memory import MemoryBroker
from gateway.config import Settings
from gateway.connection import Connection
from gateway.durable import DurableStreams
from gateway.extension import (
    FALLBACK_PREFIX,
    RESERVED_PREFIXES,
    AccessCheck,
    CommitListener,
    Engine,
    Extension,
    HttpHandler,
    OnlineListener,
    RpcHandler,
)
from gateway.frames import build_frame
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.reorder import Reorder
from gateway.timers import TimerWheel

log = logging.getLogger(f"{LOG_ROOT}.node")

# Channels per node listed in the registry for the `channels` API.
CHANNELS_IN_REGISTRY = 10_000
# Centrifugo keeps idempotent publish results for 5 minutes.
IDEMPOTENCY_WINDOW = 300.0
# Bound on remembered keys of ephemeral publications (oldest forgotten first).
IDEMPOTENCY_MAX_KEYS = 100_000

RPCHandler = RpcHandler  # the older name, kept for importers
MessageHandler = Callable[[str, str, bytes], Awaitable[None]]


class Node:
    """One gateway process."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.uid = str(uuid.uuid4())
        self.name = settings.node.name or f"{socket.gethostname()}_{os.getpid()}"
        self.started_at = time.time()
        self.rules = settings.channel_rules()
        self.session_config = settings.session_config(__version__)
        self.verifier = TokenVerifier(settings.client.token)
        sub = settings.client.subscription_token
        self.sub_verifier = TokenVerifier(sub) if sub is not None else self.verifier
        self.broker: Broker = broker or self._make_broker(settings)
        # The same broker when other processes share it (control, registry, presence).
        self.cluster: ClusterBroker | None = (
            self.broker if isinstance(self.broker, ClusterBroker) else None)
        # `clustered`, remembered: asked once per committed durable publication.
        self._shared_broker = self.clustered
        self.durable: DurableStreams | None = None
        if settings.durable:
            ch = settings.channel
            retentions = [ns.retention for ns in ch.namespaces if ns.durable]
            if ch.without_namespace.durable:
                retentions.append(ch.without_namespace.retention)
            # Partitions are dropped only when every durable namespace is past them.
            max_retention = 0.0 if 0.0 in retentions else max(retentions)
            self.durable = DurableStreams(settings.storage, self._committed, max_retention,
                                          shared=bool(settings.redis.urls),
                                          listening=self._hears_committed)
        # (channel, idempotency key) -> (expiry, result) for ephemeral publications.
        self._idempotent: dict[tuple[str, str], tuple[float, StreamPosition]] = {}
        self.hub: Hub[Connection] = Hub()
        self.metrics = Metrics()
        self.timers = TimerWheel()
        self.write_buffer_limit = settings.client.write_buffer_limit
        self.write_delay = settings.client.write_delay
        # Connections holding frames until the next flush (client.write_delay > 0).
        self._delayed: list[Connection] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.connections: dict[str, Connection] = {}
        self.users: dict[str, set[Connection]] = {}
        self.rpc_handlers: dict[str, RpcHandler] = {"whoami": self._rpc_whoami}
        self.message_handler: MessageHandler | None = None
        # Namespace option `acl` names one of these: (user, channel, action) -> allowed.
        self.access_providers: dict[str, AccessCheck] = {}
        # Products installed by the composition root (gateway/extension.py), by name.
        self.extensions: dict[str, Extension] = {}
        # Path prefix -> handler, longest first: the server routes by this table.
        self.http_prefixes: list[tuple[str, HttpHandler]] = []
        # Told (user, True) when a user's first connection on this node registers and
        # (user, False) after its last one closed here.
        self._online_listeners: tuple[OnlineListener, ...] = ()
        self._user_id_checks: tuple[Callable[[str], str | None], ...] = ()
        # Told of each durable publication this node committed (empty on the hot path
        # unless an extension asked).
        self._commit_listeners: tuple[CommitListener, ...] = ()
        self._background: set[asyncio.Task[Any]] = set()
        # Every socket past the WebSocket handshake, connected or still before `connect`.
        self._all: set[Connection] = set()
        # Local presence-enabled subscriptions, re-announced to a shared broker periodically
        # so that they expire there when this process dies: channel -> {client: info}.
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._periodic: asyncio.Task[None] | None = None
        # Durable channels heard through Redis are delivered in offset order.
        self._reorder: Reorder | None = None
        if self.durable is not None and self.clustered:
            self._reorder = Reorder(self._fan_out, self._fill_gap,
                                    lambda channel: self.shard_reset([channel]))

    def _make_broker(self, settings: Settings) -> Broker:
        r = settings.redis
        if not r.urls:
            return MemoryBroker()
        from gateway.broker.redis import RedisBroker

        return RedisBroker(r.urls, node_id=self.uid, pubsub_per_shard=r.pubsub_per_shard,
                           presence_ttl=r.presence_ttl, prefix=r.prefix)

    def install(self, extension: Extension) -> None:
        """Install ``extension`` before ``start``: its RPC methods, HTTP prefixes, access
        providers and listeners join the node's tables. A name, method, prefix or provider
        already taken is refused (ValueError), so two products never shadow each other."""
        name = extension.name
        if name in self.extensions:
            raise ValueError(f"extension {name!r} is already installed")
        reg = extension.register(Engine(self))
        taken = sorted(set(reg.rpc_methods) & set(self.rpc_handlers))
        if taken:
            raise ValueError(f"extension {name!r}: RPC methods already registered: {', '.join(taken)}")
        taken = sorted(set(reg.access_checks) & set(self.access_providers))
        if taken:
            raise ValueError(f"extension {name!r}: access providers already registered: {', '.join(taken)}")
        ours = [p for p, _ in self.http_prefixes]
        for prefix in reg.http_prefixes:
            if not prefix.startswith("/"):
                raise ValueError(f"extension {name!r}: HTTP prefix {prefix!r} must start with '/'")
            if prefix == FALLBACK_PREFIX:  # overlaps everything by design; one holder only
                clash = [p for p in ours if p == FALLBACK_PREFIX]
            else:
                clash = [p for p in (*RESERVED_PREFIXES, *ours)
                         if p != FALLBACK_PREFIX and (p.startswith(prefix) or prefix.startswith(p))]
            if clash:
                raise ValueError(f"extension {name!r}: HTTP prefix {prefix!r} overlaps {clash[0]!r}")
        self.extensions[name] = extension
        self.rpc_handlers.update(reg.rpc_methods)
        self.access_providers.update(reg.access_checks)
        self.http_prefixes = sorted([*self.http_prefixes, *reg.http_prefixes.items()],
                                    key=lambda item: -len(item[0]))
        if reg.on_user_online is not None:
            self._online_listeners += (reg.on_user_online,)
        if reg.user_id_check is not None:
            self._user_id_checks += (reg.user_id_check,)
        if reg.on_committed is not None:
            self._commit_listeners += (reg.on_committed,)

    def http_handler(self, path: str) -> HttpHandler | None:
        """The handler of the longest registered prefix of ``path``, if any."""
        for prefix, handler in self.http_prefixes:
            if path.startswith(prefix):
                if prefix == FALLBACK_PREFIX and path.startswith(RESERVED_PREFIXES):
                    return None  # the engine's own paths are never the fallback's
                return handler
        return None

    def is_fallback(self, path: str) -> bool:
        """Whether ``path`` reaches only the fallback prefix (``/``: the web client), not a
        prefix an extension registered for an API."""
        for prefix, _ in self.http_prefixes:
            if path.startswith(prefix):
                return prefix == FALLBACK_PREFIX
        return False

    def _user_online(self, user: str, online: bool) -> None:
        for listener in self._online_listeners:
            try:
                listener(user, online)
            except Exception:
                # One product failing must not break connection bookkeeping.
                log.exception("online listener failed")

    @property
    def clustered(self) -> bool:
        """Whether other processes share this node's broker (control, registry, presence)."""
        return self.cluster is not None

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the broker and, for durable namespaces, PostgreSQL
        (``settings.storage.postgres_dsn`` must be set by then)."""
        if self.durable is not None:
            dsn = self.settings.storage.postgres_dsn
            if not dsn:
                raise RuntimeError("durable namespaces need storage.postgres_dsn")
            await self.durable.start(dsn)
        for extension in self.extensions.values():
            await extension.start()
        await self.broker.start(self)
        self.timers.start()
        if self.cluster is not None:
            await self._announce(self.cluster)
            self._periodic = asyncio.get_running_loop().create_task(self._keep_alive(self.cluster))

    async def stop(self) -> None:
        """Close every connection with 3001 (shutdown: clients reconnect elsewhere)."""
        self.timers.stop()
        if self._periodic is not None:
            self._periodic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._periodic
        for conn in list(self._all):
            conn.close(codes.SHUTDOWN)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for extension in reversed(list(self.extensions.values())):
            await extension.stop()
        if self.durable is not None:
            await self.durable.close()
        await self.broker.close()

    def new_session(self, codec_name: str) -> Session:
        from centrifugo_bridge.codecs import codec_for

        return Session(self.session_config, self.rules, codec_for(codec_name),
                       str(uuid.uuid4()), time.time())

    def attach(self, conn: Connection) -> None:
        """A socket finished the handshake: watch it for the stale-connect deadline."""
        self._all.add(conn)
        self.metrics.connections.inc()
        conn.reschedule()

    def delay_write(self, conn: Connection) -> None:
        """``conn`` holds frames: write them with everyone else's at the next flush."""
        self._delayed.append(conn)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.write_delay, self._flush_writes)

    def _flush_writes(self) -> None:
        self._flush_handle = None
        conns, self._delayed = self._delayed, []
        for conn in conns:
            conn.flush_delayed()

    def connection_closed(self, conn: Connection) -> None:
        self._all.discard(conn)
        gone = ""
        self.metrics.connections.dec()
        if self.connections.get(conn.client_id) is conn:
            del self.connections[conn.client_id]
            user_conns = self.users.get(conn.session.user)
            if user_conns is not None:
                user_conns.discard(conn)
                if not user_conns:
                    del self.users[conn.session.user]
                    gone = conn.session.user
        for effect in conn.session.close():
            self.detach(effect, conn)
        if gone and self._online_listeners:
            self._user_online(gone, False)

    def detach(self, effect: effects.UnsubscribeChannel, conn: Connection) -> None:
        """Unsubscribe without waiting (timer expiry, disconnect): local delivery stops now,
        the broker-side work (presence, leave) follows in the background."""
        last = self._unregister(effect.channel, conn)
        self._spawn(self._broker_unsubscribe(effect, last))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    # ---- driving a session handler ----------------------------------------------------

    async def _verify(self, verifier: TokenVerifier, token: str, kind: str,
                      conn: Connection) -> dict[str, Any]:
        """Claims of a valid token. A refused one is logged with its reason — the client
        only hears "invalid token" / "token expired", an operator needs to know why (wrong
        secret, expired, not yet valid, wrong audience) — never with the token itself."""
        try:
            if not verifier.configured:
                raise InvalidToken("no token keys configured")
            claims = await verifier.verify(token)
            if kind == "connection" and self._user_id_checks:
                user = claims.get(self.settings.client.token.user_id_claim or "sub")
                if isinstance(user, str) and user:
                    for check in self._user_id_checks:
                        reason = check(user)
                        if reason is not None:
                            raise InvalidToken(f"user id {user[:40]!r}: {reason}")
            return claims
        except (InvalidToken, TokenExpired) as exc:
            log.info("%s token refused for client %s from %s: %s", kind, conn.client_id or "-",
                     conn.peer, str(exc) or type(exc).__name__)
            raise

    async def drive(self, gen: Generator[effects.Effect, Any, Any], conn: Connection,
                    effect: effects.Effect | None = None) -> Any:
        """Run a session generator to completion, performing each effect it yields;
        ``effect``: the one it already yielded when the caller started it."""
        try:
            if effect is None:
                effect = next(gen)
            while True:
                try:
                    value = await self.perform(effect, conn)
                except (ClientError, DisconnectError, TokenExpired, InvalidToken) as exc:
                    effect = gen.throw(exc)
                    continue
                except Exception:
                    log.exception("effect %s failed", type(effect).__name__)
                    effect = gen.throw(codes.error(codes.INTERNAL))
                    continue
                effect = gen.send(value)
        except StopIteration as stop:
            return stop.value

    async def perform(self, effect: effects.Effect, conn: Connection) -> Any:
        """Carry out one effect for ``conn``."""
        match effect:
            case effects.PublishToChannel():
                return await self.publish(effect.channel, effect.data, info=effect.info,
                                          source="client")
            case effects.SubscribeChannel():
                return await self._subscribe(effect, conn)
            case effects.UnsubscribeChannel():
                return await self._unsubscribe(effect, conn)
            case effects.ReadPresence():
                return await self.broker.presence(effect.channel)
            case effects.ReadPresenceStats():
                return await self.broker.presence_stats(effect.channel)
            case effects.ReadHistory():
                return await self.history(effect.channel, effect.limit, effect.since,
                                          effect.reverse)
            case effects.VerifyConnectionToken():
                return await self._verify(self.verifier, effect.token, "connection", conn)
            case effects.VerifySubscriptionToken():
                return await self._verify(self.sub_verifier, effect.token, "subscription", conn)
            case effects.Register():
                self.connections[effect.client] = conn
                user_conns = self.users.setdefault(effect.user, set())
                user_conns.add(conn)
                if len(user_conns) == 1 and effect.user and self._online_listeners:
                    self._user_online(effect.user, True)
                return None
            case effects.CheckAccess():
                check = self.access_providers.get(effect.provider)
                if check is None:
                    return False
                return await check(effect.user, effect.channel, effect.action)
            case effects.CallRPC():
                handler = self.rpc_handlers.get(effect.method)
                if handler is None:
                    raise codes.error(codes.METHOD_NOT_FOUND)
                return await handler(effect.user, effect.client, effect.data)
            case effects.SendMessage():
                if self.message_handler is None:
                    raise DisconnectError(codes.NOT_AVAILABLE_DISCONNECT)
                await self.message_handler(effect.user, effect.client, effect.data)
                return None
        raise TypeError(f"unknown effect {effect!r}")

    def publish_nowait(self, effect: effects.PublishToChannel,
                       done: Callable[[StreamPosition | None, ClientError | None], None]) -> bool:
        """Fast path of a client's publish into a durable namespace: queued for the group
        commit without a task; ``done(position, None)`` once committed and fanned out, or
        ``done(None, error)`` (see ``DurableStreams.publish_nowait``); the caller counts
        the publication (``metrics.publication("client")``) as ``publish`` would. Refusals
        known at once raise ClientError. False: not taken (ephemeral namespace, or the
        channel's stream still to be loaded): perform the effect instead."""
        durable = self.durable
        if durable is None or not effect.options.durable:
            return False
        return durable.publish_nowait(effect.channel, effect.data, effect.info, done)

    async def _subscribe(self, eff: effects.SubscribeChannel, conn: Connection) -> effects.StreamState:
        channel, opts = eff.channel, eff.options
        conn.start_buffering(channel)
        self.hub.add(channel, conn, eff.push_join_leave)
        self.metrics.subscriptions.inc()
        try:
            # Every subscriber waits for the broker's confirmation (returns at once when the
            # channel is already heard): a history read before it could miss a publication.
            await self.broker.subscribe(channel)
            state = await self._stream_state(eff)
            if opts.presence:
                await self.broker.add_presence(channel, eff.info)
                self._presence.setdefault(channel, {})[eff.info.client] = eff.info
        except BaseException:
            # Undo: the session will not record this subscription.
            if self._unregister(channel, conn):
                await self.broker.unsubscribe(channel)
            raise
        pubs = state.publications
        covered = max(state.offset, pubs[-1].offset if pubs else 0)
        conn.set_cutoff(channel, covered)
        if self.clustered:
            # Only across processes can the history read run ahead of the publications this
            # process hears (in one process both come from the same place in one step).
            self.hub.covered(channel, conn, covered)
        if self._reorder is not None and opts.durable:
            self._reorder.seed(channel, covered)
        if opts.join_leave:
            # After the subscribe reply is written, as Centrifuge does.
            self._spawn(self.broker.publish_join(channel, eff.info))
        return state

    async def _stream_state(self, eff: effects.SubscribeChannel) -> effects.StreamState:
        channel = eff.channel
        if not eff.options.history_enabled:
            return effects.StreamState()
        if eff.since is None:
            return await self.history(channel, 0, None, False)
        try:
            if eff.cache_recovery:
                return await self.history(channel, 1, None, True)
            # One more than the limit: the session tells "too many" from "exact".
            return await self.history(channel, eff.recovery_limit + 1, eff.since, False)
        except ClientError as exc:
            if exc.code != codes.UNRECOVERABLE_POSITION[0]:
                raise
            return await self.history(channel, 0, None, False)

    def _unregister(self, channel: str, conn: Connection) -> bool:
        self.metrics.subscriptions.dec()
        return self.hub.remove(channel, conn)

    async def _unsubscribe(self, eff: effects.UnsubscribeChannel, conn: Connection) -> None:
        await self._broker_unsubscribe(eff, self._unregister(eff.channel, conn))

    async def _broker_unsubscribe(self, eff: effects.UnsubscribeChannel, last: bool) -> None:
        channel, opts = eff.channel, eff.options
        if last:
            if self._reorder is not None:
                self._reorder.forget(channel)
            await self.broker.unsubscribe(channel)
        if opts.presence:
            members = self._presence.get(channel)
            if members is not None:
                members.pop(eff.info.client, None)
                if not members:
                    del self._presence[channel]
            await self.broker.remove_presence(channel, eff.info.client)
        if opts.join_leave:
            # Spawned like the join: tasks start in order, so a join still pending (subscribe
            # and unsubscribe in one frame) is published before this leave, never after it.
            self._spawn(self.broker.publish_leave(channel, eff.info))

    # ---- Deliveries (called by the broker) --------------------------------------------

    def _committed(self, channel: str, pub: Publication, epoch: str) -> None:
        """A durable publication is committed: fan it out (through Redis to every node when
        several processes share the channel, straight to the hub otherwise)."""
        if self._commit_listeners:
            for listener in self._commit_listeners:
                try:
                    listener(channel, pub)
                except Exception:
                    log.exception("commit listener failed")
        cluster = self.cluster
        if cluster is not None:
            cluster.publish_committed(channel, pub, epoch)
        else:
            self._fan_out(channel, pub)

    def _hears_committed(self, channel: str) -> bool:
        """Whether a committed publication of ``channel`` goes anywhere: other processes
        (through the broker), an extension's commit listener, or a local subscriber."""
        return self._shared_broker or bool(self._commit_listeners) or self.hub.num_subscribers(channel) > 0

    def deliver_publication(self, channel: str, pub: Publication) -> None:
        if self._reorder is not None and pub.offset and self._is_durable(channel):
            self._reorder.push(channel, pub)
        else:
            self._fan_out(channel, pub)

    def _fan_out(self, channel: str, pub: Publication) -> None:
        n = self.hub.publish(channel, pub)
        if n:
            self.metrics.deliveries.inc(n)

    def _is_durable(self, channel: str) -> bool:
        try:
            return self.rules.resolve(channel).options.durable
        except ClientError:
            return False

    async def _fill_gap(self, channel: str, after: int, up_to: int) -> list[Publication]:
        if self.durable is None or up_to <= after:
            return []
        state = await self.durable.history(channel, up_to - after,
                                           StreamPosition(offset=after), False, 0.0)
        return [p for p in state.publications if p.offset <= up_to]

    def deliver_join(self, channel: str, info: ClientInfo) -> None:
        self.metrics.deliveries.inc(self.hub.join(channel, info))

    def deliver_leave(self, channel: str, info: ClientInfo) -> None:
        self.metrics.deliveries.inc(self.hub.leave(channel, info))

    # ---- operations shared by clients and the server API ------------------------------

    async def publish(self, channel: str, data: bytes, *, info: ClientInfo | None = None,
                      tags: dict[str, str] | None = None, skip_history: bool = False,
                      idempotency_key: str = "", source: str = "api") -> StreamPosition:
        """Publish ``data`` into ``channel`` with its namespace's history options.

        Durable namespaces answer only after the publication is committed to PostgreSQL
        (and fan it out from the commit callback); ephemeral ones go through the broker."""
        res = self.rules.resolve(channel)
        opts = res.options
        if opts.durable and self.durable is not None:
            position = await self.durable.publish(channel, data, info=info, tags=tags,
                                                  idempotency_key=idempotency_key or None)
        else:
            if idempotency_key:
                earlier = self._idempotent.get((channel, idempotency_key))
                if earlier is not None and earlier[0] > time.monotonic():
                    return earlier[1]
            pub = Publication(data=Raw(data), info=info, tags=tags or {})
            size, ttl = (0, 0.0) if skip_history else (opts.history_size, opts.history_ttl)
            position = await self.broker.publish(channel, pub, size, ttl)
            if idempotency_key:
                self._remember(channel, idempotency_key, position)
        self.metrics.publication(source)
        return position

    def _remember(self, channel: str, key: str, position: StreamPosition) -> None:
        now = time.monotonic()
        if len(self._idempotent) >= IDEMPOTENCY_MAX_KEYS:
            for k in [k for k, (exp, _) in self._idempotent.items() if exp <= now]:
                del self._idempotent[k]
            while len(self._idempotent) >= IDEMPOTENCY_MAX_KEYS:
                del self._idempotent[next(iter(self._idempotent))]
        self._idempotent[(channel, key)] = (now + IDEMPOTENCY_WINDOW, position)

    async def history(self, channel: str, limit: int, since: StreamPosition | None,
                      reverse: bool) -> effects.StreamState:
        """A channel's stream: PostgreSQL for durable namespaces, else the broker."""
        opts = self.rules.resolve(channel).options
        if opts.durable and self.durable is not None:
            return await self.durable.history(channel, limit, since, reverse, opts.retention)
        return await self.broker.history(channel, limit, since, reverse)

    async def remove_history(self, channel: str) -> None:
        opts = self.rules.resolve(channel).options
        if opts.durable and self.durable is not None:
            await self.durable.remove_history(channel)
        else:
            await self.broker.remove_history(channel)

    def user_connections(self, user: str, client: str = "") -> list[Connection]:
        if client:
            conn = self.connections.get(client)
            return [conn] if conn is not None and (not user or conn.session.user == user) else []
        return list(self.users.get(user, ()))

    async def server_subscribe(self, user: str, channel: str, *, client: str = "",
                               info: bytes = b"", data: bytes = b"",
                               since: StreamPosition | None = None, override: Any = None,
                               expire_at: int = 0) -> None:
        self.rules.resolve(channel)
        for conn in self.user_connections(user, client):
            if conn.closed:
                continue
            gen = conn.session.server_subscribe(channel, info, data, float(expire_at), override,
                                                since, time.time())
            try:
                payload = await self.drive(gen, conn)
                if payload:
                    conn.write_frame(build_frame(payload, conn.codec.binary))
                    conn.reschedule()
            except DisconnectError as exc:
                conn.close(exc.disconnect)
            finally:
                # Pushes that arrived during the subscribe go out after its `subscribe` push.
                conn.flush_buffered()

    def server_unsubscribe(self, user: str, channel: str, client: str = "") -> None:
        for conn in self.user_connections(user, client):
            out = conn.session.server_unsubscribe(channel, *codes.UNSUBSCRIBE_SERVER)
            if out is not None:
                payload, effect = out
                conn.write_frame(build_frame(payload, conn.codec.binary))
                self.detach(effect, conn)

    def disconnect(self, user: str, disconnect: Disconnect, client: str = "",
                   whitelist: list[str] | None = None) -> None:
        keep = set(whitelist or ())
        for conn in self.user_connections(user, client):
            if conn.client_id not in keep:
                conn.close(disconnect)

    def refresh(self, user: str, *, client: str = "", expired: bool = False,
                expire_at: int = 0, info: bytes | None = None) -> None:
        for conn in self.user_connections(user, client):
            if expired:
                conn.close(codes.CONNECTION_EXPIRED)
                continue
            conn.session.expire_at = float(expire_at)
            if info is not None:
                conn.session.conn_info = info
            conn.reschedule()

    def refresh_metrics(self) -> None:
        """Copy counters kept by the broker and the store into the Prometheus registry."""
        for event, value in self.broker.stats.items():
            self.metrics.broker_events.labels(event).set(value)
        if self.durable is not None and self.durable.store is not None:
            stats = self.durable.store.stats
            self.metrics.store_rows.set(stats.rows)
            self.metrics.store_batches.set(stats.batches)

    def info(self) -> dict[str, Any]:
        """This node's entry of the `info` API method."""
        users = {u for u in self.users if u}
        return {
            "uid": self.uid, "name": self.name, "version": __version__,
            "num_clients": len(self.connections), "num_users": len(users),
            "num_channels": self.hub.num_channels(), "uptime": int(time.time() - self.started_at),
            "num_subs": self.hub.num_subscriptions,
        }

    # ---- cluster: control messages, node registry, presence refresh, shard resets -----

    async def _announce(self, cluster: ClusterBroker) -> None:
        r = self.settings.redis
        info = self.info()
        # Channel counts travel with the node entry so `channels` can aggregate; capped so
        # one busy node cannot blow up the registry.
        info["channels"] = dict(list(self.hub.channels().items())[:CHANNELS_IN_REGISTRY])
        await cluster.register_node(info, r.node_info_interval * 3)

    async def _keep_alive(self, cluster: ClusterBroker) -> None:
        r = self.settings.redis
        presence_every = r.presence_ttl / 3
        next_presence = time.monotonic() + presence_every
        while True:
            await asyncio.sleep(min(r.node_info_interval, presence_every))
            # Covered-offset rules of quiet channels (no publication ended them) expire here.
            self.hub.sweep_covered()
            try:
                await self._announce(cluster)
            except ClientError as exc:
                log.warning("cluster keep-alive failed: %s", getattr(exc, "detail", "") or exc.message)
            # Separately: the registry's shard being down must not let presence on the
            # other shards expire.
            try:
                if time.monotonic() >= next_presence:
                    next_presence = time.monotonic() + presence_every
                    items = [(ch, info) for ch, members in self._presence.items()
                             for info in members.values()]
                    if items:
                        await cluster.refresh_presence(items)
            except ClientError as exc:
                log.warning("presence refresh failed: %s", getattr(exc, "detail", "") or exc.message)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's info entry (just this one without a shared broker)."""
        if self.cluster is None:
            info = self.info()
            info["channels"] = self.hub.channels()
            return [info]
        return await self.cluster.nodes()

    async def control(self, command: dict[str, Any]) -> None:
        """Apply a server-API control command here and on every other node."""
        await self.apply_control(command)
        if self.cluster is not None:
            payload = orjson.dumps({**command, "origin": self.uid})
            await self.cluster.publish_control(payload)

    def deliver_control(self, data: bytes) -> None:
        """A control message from the broker (our own come back too: skipped)."""
        try:
            command = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.error("unreadable control message")
            return
        if command.get("origin") == self.uid:
            return
        self._spawn(self.apply_control(command))

    async def apply_control(self, command: dict[str, Any]) -> None:
        op = command.get("op")
        user, client = command.get("user", ""), command.get("client", "")
        if op == "disconnect":
            d = command.get("disconnect") or {}
            self.disconnect(user, Disconnect(int(d.get("code", 3503)), str(d.get("reason", "force disconnect"))),
                            client=client, whitelist=command.get("whitelist") or [])
        elif op == "unsubscribe":
            self.server_unsubscribe(user, command["channel"], client=client)
        elif op == "refresh":
            info = command.get("info")
            self.refresh(user, client=client, expired=bool(command.get("expired")),
                         expire_at=int(command.get("expire_at") or 0),
                         info=info.encode("latin-1") if isinstance(info, str) else None)
        elif op == "subscribe":
            since = command.get("since")
            await self.server_subscribe(
                user, command["channel"], client=client,
                info=(command.get("info") or "").encode("latin-1"),
                data=(command.get("data") or "").encode("latin-1"),
                since=StreamPosition(**since) if since else None,
                override=_override(command.get("override")),
                expire_at=int(command.get("expire_at") or 0))
        else:
            log.error("unknown control op %r", op)

    def shard_reset(self, channels: list[str]) -> None:
        """What was published into ``channels`` meanwhile never reached us (a broker shard
        came back, a gap history cannot fill). Client-side subscribers are unsubscribed
        with 2500, so the SDKs resubscribe and recover; a server-side subscription cannot
        be resubscribed by the SDK, so its connection is closed with 3010 and recovers it
        in the reconnect's `connect` (as Centrifuge does)."""
        for channel in channels:
            for conn in list(self.hub.subscribers(channel)):
                sub = conn.session.subs.get(channel)
                if sub is not None and sub.server_side:
                    conn.close(codes.INSUFFICIENT_STATE)
                    continue
                out = conn.session.server_unsubscribe(channel, *codes.UNSUBSCRIBE_INSUFFICIENT_STATE)
                if out is not None:
                    payload, effect = out
                    conn.write_frame(build_frame(payload, conn.codec.binary))
                    self.detach(effect, conn)

    async def _rpc_whoami(self, user: str, client: str, data: bytes) -> bytes:
        return orjson.dumps({"user": user, "client": client, "node": self.name})


def _log_failure(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, ClientError):
        # Broker outages are logged by the broker; one line here is enough.
        log.warning("background broker call failed: %s", exc.message)
    elif exc is not None:
        log.error("background task failed", exc_info=exc)


def _override(value: Any) -> Any:
    if not value:
        return None
    from centrifugo_bridge.tokens import Override

    return Override(**{k: v for k, v in value.items() if k in Override.__struct_fields__})


__all__ = ["Node"]
