"""The I/O-free Centrifugo client session.

A ``Session`` owns the protocol state of one connection: authentication, subscriptions,
expiry, ping/pong. Bytes come in through :meth:`Session.decode`; each Command goes through
:meth:`Session.handle`, a generator that yields :mod:`effects` for the node to perform and
returns the Reply (or ``None``). Time is always an argument; nothing here reads a clock,
touches a socket or imports asyncio.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any

import msgspec

from centrifugo_bridge import codes, effects
from centrifugo_bridge.channels import (
    ChannelOptions,
    ChannelRules,
    Resolved,
    byte_length,
    personal_channel,
)
from centrifugo_bridge.codecs import Codec, DecodeError
from centrifugo_bridge.codes import ClientError, Disconnect, DisconnectError
from centrifugo_bridge.protocol import (
    EMPTY,
    ClientInfo,
    Command,
    ConnectRequest,
    ConnectResult,
    HistoryRequest,
    HistoryResult,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    PublishRequest,
    PublishResult,
    Push,
    Raw,
    RefreshRequest,
    RefreshResult,
    Reply,
    RPCRequest,
    RPCResult,
    StreamPosition,
    SubRefreshRequest,
    SubRefreshResult,
    Subscribe,
    SubscribeRequest,
    SubscribeResult,
    Unsubscribe,
    UnsubscribeRequest,
    UnsubscribeResult,
)
from centrifugo_bridge.tokens import (
    InvalidToken,
    TokenExpired,
    connection_credentials,
    subscription_grant,
)

__all__ = ["ClientOptions", "Session", "SessionConfig", "Subscription", "Handler", "TimerActions"]

Handler = Generator[effects.Effect, Any, Reply | None]

# Subscribe flag bit 2: the client (getState/get_state) wants error 112 instead of an
# unrecovered subscription.
FLAG_REJECT_UNRECOVERED = 2


class ClientOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The operator-facing part of the session settings (Centrifugo `client.*` keys).

    Declared once here: the gateway's ``[client]`` settings section inherits these fields,
    so a default written here is the default of the config key of the same name.
    """

    # Seconds between server pings; 0 disables pings. Centrifugo default 25 s.
    ping_interval: float = 25.0
    # A pong must arrive within this many seconds of a ping (Centrifugo default 8 s).
    pong_timeout: float = 8.0
    # A socket that has not sent connect within this time is closed 3502 (Centrifugo: 10 s).
    stale_close_delay: float = 10.0
    # Grace after connection expiry before closing 3005 (Centrifugo: 25 s).
    expired_close_delay: float = 25.0
    # Grace after subscription expiry before unsubscribing 2501 (Centrifugo: 25 s).
    expired_sub_close_delay: float = 25.0
    allow_anonymous_connect_without_token: bool = False
    disallow_anonymous_connection_tokens: bool = False
    subscribe_to_user_personal_channel: bool = False
    personal_channel_namespace: str = ""
    # Subscriptions per connection (Centrifugo client.channel_limit).
    channel_limit: int = 128
    # Cap on publications returned by one client history call.
    history_max_publication_limit: int = 300
    # Cap on publications replayed by one recovery; beyond it the stream is unrecovered.
    recovery_max_publication_limit: int = 300


# msgspec lets a frozen Struct extend a mutable one (the operator's [client] section extends
# ClientOptions mutable, the session's copy is frozen); mypy applies the dataclass rule.
class SessionConfig(ClientOptions, frozen=True):  # type: ignore[misc]
    """Client-facing protocol settings: the ``client.*`` options plus what the process adds."""

    version: str = "0.1.0"
    # The token claim naming the user (the gateway takes it from client.token.user_id_claim).
    user_id_claim: str = "sub"


class Subscription(msgspec.Struct):
    channel: str
    options: ChannelOptions
    info: ClientInfo
    push_join_leave: bool = False
    recoverable: bool = False
    positioned: bool = False
    # Unix seconds; 0 = never.
    expire_at: float = 0
    server_side: bool = False


class TimerActions(msgspec.Struct):
    """What the connection must do after :meth:`Session.on_timer`."""

    frames: list[bytes] = []
    unsubscribe: list[effects.UnsubscribeChannel] = []
    disconnect: Disconnect | None = None


class Session:
    """Protocol state of one client connection."""

    __slots__ = (
        "config", "rules", "codec", "client_id", "user", "conn_info", "connected",
        "failed", "expire_at", "subs", "created_at", "next_ping_at", "pong_deadline",
        "closed", "name", "meta", "_rng", "token_channels",
    )

    def __init__(self, config: SessionConfig, rules: ChannelRules, codec: Codec,
                 client_id: str, now: float, rng: random.Random | None = None) -> None:
        self.config = config
        self.rules = rules
        self.codec = codec
        self.client_id = client_id
        self.user = ""
        self.conn_info = b""
        self.connected = False
        # After a failed connect Centrifugo stops reading commands; so do we.
        self.failed = False
        self.closed = False
        self.expire_at = 0.0
        self.subs: dict[str, Subscription] = {}
        self.created_at = now
        self.next_ping_at = 0.0
        self.pong_deadline = 0.0
        self.name = ""
        self.meta = b""
        self._rng = rng
        # Server-side channels granted by the connection token (`subs`, else `channels`).
        self.token_channels: frozenset[str] = frozenset()

    # ---- framing ----------------------------------------------------------------------

    def decode(self, data: bytes) -> list[Command]:
        """Commands of one WebSocket message; malformed input -> DisconnectError 3501."""
        try:
            return self.codec.decode_commands(data)
        except DecodeError:
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT) from None

    def encode(self, reply: Reply) -> bytes:
        return self.codec.encode_reply(reply)

    def client_info(self, chan_info: bytes = b"") -> ClientInfo:
        return ClientInfo(
            user=self.user, client=self.client_id,
            conn_info=Raw(self.conn_info) if self.conn_info else EMPTY,
            chan_info=Raw(chan_info) if chan_info else EMPTY,
        )

    # ---- dispatch ---------------------------------------------------------------------

    def handle(self, cmd: Command, now: float) -> Handler:
        """Process one command: a generator of effects returning the Reply (or None).

        Raises DisconnectError when the connection must close.
        """
        if self.failed or self.closed:
            return None
        if not self.connected and cmd.connect is None:
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)
        if cmd.id == 0 and cmd.send is None:
            if _is_empty(cmd):
                self._pong()
                return None
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)
        try:
            if cmd.connect is not None:
                result = yield from self._connect(cmd.connect, now)
                return Reply(id=cmd.id, connect=result)
            if cmd.subscribe is not None:
                return Reply(id=cmd.id, subscribe=(yield from self._subscribe(cmd.subscribe, now)))
            if cmd.unsubscribe is not None:
                return Reply(id=cmd.id, unsubscribe=(yield from self._unsubscribe(cmd.unsubscribe)))
            if cmd.publish is not None:
                return Reply(id=cmd.id, publish=(yield from self._publish(cmd.publish)))
            if cmd.presence is not None:
                channel = self._need_channel(cmd.presence.channel)
                res = self.rules.check_presence(channel, self.user, channel in self.subs)
                yield from self._check_access(res, channel, "presence")
                presence = yield effects.ReadPresence(channel)
                return Reply(id=cmd.id, presence=PresenceResult(presence=presence))
            if cmd.presence_stats is not None:
                channel = self._need_channel(cmd.presence_stats.channel)
                res = self.rules.check_presence(channel, self.user, channel in self.subs)
                yield from self._check_access(res, channel, "presence")
                clients, users = yield effects.ReadPresenceStats(channel)
                return Reply(id=cmd.id, presence_stats=PresenceStatsResult(num_clients=clients, num_users=users))
            if cmd.history is not None:
                return Reply(id=cmd.id, history=(yield from self._history(cmd.history)))
            if cmd.rpc is not None:
                return Reply(id=cmd.id, rpc=(yield from self._rpc(cmd.rpc)))
            if cmd.send is not None:
                yield effects.SendMessage(bytes(cmd.send.data), self.user, self.client_id)
                return None
            if cmd.refresh is not None:
                return Reply(id=cmd.id, refresh=(yield from self._refresh(cmd.refresh, now)))
            if cmd.sub_refresh is not None:
                return Reply(id=cmd.id, sub_refresh=(yield from self._sub_refresh(cmd.sub_refresh, now)))
        except ClientError as exc:
            if cmd.connect is not None:
                self.failed = True
            return Reply(id=cmd.id, error=exc.to_wire())
        # `ping` (unused in v2) or no method at all.
        raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)

    @staticmethod
    def _need_channel(channel: str) -> str:
        if not channel:
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)
        return channel

    # ---- connect / refresh ------------------------------------------------------------

    def _connect(self, req: ConnectRequest, now: float) -> Generator[effects.Effect, Any, ConnectResult]:
        if self.connected:
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)
        cfg = self.config
        if req.token:
            try:
                claims = yield effects.VerifyConnectionToken(req.token)
                creds = connection_credentials(claims, cfg.user_id_claim)
            except TokenExpired:
                raise codes.error(codes.TOKEN_EXPIRED) from None
            except InvalidToken:
                raise DisconnectError(codes.INVALID_TOKEN) from None
            if not creds.user and cfg.disallow_anonymous_connection_tokens:
                raise DisconnectError(codes.PERMISSION_DENIED_DISCONNECT)
        elif cfg.allow_anonymous_connect_without_token:
            creds = connection_credentials({}, cfg.user_id_claim)
        else:
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)

        ttl = 0
        if creds.expire_at > 0:
            # Whole seconds of the Unix clock, as Centrifuge (exp - time.Now().Unix()): a token
            # valid for a fraction of a second more still connects (and refreshes at once).
            if creds.expire_at < int(now):
                raise codes.error(codes.EXPIRED)
            ttl = max(1, creds.expire_at - int(now))
        self.user = creds.user
        self.conn_info = creds.info
        self.meta = creds.meta
        self.name = req.name[:32]
        self.expire_at = float(creds.expire_at)

        # Server-side subscriptions: Centrifugo's verifier reads `channels` only when the
        # token has no `subs`; `subs` entries carry channel info and subscribe data.
        wanted: dict[str, tuple[bytes, bytes]] = (
            {ch: (sub.info, sub.data) for ch, sub in creds.subs.items()} if creds.subs
            else dict.fromkeys(creds.channels, (b"", b"")))
        if cfg.subscribe_to_user_personal_channel and self.user:
            wanted.setdefault(personal_channel(
                self.user, cfg.personal_channel_namespace,
                self.rules.user_boundary, self.rules.namespace_boundary), (b"", b""))
        if cfg.channel_limit and len(wanted) > cfg.channel_limit:
            raise DisconnectError(codes.CHANNEL_LIMIT)
        self.token_channels = frozenset(creds.subs or creds.channels)
        # Resolve (102/107) before anything is registered or attached on the node.
        resolved = [(self.rules.resolve(ch), info, data) for ch, (info, data) in wanted.items()]
        results: dict[str, SubscribeResult] = {}
        yield effects.Register(self.user, self.client_id)
        self.connected = True
        for res, chan_info, data in resolved:
            channel = res.channel
            # A token is signed once and lives on: the namespace's access provider (e.g.
            # chat membership) is asked now, as for a client-side subscribe. A refused
            # channel is left out of the connection rather than refusing the whole connect
            # (a member kicked since the token was signed keeps using everything else).
            if not (yield from self._access_allowed(res, channel, "subscribe")):
                continue
            # Recovery only when the client asks for it (centrifuge copies subs[ch].recover).
            recover = req.subs.get(channel)
            if recover is not None and not recover.recover:
                recover = None
            results[channel] = yield from self._do_subscribe(
                res, chan_info, data, 0.0, recover_req=recover, positioned_req=False,
                recoverable_req=False, join_leave_req=False, server_side=True,
                override=creds.subs[channel].override if channel in creds.subs else None,
                reject_unrecovered=False)

        result = ConnectResult(client=self.client_id, version=cfg.version, subs=results)
        if ttl > 0:
            result.expires = True
            result.ttl = ttl
        if cfg.ping_interval > 0:
            result.ping = int(cfg.ping_interval)
            # Centrifuge asks for pongs only when it checks them (pong timeout > 0).
            result.pong = cfg.pong_timeout > 0
            first = cfg.ping_interval / 2 + (self._rng or random).random() * cfg.ping_interval / 2
            self.next_ping_at = now + first
        return result

    def _refresh(self, req: RefreshRequest, now: float) -> Generator[effects.Effect, Any, RefreshResult]:
        if not req.token:
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)
        try:
            claims = yield effects.VerifyConnectionToken(req.token)
            creds = connection_credentials(claims, self.config.user_id_claim)
        except TokenExpired:
            raise DisconnectError(codes.CONNECTION_EXPIRED) from None
        except InvalidToken:
            raise DisconnectError(codes.INVALID_TOKEN) from None
        if creds.user != self.user:
            raise DisconnectError(codes.INVALID_TOKEN)
        # Centrifugo's tokenChannelsChanged: token-based server-side subscriptions cannot
        # change in place; reconnect (3010) to apply the new set.
        new_channels = frozenset(creds.subs or creds.channels)
        # A channel of the previous grant is not new even when not subscribed: the access
        # provider may have left it out at connect, and that must not disconnect at every
        # refresh (3010, reconnect, left out again, forever).
        if any(ch not in self.subs and ch not in self.token_channels for ch in new_channels) or any(
                ch not in new_channels for ch in self.token_channels if ch in self.subs):
            raise DisconnectError(codes.INSUFFICIENT_STATE)
        result = RefreshResult(client=self.client_id, version=self.config.version)
        if creds.expire_at > 0:
            ttl = creds.expire_at - int(now)  # whole Unix seconds, as Centrifuge
            if ttl <= 0:
                raise codes.error(codes.EXPIRED)
            result.expires = True
            result.ttl = ttl
        self.expire_at = float(creds.expire_at)
        if creds.info:
            self.conn_info = creds.info
        return result

    # ---- subscriptions ----------------------------------------------------------------

    def _subscribe(self, req: SubscribeRequest, now: float) -> Generator[effects.Effect, Any, SubscribeResult]:
        channel = self._need_channel(req.channel)
        if req.type != 0:
            # Map / shared-poll subscriptions are not implemented: Centrifugo refuses a type
            # the namespace does not allow with 103.
            raise codes.error(codes.PERMISSION_DENIED)
        if req.delta and req.delta != "fossil":
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)
        if byte_length(channel) > self.rules.max_length:
            raise codes.error(codes.BAD_REQUEST)
        if channel in self.subs:
            raise codes.error(codes.ALREADY_SUBSCRIBED)
        if self.config.channel_limit and len(self.subs) >= self.config.channel_limit:
            raise codes.error(codes.LIMIT_EXCEEDED)
        res = self.rules.resolve(channel)
        if res.private and not req.token:
            raise codes.error(codes.PERMISSION_DENIED)
        chan_info = b""
        data = b""
        expire_at = 0.0
        override = None
        if req.token:
            try:
                claims = yield effects.VerifySubscriptionToken(req.token)
                grant = subscription_grant(claims, self.config.user_id_claim)
            except TokenExpired:
                raise codes.error(codes.TOKEN_EXPIRED) from None
            except InvalidToken:
                raise codes.error(codes.PERMISSION_DENIED) from None
            if grant.channel != channel or grant.user != self.user:
                raise DisconnectError(codes.INVALID_TOKEN)
            if grant.client and grant.client != self.client_id:
                raise DisconnectError(codes.INVALID_TOKEN)
            if grant.expire_at > 0 and grant.expire_at <= now:
                raise codes.error(codes.EXPIRED)
            chan_info, data, expire_at, override = grant.info, grant.data, float(grant.expire_at), grant.override
        elif not self.rules.can_subscribe_without_token(res, self.user):
            raise codes.error(codes.PERMISSION_DENIED)
        # Also with a subscription token: the product's memberships are the final word.
        yield from self._check_access(res, channel, "subscribe")
        result = yield from self._do_subscribe(
            res, chan_info, data, expire_at, recover_req=req if req.recover else None,
            positioned_req=req.positioned, recoverable_req=req.recoverable,
            join_leave_req=req.join_leave, server_side=False, override=override,
            reject_unrecovered=bool(req.flag & FLAG_REJECT_UNRECOVERED), now=now)
        return result

    def _do_subscribe(self, res: Resolved, chan_info: bytes, data: bytes, expire_at: float, *,
                      recover_req: SubscribeRequest | None, positioned_req: bool,
                      recoverable_req: bool, join_leave_req: bool, server_side: bool,
                      override: Any, reject_unrecovered: bool,
                      now: float = 0.0) -> Generator[effects.Effect, Any, SubscribeResult]:
        opts = res.options
        if override is not None:
            opts = msgspec.structs.replace(opts, **{
                k: v for k, v in msgspec.structs.asdict(override).items() if v is not None})
        rules = self.rules
        history_access = rules.can_history(res, self.user, True)
        positioned = opts.force_positioning or (
            positioned_req and (opts.allow_positioning or history_access))
        recoverable = opts.force_recovery or (
            recoverable_req and (opts.allow_recovery or history_access))
        push_join_leave = opts.force_push_join_leave or (
            join_leave_req and opts.join_leave and rules.can_presence(res, self.user, True))
        stream = (positioned or recoverable) and opts.history_enabled
        since = None
        if stream and recover_req is not None:
            since = StreamPosition(offset=recover_req.offset, epoch=recover_req.epoch)
        info = self.client_info(chan_info)
        state: effects.StreamState = yield effects.SubscribeChannel(
            channel=res.channel, info=info, options=opts, push_join_leave=push_join_leave,
            since=since, recovery_limit=self.config.recovery_max_publication_limit,
            cache_recovery=opts.force_recovery_mode == "cache")
        sub = Subscription(res.channel, opts, info, push_join_leave=push_join_leave,
                           recoverable=recoverable and stream, positioned=stream,
                           expire_at=expire_at, server_side=server_side)
        self.subs[res.channel] = sub
        result = SubscribeResult()
        if data:
            result.data = Raw(data)
        if expire_at > 0:
            result.expires = True
            result.ttl = max(1, int(expire_at - now))
        if stream:
            result.positioned = True
            result.recoverable = sub.recoverable
            result.epoch = state.epoch
            result.offset = state.offset
        if recover_req is not None:
            # centrifuge: WasRecovering = req.Recover, even where recovery is off.
            result.was_recovering = True
        if since is not None and sub.recoverable:
            pubs, recovered = _recovered(since, state, self.config.recovery_max_publication_limit,
                                         opts.force_recovery_mode == "cache")
            if recovered:
                result.recovered = True
                result.publications = pubs
                # SDKs advance their position while applying the publications.
                result.offset = since.offset if pubs else state.offset
            elif reject_unrecovered:
                yield from self._drop(res.channel)
                raise codes.error(codes.UNRECOVERABLE_POSITION)
        return result

    def _drop(self, channel: str) -> Generator[effects.Effect, Any, None]:
        sub = self.subs.pop(channel, None)
        if sub is not None:
            yield effects.UnsubscribeChannel(channel, sub.info, sub.options)

    def _unsubscribe(self, req: UnsubscribeRequest) -> Generator[effects.Effect, Any, UnsubscribeResult]:
        channel = self._need_channel(req.channel)
        yield from self._drop(channel)
        return UnsubscribeResult()

    def _sub_refresh(self, req: SubRefreshRequest, now: float) -> Generator[effects.Effect, Any, SubRefreshResult]:
        channel = self._need_channel(req.channel)
        sub = self.subs.get(channel)
        if sub is None:
            raise codes.error(codes.PERMISSION_DENIED)
        if not req.token:
            raise codes.error(codes.BAD_REQUEST)
        try:
            claims = yield effects.VerifySubscriptionToken(req.token)
            grant = subscription_grant(claims, self.config.user_id_claim)
        except TokenExpired:
            raise codes.error(codes.EXPIRED) from None
        except InvalidToken:
            raise DisconnectError(codes.INVALID_TOKEN) from None
        if grant.channel != channel or grant.user != self.user or (
                grant.client and grant.client != self.client_id):
            raise DisconnectError(codes.INVALID_TOKEN)
        result = SubRefreshResult()
        if grant.expire_at > 0:
            # Whole Unix seconds, as Centrifuge: expired only when expire_at < now.
            if grant.expire_at < int(now):
                raise codes.error(codes.EXPIRED)
            ttl = max(1, grant.expire_at - int(now))
            result.expires = True
            result.ttl = ttl
        sub.expire_at = float(grant.expire_at)
        return result

    # ---- publish / history / rpc --------------------------------------------------------

    def _publish(self, req: PublishRequest) -> Generator[effects.Effect, Any, PublishResult]:
        channel = self._need_channel(req.channel)
        if req.type != 0:
            raise codes.error(codes.NOT_AVAILABLE)
        res = self.rules.resolve(channel)
        data = bytes(req.data)
        if not data:
            # Centrifugo's OnPublish validates data (107) before permissions (103).
            raise codes.error(codes.BAD_REQUEST)
        if not self.rules.can_publish(res, self.user, channel in self.subs):
            raise codes.error(codes.PERMISSION_DENIED)
        sub = self.subs.get(channel)
        info = sub.info if sub is not None else self.client_info()
        yield effects.PublishToChannel(channel, data, info, res.options)
        return PublishResult()

    def _history(self, req: HistoryRequest) -> Generator[effects.Effect, Any, HistoryResult]:
        channel = self._need_channel(req.channel)
        res = self.rules.check_history(channel, self.user, channel in self.subs)
        yield from self._check_access(res, channel, "history")
        cap = self.config.history_max_publication_limit
        limit = req.limit
        if cap > 0 and (limit < 0 or limit > cap):
            limit = cap
        if req.reverse and req.since is not None and req.since.offset == 0:
            raise codes.error(codes.BAD_REQUEST)
        state: effects.StreamState = yield effects.ReadHistory(channel, limit, req.since, req.reverse)
        return HistoryResult(publications=state.publications, epoch=state.epoch, offset=state.offset)

    def _check_access(self, res: Resolved, channel: str, action: str) -> Generator[effects.Effect, Any, None]:
        """Ask the namespace's access-control provider (if it names one); 103 when denied."""
        if not (yield from self._access_allowed(res, channel, action)):
            raise codes.error(codes.PERMISSION_DENIED)

    def _access_allowed(self, res: Resolved, channel: str, action: str) -> Generator[effects.Effect, Any, bool]:
        """Whether the namespace's access-control provider (if it names one) allows it."""
        if not res.options.acl:
            return True
        allowed = yield effects.CheckAccess(res.options.acl, channel, self.user, action)
        return bool(allowed)

    def _rpc(self, req: RPCRequest) -> Generator[effects.Effect, Any, RPCResult]:
        data = yield effects.CallRPC(req.method, bytes(req.data), self.user, self.client_id)
        return RPCResult(data=Raw(data) if data else EMPTY)

    # ---- server-initiated -------------------------------------------------------------

    def server_unsubscribe(self, channel: str, code: int, reason: str) -> tuple[bytes, effects.UnsubscribeChannel] | None:
        """Drop a subscription on the server's initiative; returns the push frame and the
        effect that detaches the channel, or None if not subscribed."""
        sub = self.subs.pop(channel, None)
        if sub is None:
            return None
        push = Reply(push=Push(channel=channel, unsubscribe=Unsubscribe(code=code, reason=reason)))
        return self.encode(push), effects.UnsubscribeChannel(channel, sub.info, sub.options)

    def server_subscribe(self, channel: str, chan_info: bytes, data: bytes, expire_at: float,
                         override: Any, since: StreamPosition | None,
                         now: float) -> Generator[effects.Effect, Any, bytes | None]:
        """Subscribe on the server's initiative (server API `subscribe`); returns the encoded
        `subscribe` push, or None when already subscribed."""
        if not self.connected or self.closed or channel in self.subs:
            return None
        res = self.rules.resolve(channel)
        # The backend asked, but the namespace's access provider still has the last word
        # (the same rule for every way of subscribing): 103 when it refuses.
        yield from self._check_access(res, channel, "subscribe")
        recover = SubscribeRequest(channel=channel, recover=True, offset=since.offset,
                                   epoch=since.epoch) if since is not None else None
        result = yield from self._do_subscribe(
            res, chan_info, data, expire_at, recover_req=recover, positioned_req=False,
            recoverable_req=False, join_leave_req=False, server_side=True,
            override=override, reject_unrecovered=False, now=now)
        push = Push(channel=channel, subscribe=Subscribe(
            recoverable=result.recoverable, epoch=result.epoch, offset=result.offset,
            positioned=result.positioned, data=result.data))
        return self.encode(Reply(push=push))

    def close(self) -> list[effects.UnsubscribeChannel]:
        """Connection is gone: effects that detach every subscription."""
        self.closed = True
        out = [effects.UnsubscribeChannel(ch, s.info, s.options) for ch, s in self.subs.items()]
        self.subs.clear()
        return out

    # ---- time -------------------------------------------------------------------------

    def _pong(self) -> None:
        if self.pong_deadline <= 0:
            # A pong nobody asked for (Centrifugo: "unnecessary pong").
            raise DisconnectError(codes.BAD_REQUEST_DISCONNECT)
        self.pong_deadline = 0.0

    def next_deadline(self) -> float:
        """The earliest time :meth:`on_timer` has something to do (0 = nothing)."""
        if not self.connected or self.failed:
            return self.created_at + self.config.stale_close_delay
        times = [t for t in (self.next_ping_at, self.pong_deadline) if t > 0]
        if self.expire_at > 0:
            times.append(self.expire_at + self.config.expired_close_delay)
        for sub in self.subs.values():
            if sub.expire_at > 0:
                times.append(sub.expire_at + self.config.expired_sub_close_delay)
        return min(times) if times else 0.0

    def on_timer(self, now: float) -> TimerActions:
        """Pings, pong timeout, stale and expiry checks due at ``now``."""
        actions = TimerActions(frames=[], unsubscribe=[])
        if self.closed:
            return actions
        cfg = self.config
        if not self.connected or self.failed:
            # centrifuge's closeStale: never authenticated, or left unusable by a failed connect.
            if now >= self.created_at + cfg.stale_close_delay:
                actions.disconnect = codes.STALE
            return actions
        if self.pong_deadline > 0 and now >= self.pong_deadline:
            actions.disconnect = codes.NO_PONG
            return actions
        if self.expire_at > 0 and now >= self.expire_at + cfg.expired_close_delay:
            actions.disconnect = codes.CONNECTION_EXPIRED
            return actions
        if self.next_ping_at > 0 and now >= self.next_ping_at:
            actions.frames.append(self.encode(Reply()))
            self.next_ping_at = now + cfg.ping_interval
            if cfg.pong_timeout > 0:
                self.pong_deadline = now + cfg.pong_timeout
        for channel in [c for c, s in self.subs.items()
                        if s.expire_at > 0 and now >= s.expire_at + cfg.expired_sub_close_delay]:
            out = self.server_unsubscribe(channel, *codes.UNSUBSCRIBE_EXPIRED)
            if out is None:  # cannot happen: the channel was taken from self.subs just now
                continue
            frame, effect = out
            actions.frames.append(frame)
            actions.unsubscribe.append(effect)
        return actions


def _is_empty(cmd: Command) -> bool:
    return cmd == _EMPTY_COMMAND


_EMPTY_COMMAND = Command()


def _recovered(since: StreamPosition, state: effects.StreamState, limit: int,
               cache: bool) -> tuple[list[Publication], bool]:
    """Centrifuge's isStreamRecovered: the publications after ``since`` and whether they
    close the gap exactly up to the stream top."""
    pubs = state.publications
    if cache:
        # isCacheRecovered: only the latest publication matters, whatever the epoch.
        same = since.offset > 0 and since.offset == state.offset and since.epoch == state.epoch
        if not pubs:
            return [], same
        if pubs[-1].offset != state.offset:
            return [], False
        return ([], True) if same else (pubs[-1:], True)
    if since.epoch and since.epoch != state.epoch:
        return [], False
    if len(pubs) > limit:
        return [], False
    if not pubs:
        return [], state.offset == since.offset
    if pubs[0].offset == since.offset + 1 and pubs[-1].offset == state.offset:
        return pubs, True
    return [], False
