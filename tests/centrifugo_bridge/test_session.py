"""The I/O-free client session, driven by hand.

``Session.handle`` is a generator of effects. These tests run it with a tiny driver that
answers every effect from plain Python values (``FakeNode``: tokens, streams, presence and
RPC methods kept in dicts) — the same role gateway/node.py plays against the hub and the
broker. Expected behaviour is Centrifugo v6 / centrifuge's (client.go, internal/client/
handler.go), see /work/shared/docs/centrifugo-protocol.md sections 2-7.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import orjson
import pytest

from centrifugo_bridge import codes, effects
from centrifugo_bridge.channels import ChannelOptions, ChannelRules
from centrifugo_bridge.codecs import JSON, codec_for
from centrifugo_bridge.codes import ClientError, DisconnectError
from centrifugo_bridge.protocol import (
    ClientInfo,
    Command,
    ConnectRequest,
    Publication,
    Raw,
    Reply,
    StreamPosition,
)
from centrifugo_bridge.session import Session, SessionConfig
from centrifugo_bridge.tokens import InvalidToken, TokenExpired

T0 = 1_700_000_000.0

FULL = {
    "presence": True, "join_leave": True, "history_size": 100, "history_ttl": 300.0,
    "force_recovery": True, "force_positioning": True,
    "allow_subscribe_for_client": True, "allow_publish_for_subscriber": True,
    "allow_presence_for_subscriber": True, "allow_history_for_subscriber": True,
}

RULES = ChannelRules(
    without_namespace=ChannelOptions(allow_subscribe_for_client=True, allow_publish_for_client=True),
    namespaces={
        "chat": ChannelOptions(**FULL),
        # Subscribing needs a subscription token.
        "secret": ChannelOptions(**{**FULL, "allow_subscribe_for_client": False}),
        # dm:#alice,bob — only listed users subscribe without a token.
        "dm": ChannelOptions(**{**FULL, "allow_subscribe_for_client": False,
                                "allow_user_limited_channels": True}),
        # Nothing is allowed to clients.
        "locked": ChannelOptions(presence=True, history_size=10, history_ttl=60.0),
        # No history, no presence.
        "plain": ChannelOptions(allow_subscribe_for_client=True, allow_publish_for_client=True),
        # Recovery / positioning / join-leave only on request.
        "opt": ChannelOptions(presence=True, join_leave=True, history_size=10, history_ttl=60.0,
                              allow_recovery=True, allow_positioning=True,
                              allow_subscribe_for_client=True),
        "cache": ChannelOptions(**{**FULL, "force_recovery_mode": "cache"}),
        "anon": ChannelOptions(allow_subscribe_for_client=True, allow_subscribe_for_anonymous=True),
        "re": ChannelOptions(allow_subscribe_for_client=True, channel_regex=r"^[a-zа-я]+$"),
        "personal": ChannelOptions(history_size=10, history_ttl=60.0, force_recovery=True,
                                   allow_user_limited_channels=True),
        # Membership decided by an access provider (the chat product's `acl = "chat"`).
        "members": ChannelOptions(**{**FULL, "acl": "club"}),
    },
)


# ---- the fake node ----------------------------------------------------------------------


class Stream:
    """A channel history: retained publications and the stream top."""

    def __init__(self, epoch: str = "ep1", size: int = 1000) -> None:
        self.epoch = epoch
        self.top = 0
        self.size = size
        self.pubs: list[Publication] = []

    def publish(self, n: int = 1) -> None:
        for _ in range(n):
            self.top += 1
            self.pubs.append(Publication(data=Raw(orjson.dumps({"n": self.top})), offset=self.top))
        del self.pubs[:-self.size]

    def after(self, offset: int) -> list[Publication]:
        return [p for p in self.pubs if p.offset > offset]


class FakeNode:
    """Answers session effects with plain values; records every effect it saw."""

    def __init__(self) -> None:
        # token -> claims, or an exception instance the verifier raises.
        self.tokens: dict[str, dict[str, Any] | Exception] = {}
        self.streams: dict[str, Stream] = {}
        self.presence: dict[str, dict[str, ClientInfo]] = {}
        self.rpc: dict[str, bytes] = {}
        self.messages: list[bytes] | None = None  # None: no message handler configured
        self.log: list[effects.Effect] = []
        self.attached: dict[str, ClientInfo] = {}
        # Channels whose attachment fails on the node (the gateway throws 100 into the session).
        self.broken: set[str] = set()
        # (provider, channel, user) the access provider allows; anything else is refused.
        self.allowed: set[tuple[str, str, str]] = set()

    def stream(self, channel: str) -> Stream:
        return self.streams.setdefault(channel, Stream())

    def of(self, kind: type[effects.Effect]) -> list[Any]:
        return [e for e in self.log if isinstance(e, kind)]

    def perform(self, eff: effects.Effect) -> Any:
        self.log.append(eff)
        match eff:
            case effects.VerifyConnectionToken() | effects.VerifySubscriptionToken():
                value = self.tokens.get(eff.token)
                if value is None:
                    raise InvalidToken("bad signature")
                if isinstance(value, Exception):
                    raise value
                return dict(value)
            case effects.Register():
                return None
            case effects.CheckAccess():
                return (eff.provider, eff.channel, eff.user) in self.allowed
            case effects.SubscribeChannel():
                if eff.channel in self.broken:
                    raise codes.error(codes.INTERNAL)
                self.attached[eff.channel] = eff.info
                s = self.stream(eff.channel)
                if eff.since is None:
                    return effects.StreamState(epoch=s.epoch, offset=s.top)
                if eff.cache_recovery:
                    return effects.StreamState(epoch=s.epoch, offset=s.top, publications=s.pubs[-1:])
                pubs = s.after(eff.since.offset)[: eff.recovery_limit + 1]
                return effects.StreamState(epoch=s.epoch, offset=s.top, publications=pubs)
            case effects.UnsubscribeChannel():
                self.attached.pop(eff.channel, None)
                return None
            case effects.PublishToChannel():
                s = self.stream(eff.channel)
                s.publish()
                return StreamPosition(offset=s.top, epoch=s.epoch)
            case effects.ReadPresence():
                return dict(self.presence.get(eff.channel, {}))
            case effects.ReadPresenceStats():
                infos = self.presence.get(eff.channel, {}).values()
                return len(infos), len({i.user for i in infos})
            case effects.ReadHistory():
                s = self.stream(eff.channel)
                if eff.since is not None and eff.since.epoch and eff.since.epoch != s.epoch:
                    raise codes.error(codes.UNRECOVERABLE_POSITION)
                if eff.reverse:
                    pubs = [p for p in reversed(s.pubs)
                            if eff.since is None or p.offset < eff.since.offset]
                else:
                    pubs = s.after(eff.since.offset) if eff.since is not None else list(s.pubs)
                if eff.limit >= 0:
                    pubs = pubs[: eff.limit]
                return effects.StreamState(epoch=s.epoch, offset=s.top, publications=pubs)
            case effects.CallRPC():
                if eff.method not in self.rpc:
                    raise codes.error(codes.METHOD_NOT_FOUND)
                return self.rpc[eff.method]
            case effects.SendMessage():
                if self.messages is None:
                    raise DisconnectError(codes.NOT_AVAILABLE_DISCONNECT)
                self.messages.append(eff.data)
                return None
        raise TypeError(f"unexpected effect {eff!r}")


def drive(gen: Any, node: FakeNode) -> Reply | None:
    """Run a session generator to its Reply, answering effects from ``node``."""
    try:
        eff = next(gen)
        while True:
            try:
                value = node.perform(eff)
            except (ClientError, DisconnectError, TokenExpired, InvalidToken) as exc:
                eff = gen.throw(exc)
                continue
            eff = gen.send(value)
    except StopIteration as stop:
        return stop.value


class Harness:
    """One session plus the fake node behind it."""

    def __init__(self, config: SessionConfig | None = None, rules: ChannelRules = RULES,
                 codec: Any = JSON, rng: random.Random | None = None, client_id: str = "cid-1") -> None:
        self.node = FakeNode()
        self.now = T0
        self.session = Session(config or SessionConfig(), rules, codec, client_id, T0,
                               rng or random.Random(1))
        self._id = 0
        self._tok = 0

    def token(self, user: str = "alice", **claims: Any) -> str:
        self._tok += 1
        name = f"tok-{self._tok}"
        self.node.tokens[name] = {"sub": user, **claims}
        return name

    def bad_token(self, exc: Exception) -> str:
        self._tok += 1
        name = f"tok-{self._tok}"
        self.node.tokens[name] = exc
        return name

    def handle(self, cmd: Command) -> Reply | None:
        return drive(self.session.handle(cmd, self.now), self.node)

    def frame(self, data: bytes) -> list[Reply | None]:
        """Decode one WebSocket message and handle its commands in order."""
        return [self.handle(c) for c in self.session.decode(data)]

    def send(self, obj: dict[str, Any]) -> Reply | None:
        [cmd] = JSON.decode_commands(orjson.dumps(obj))
        return self.handle(cmd)

    def call(self, **method: Any) -> Reply:
        self._id += 1
        reply = self.send({"id": self._id, **method})
        assert reply is not None
        assert reply.id == self._id
        return reply

    def connect(self, user: str = "alice", **claims: Any) -> Reply:
        reply = self.call(connect={"token": self.token(user, **claims)})
        assert reply.error is None, reply.error
        return reply

    def subscribe(self, channel: str, **fields: Any) -> Reply:
        return self.call(subscribe={"channel": channel, **fields})


def err(reply: Reply | None) -> int | None:
    assert reply is not None
    return reply.error.code if reply.error is not None else None


def disconnect_code(fn: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(DisconnectError) as info:
        fn(*args, **kwargs)
    return info.value.disconnect.code


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def hc() -> Harness:
    """A harness already connected as alice."""
    harness = Harness()
    harness.connect()
    return harness


# ---- framing and dispatch -----------------------------------------------------------


@pytest.mark.parametrize("frame", [
    b"{", b"not json", b'{"id":1,"connect":', b'{"id":"1","connect":{}}', b"[]", b"null", b"1",
    b'{"id":1,"connect":{"token":5}}', b'{"id":1,"subscribe":{"channel":["x"]}}',
    b'{"id":1.5,"connect":{}}', b'{"id":1,"connect":{}}\n{"id":2,', b"\xff\xfe",
    b'{"id":-1,"connect":{}}', b'{"id":1,"connect":{"token":"\xc8x"}}',
])
def test_malformed_json_frame_is_3501(h: Harness, frame: bytes) -> None:
    assert disconnect_code(h.session.decode, frame) == 3501


@pytest.mark.parametrize("frame", [b"", b"\n", b"\n\n", b"   ", b" \r\n "])
def test_empty_frame_is_3501(h: Harness, frame: bytes) -> None:
    assert disconnect_code(h.session.decode, frame) == 3501


def test_empty_protobuf_frame_is_3501() -> None:
    h = Harness(codec=codec_for("protobuf"))
    assert disconnect_code(h.session.decode, b"") == 3501
    assert disconnect_code(h.session.decode, b"\x05\x08") == 3501


@pytest.mark.parametrize("obj", [
    {"id": 1, "subscribe": {"channel": "news"}},
    {"id": 1, "publish": {"channel": "news", "data": {}}},
    {"id": 1, "rpc": {"method": "m"}},
    {"id": 1, "refresh": {"token": "x"}},
    {},  # a pong before connect
    {"send": {"data": {}}},
])
def test_commands_before_connect_are_3501(h: Harness, obj: dict[str, Any]) -> None:
    assert disconnect_code(h.send, obj) == 3501
    assert h.node.log == []


def test_second_connect_is_3501(hc: Harness) -> None:
    assert disconnect_code(hc.call, connect={"token": hc.token()}) == 3501


def test_unknown_fields_are_ignored(h: Harness) -> None:
    token = h.token()
    [reply] = h.frame(orjson.dumps({
        "id": 1, "future_field": [1, {"x": None}],
        "connect": {"token": token, "name": "js", "unknown": {"deep": True}, "dict": "d1", "flag": 1},
    }))
    assert reply is not None and reply.connect is not None
    [reply] = h.frame(b'{"id":2,"subscribe":{"channel":"news","flag":3,"nope":1,"tf":null}}')
    assert reply is not None and reply.subscribe is not None and reply.error is None


def test_command_with_id_but_no_method_is_3501(hc: Harness) -> None:
    assert disconnect_code(hc.send, {"id": 5}) == 3501
    assert disconnect_code(hc.send, {"id": 6, "unknown_method": {}}) == 3501


def test_ping_command_is_3501(hc: Harness) -> None:
    # Protocol v2 has no client ping; centrifuge disconnects with bad request.
    assert disconnect_code(hc.send, {"id": 2, "ping": {}}) == 3501


@pytest.mark.parametrize("obj", [
    {"subscribe": {"channel": "news"}},
    {"id": 0, "presence": {"channel": "chat:1"}},
    {"rpc": {"method": "m"}},
])
def test_id_zero_non_send_command_is_3501(hc: Harness, obj: dict[str, Any]) -> None:
    assert disconnect_code(hc.send, obj) == 3501


def test_pong_without_ping_is_3501(hc: Harness) -> None:
    assert disconnect_code(hc.send, {}) == 3501


def test_pong_after_ping_is_accepted_once(hc: Harness) -> None:
    actions = hc.session.on_timer(hc.session.next_ping_at)
    assert actions.frames == [b"{}"] and actions.disconnect is None
    assert hc.send({}) is None
    # A second pong for the same ping is unnecessary.
    assert disconnect_code(hc.send, {}) == 3501


def test_connect_and_subscribes_pipelined_in_one_frame(h: Harness) -> None:
    # centrifuge-js sends connect and every subscribe in one frame before the reply.
    token = h.token()
    frame = b"\n".join(orjson.dumps(c) for c in [
        {"connect": {"token": token, "name": "js"}, "id": 7},
        {"subscribe": {"channel": "chat:a"}, "id": 8},
        {"subscribe": {"channel": "news"}, "id": 9},
        {"id": 10, "publish": {"channel": "chat:a", "data": {"text": "hi"}}},
    ])
    replies = h.frame(frame)
    assert [r.id for r in replies if r is not None] == [7, 8, 9, 10]
    assert replies[0] is not None and replies[0].connect is not None
    assert all(r is not None and r.error is None for r in replies)
    kinds = [type(e).__name__ for e in h.node.log]
    assert kinds == ["VerifyConnectionToken", "Register", "SubscribeChannel", "SubscribeChannel",
                     "PublishToChannel"]
    assert [e.channel for e in h.node.of(effects.SubscribeChannel)] == ["chat:a", "news"]
    assert list(h.session.subs) == ["chat:a", "news"]


# ---- connect ----------------------------------------------------------------------------


def test_connect_without_token_when_anonymous_disallowed_is_3501(h: Harness) -> None:
    assert disconnect_code(h.call, connect={}) == 3501
    assert disconnect_code(Harness().call, connect={"token": ""}) == 3501


def test_connect_without_token_when_anonymous_allowed(h: Harness) -> None:
    h = Harness(SessionConfig(allow_anonymous_connect_without_token=True))
    reply = h.call(connect={})
    assert reply.connect is not None and reply.connect.client == "cid-1"
    assert h.session.connected and h.session.user == ""
    assert h.node.of(effects.Register) == [effects.Register("", "cid-1")]


def test_connect_invalid_token_is_3500(h: Harness) -> None:
    assert disconnect_code(h.call, connect={"token": "forged"}) == 3500
    assert disconnect_code(Harness().call, connect={"token": Harness().bad_token(InvalidToken("x"))}) == 3500


@pytest.mark.parametrize("claims", [
    {"channel": "chat:1"},
    {"info": None, "channels": "chat:1"},
    {"channels": [1, 2]},
    {"subs": ["chat:1"]},
    {"exp": "soon"},
    {"meta": [1]},
    {"b64info": "***"},
])
def test_connect_token_with_bad_claims_is_3500(h: Harness, claims: dict[str, Any]) -> None:
    # A subscription token (with `channel`) presented as a connection token is invalid.
    assert disconnect_code(h.call, connect={"token": h.token("alice", **claims)}) == 3500


def test_connect_expired_token_is_109_and_session_fails(h: Harness) -> None:
    reply = h.call(connect={"token": h.bad_token(TokenExpired())})
    assert err(reply) == 109 and reply.error is not None
    assert reply.error.message == "token expired" and reply.connect is None
    assert h.session.failed and not h.session.connected
    # Centrifugo stops reading commands from a connection whose connect failed.
    before = list(h.node.log)
    for obj in ({"id": 9, "connect": {"token": h.token()}}, {"id": 10, "subscribe": {"channel": "x"}}, {}):
        assert h.send(obj) is None
    assert h.node.log == before


def test_connect_expire_at_in_the_past_is_110(h: Harness) -> None:
    reply = h.call(connect={"token": h.token("alice", exp=int(T0) + 60, expire_at=int(T0) - 1)})
    assert err(reply) == 110
    assert h.session.failed


def test_disallowed_anonymous_token_is_3507() -> None:
    h = Harness(SessionConfig(disallow_anonymous_connection_tokens=True))
    assert disconnect_code(h.call, connect={"token": h.token("")}) == 3507
    h = Harness()
    h.connect("")
    assert h.session.user == ""


def test_connect_reply_fields(h: Harness) -> None:
    reply = h.call(connect={"token": h.token("alice", exp=int(T0) + 3600, info={"name": "A"})})
    res = reply.connect
    assert res is not None
    assert (res.client, res.version, res.ping, res.pong) == ("cid-1", "0.1.0", 25, True)
    assert res.expires is True and res.ttl == 3600
    wire = orjson.loads(h.session.encode(reply))
    assert wire == {"id": 1, "connect": {"client": "cid-1", "version": "0.1.0", "expires": True,
                                          "ttl": 3600, "ping": 25, "pong": True}}
    assert h.session.user == "alice" and h.session.conn_info == b'{"name":"A"}'
    assert h.session.expire_at == T0 + 3600


def test_connect_reply_without_exp_has_no_expiry() -> None:
    h = Harness()
    reply = h.connect()
    assert reply.connect is not None
    assert reply.connect.expires is False and reply.connect.ttl == 0
    assert "expires" not in orjson.loads(h.session.encode(reply))["connect"]


def test_expire_at_zero_means_never(h: Harness) -> None:
    reply = h.connect("alice", exp=int(T0) + 10, expire_at=0)
    assert reply.connect is not None and reply.connect.expires is False
    assert h.session.expire_at == 0


def test_connect_reply_ping_settings() -> None:
    h = Harness(SessionConfig(ping_interval=0))
    res = h.connect().connect
    assert res is not None and res.ping == 0 and res.pong is False
    assert h.session.next_ping_at == 0
    # No pong timeout: pings are sent, but the client is not asked to answer them.
    h = Harness(SessionConfig(ping_interval=10, pong_timeout=0))
    res = h.connect().connect
    assert res is not None and res.ping == 10 and res.pong is False


def test_server_side_subscriptions_from_channels_claim(h: Harness) -> None:
    reply = h.connect("alice", channels=["chat:a", "news"])
    res = reply.connect
    assert res is not None and set(res.subs) == {"chat:a", "news"}
    assert res.subs["chat:a"].recoverable and res.subs["chat:a"].positioned
    assert res.subs["chat:a"].epoch == "ep1"
    assert not res.subs["news"].positioned
    assert {s.channel for s in h.node.of(effects.SubscribeChannel)} == {"chat:a", "news"}
    assert all(s.server_side for s in h.session.subs.values())
    # Register happens before any server-side subscription.
    assert isinstance(h.node.log[1], effects.Register)


def test_server_side_subscriptions_from_subs_claim(h: Harness) -> None:
    reply = h.connect("alice", subs={"chat:b": {"info": {"role": "admin"}, "data": {"welcome": 1},
                                                 "override": {"presence": {"value": False}}},
                                      "news": None})
    res = reply.connect
    assert res is not None and set(res.subs) == {"chat:b", "news"}
    assert bytes(res.subs["chat:b"].data) == b'{"welcome":1}'
    [sub_b] = [e for e in h.node.of(effects.SubscribeChannel) if e.channel == "chat:b"]
    assert bytes(sub_b.info.chan_info) == b'{"role":"admin"}'
    assert sub_b.options.presence is False and sub_b.options.join_leave is True


def test_subs_claim_takes_precedence_over_channels_claim(h: Harness) -> None:
    # Centrifugo's verifier uses `channels` only when `subs` is empty.
    reply = h.connect("alice", channels=["news"], subs={"chat:b": {}})
    assert reply.connect is not None and set(reply.connect.subs) == {"chat:b"}


def test_server_side_subscription_to_unknown_namespace_fails_connect(h: Harness) -> None:
    reply = h.call(connect={"token": h.token("alice", channels=["chat:a", "nope:1"])})
    assert err(reply) == 102
    assert h.session.failed and not h.session.connected
    # Nothing was registered or attached on the node's side.
    assert [type(e) for e in h.node.log] == [effects.VerifyConnectionToken]


def test_node_failure_during_connect_fails_the_session(h: Harness) -> None:
    h.node.broken.add("chat:b")
    reply = h.call(connect={"token": h.token("alice", channels=["chat:a", "chat:b"])})
    assert err(reply) == 100 and reply.error is not None and reply.error.temporary
    assert h.session.failed
    assert h.send({"id": 5, "subscribe": {"channel": "news"}}) is None
    # The unusable connection is closed as stale; close() detaches what was attached.
    assert h.session.on_timer(T0 + 10).disconnect == codes.STALE
    assert [e.channel for e in h.session.close()] == ["chat:a"]


def test_server_side_subscriptions_over_channel_limit_is_3505() -> None:
    h = Harness(SessionConfig(channel_limit=2))
    assert disconnect_code(h.call, connect={"token": h.token("alice", channels=["a", "b", "c"])}) == 3505


def test_personal_channel_subscription() -> None:
    h = Harness(SessionConfig(subscribe_to_user_personal_channel=True))
    res = h.connect("alice").connect
    assert res is not None and list(res.subs) == ["#alice"]
    h = Harness(SessionConfig(subscribe_to_user_personal_channel=True,
                              personal_channel_namespace="personal"))
    res = h.connect("bob", channels=["news"]).connect
    assert res is not None and set(res.subs) == {"news", "personal:#bob"}
    assert res.subs["personal:#bob"].recoverable
    # Anonymous users have no personal channel.
    h = Harness(SessionConfig(subscribe_to_user_personal_channel=True,
                              allow_anonymous_connect_without_token=True))
    res = h.call(connect={}).connect
    assert res is not None and res.subs == {}


def test_server_side_recovery_on_reconnect(h: Harness) -> None:
    s = h.node.stream("chat:a")
    s.publish(5)
    reply = h.call(connect={"token": h.token("alice", channels=["chat:a"]),
                            "subs": {"chat:a": {"recover": True, "offset": 3, "epoch": "ep1"}}})
    assert reply.connect is not None
    sub = reply.connect.subs["chat:a"]
    assert sub.recovered and sub.was_recovering
    assert [p.offset for p in sub.publications] == [4, 5]
    assert sub.offset == 3


def test_server_side_subs_without_recover_flag_do_not_recover(h: Harness) -> None:
    h.node.stream("chat:a").publish(5)
    reply = h.call(connect={"token": h.token("alice", channels=["chat:a"]),
                            "subs": {"chat:a": {"offset": 3, "epoch": "ep1"}}})
    assert reply.connect is not None
    sub = reply.connect.subs["chat:a"]
    assert not sub.was_recovering and not sub.recovered and sub.publications == []
    assert sub.offset == 5


# ---- subscribe --------------------------------------------------------------------------


def test_subscribe_ok(hc: Harness) -> None:
    reply = hc.subscribe("chat:room")
    res = reply.subscribe
    assert res is not None
    assert res.recoverable and res.positioned and res.epoch == "ep1" and res.offset == 0
    assert not res.expires and not res.was_recovering
    [eff] = hc.node.of(effects.SubscribeChannel)
    assert eff.channel == "chat:room" and eff.info == ClientInfo(user="alice", client="cid-1")
    assert eff.since is None and eff.recovery_limit == 300
    # Without positioning/recovery the result is empty but present.
    wire = orjson.loads(hc.session.encode(hc.subscribe("news")))
    assert wire == {"id": 3, "subscribe": {}}


def test_subscribe_already_subscribed_is_105(hc: Harness) -> None:
    hc.subscribe("news")
    assert err(hc.subscribe("news")) == 105


def test_subscribe_channel_limit_is_106() -> None:
    h = Harness(SessionConfig(channel_limit=2))
    h.connect()
    assert err(h.subscribe("a")) is None
    assert err(h.subscribe("b")) is None
    assert err(h.subscribe("c")) == 106
    h.call(unsubscribe={"channel": "a"})
    assert err(h.subscribe("c")) is None


def test_subscribe_empty_channel_is_3501(hc: Harness) -> None:
    assert disconnect_code(hc.subscribe, "") == 3501
    assert disconnect_code(hc.call, subscribe={}) == 3501


def test_subscribe_too_long_channel_is_107(hc: Harness) -> None:
    assert err(hc.subscribe("x" * 255)) is None
    assert err(hc.subscribe("y" * 256)) == 107


def test_channel_length_is_counted_in_bytes(hc: Harness) -> None:
    # centrifuge compares len(channel) of the Go string: UTF-8 bytes.
    name = "re:" + "я" * 126  # 3 + 252 bytes
    assert err(hc.subscribe(name)) is None
    assert err(hc.subscribe("re:" + "я" * 127)) == 107


def test_subscribe_non_ascii_without_regex_is_107(hc: Harness) -> None:
    assert err(hc.subscribe("café")) == 107
    assert err(hc.subscribe("chat:café")) == 107


def test_subscribe_channel_regex(hc: Harness) -> None:
    # The regex applies to the part after `ns:` and replaces the ASCII check.
    assert err(hc.subscribe("re:привет")) is None
    assert err(hc.subscribe("re:abc")) is None
    assert err(hc.subscribe("re:ABC")) == 107
    assert err(hc.subscribe("re:a b")) == 107


def test_subscribe_unknown_namespace_is_102(hc: Harness) -> None:
    assert err(hc.subscribe("nope:1")) == 102
    assert err(hc.subscribe("$nope:1", token="x")) == 102


def test_subscribe_empty_namespace_uses_channels_without_namespace(hc: Harness) -> None:
    # Centrifugo: ":x" has namespace "" — the options of channels without namespace.
    assert err(hc.subscribe(":x")) is None


def test_subscribe_private_channel_without_token_is_103(hc: Harness) -> None:
    assert err(hc.subscribe("$news")) == 103
    assert err(hc.subscribe("$chat:1")) == 103


def test_subscribe_without_permission_is_103(hc: Harness) -> None:
    assert err(hc.subscribe("secret:1")) == 103
    assert err(hc.subscribe("locked:1")) == 103


def test_subscribe_anonymous() -> None:
    h = Harness(SessionConfig(allow_anonymous_connect_without_token=True))
    h.call(connect={})
    assert err(h.subscribe("news")) == 103  # allow_subscribe_for_client is for users only
    assert err(h.subscribe("anon:1")) is None


def test_subscribe_unsupported_type_and_delta(hc: Harness) -> None:
    assert err(hc.subscribe("news", type=1)) == 103
    assert disconnect_code(hc.subscribe, "news", delta="xdelta") == 3501
    assert err(hc.subscribe("news", delta="fossil")) is None


def test_subscription_token_valid(hc: Harness) -> None:
    token = hc.token("alice", channel="secret:1", info={"seat": 3}, b64data="AAE=",
                     exp=int(T0) + 120)
    reply = hc.subscribe("secret:1", token=token)
    res = reply.subscribe
    assert res is not None and reply.error is None
    assert res.expires and res.ttl == 120
    assert bytes(res.data) == b"\x00\x01"
    assert bytes(hc.session.subs["secret:1"].info.chan_info) == b'{"seat":3}'
    assert hc.session.subs["secret:1"].expire_at == T0 + 120
    # A token also opens a private channel.
    assert err(hc.subscribe("$chat:2", token=hc.token("alice", channel="$chat:2"))) is None


def test_subscription_token_expired_is_109(hc: Harness) -> None:
    assert err(hc.subscribe("secret:1", token=hc.bad_token(TokenExpired()))) == 109
    assert "secret:1" not in hc.session.subs


def test_subscription_token_expire_at_in_the_past_is_110(hc: Harness) -> None:
    token = hc.token("alice", channel="secret:1", exp=int(T0) + 60, expire_at=int(T0) - 5)
    assert err(hc.subscribe("secret:1", token=token)) == 110


def test_subscription_token_invalid_is_103(hc: Harness) -> None:
    assert err(hc.subscribe("secret:1", token="forged")) == 103
    assert err(hc.subscribe("secret:1", token=hc.token("alice"))) == 103  # no channel claim
    assert err(hc.subscribe("secret:1", token=hc.token("alice", channel=5))) == 103


@pytest.mark.parametrize("claims", [
    {"sub": "alice", "channel": "secret:2"},
    {"sub": "bob", "channel": "secret:1"},
    {"sub": "", "channel": "secret:1"},
    {"sub": "alice", "channel": "secret:1", "client": "someone-else"},
])
def test_subscription_token_mismatch_is_3500(hc: Harness, claims: dict[str, Any]) -> None:
    user = claims.pop("sub")
    token = hc.token(user, **claims)
    assert disconnect_code(hc.subscribe, "secret:1", token=token) == 3500


def test_subscription_token_bound_to_this_client(hc: Harness) -> None:
    token = hc.token("alice", channel="secret:1", client="cid-1")
    assert err(hc.subscribe("secret:1", token=token)) is None


def test_subscription_token_override(hc: Harness) -> None:
    token = hc.token("alice", channel="secret:1",
                     override={"force_recovery": {"value": False}, "force_positioning": {"value": False}})
    res = hc.subscribe("secret:1", token=token).subscribe
    assert res is not None and not res.recoverable and not res.positioned


def test_user_limited_channels(hc: Harness) -> None:
    assert err(hc.subscribe("dm:#alice,bob")) is None
    assert err(hc.subscribe("dm:#bob,alice")) is None
    assert err(hc.subscribe("dm:#bob,carol")) == 103
    assert err(hc.subscribe("dm:#alicex")) == 103
    # Without allow_user_limited_channels `#` is an ordinary character.
    assert err(hc.subscribe("chat:#bob")) is None
    # In a namespace that allows both, a user-limited channel is not open to every client.
    rules = msgspec.structs.replace(RULES, namespaces={
        "both": ChannelOptions(allow_subscribe_for_client=True, allow_user_limited_channels=True)})
    h = Harness(rules=rules)
    h.connect("alice")
    assert err(h.subscribe("both:#bob")) == 103
    assert err(h.subscribe("both:#alice")) is None
    assert err(h.subscribe("both:open")) is None


def test_user_limited_channel_refuses_anonymous() -> None:
    h = Harness(SessionConfig(allow_anonymous_connect_without_token=True))
    h.call(connect={})
    assert err(h.subscribe("dm:#,bob")) == 103


def test_insecure_allows_everything_but_private_channels() -> None:
    h = Harness(rules=msgspec.structs.replace(RULES, insecure=True))
    h.connect()
    assert err(h.subscribe("locked:1")) is None
    assert err(h.subscribe("$locked:1")) == 103


def test_requested_positioning_recovery_and_join_leave(hc: Harness) -> None:
    res = hc.subscribe("opt:1").subscribe
    assert res is not None and not res.positioned and not res.recoverable
    [eff] = hc.node.of(effects.SubscribeChannel)
    assert eff.push_join_leave is False
    res = hc.subscribe("opt:2", positioned=True).subscribe
    assert res is not None and res.positioned and not res.recoverable
    res = hc.subscribe("opt:3", recoverable=True, join_leave=True).subscribe
    assert res is not None and res.positioned and res.recoverable
    # join_leave needs presence access as well: opt has none.
    assert hc.node.of(effects.SubscribeChannel)[-1].push_join_leave is False
    # chat: join_leave on and presence for subscribers.
    hc.subscribe("chat:1", join_leave=True)
    assert hc.node.of(effects.SubscribeChannel)[-1].push_join_leave is True
    hc.subscribe("chat:2")
    assert hc.node.of(effects.SubscribeChannel)[-1].push_join_leave is False


def test_unsubscribe(hc: Harness) -> None:
    hc.subscribe("chat:1")
    reply = hc.call(unsubscribe={"channel": "chat:1"})
    assert orjson.loads(hc.session.encode(reply)) == {"id": 3, "unsubscribe": {}}
    [eff] = hc.node.of(effects.UnsubscribeChannel)
    assert eff.channel == "chat:1"
    assert "chat:1" not in hc.session.subs
    # Not subscribed: still a success, nothing to detach.
    assert hc.call(unsubscribe={"channel": "chat:1"}).error is None
    assert len(hc.node.of(effects.UnsubscribeChannel)) == 1
    assert disconnect_code(hc.call, unsubscribe={"channel": ""}) == 3501


# ---- recovery ---------------------------------------------------------------------------


def resubscribe(h: Harness, channel: str, offset: int, epoch: str = "ep1", **extra: Any) -> Reply:
    return h.subscribe(channel, recover=True, offset=offset, epoch=epoch, recoverable=True,
                       positioned=True, **extra)


def test_recovered_with_publications(hc: Harness) -> None:
    hc.node.stream("chat:1").publish(10)
    res = resubscribe(hc, "chat:1", 7).subscribe
    assert res is not None
    assert res.recovered and res.was_recovering and res.recoverable
    assert [p.offset for p in res.publications] == [8, 9, 10]
    # Reply offset is the client's: SDKs advance it while applying the publications.
    assert res.offset == 7 and res.epoch == "ep1"
    [eff] = hc.node.of(effects.SubscribeChannel)
    assert eff.since == StreamPosition(offset=7, epoch="ep1")


def test_recovered_at_top_without_publications(hc: Harness) -> None:
    hc.node.stream("chat:1").publish(4)
    res = resubscribe(hc, "chat:1", 4).subscribe
    assert res is not None and res.recovered and res.publications == [] and res.offset == 4


def test_recover_from_stream_start(hc: Harness) -> None:
    hc.node.stream("chat:1").publish(3)
    res = resubscribe(hc, "chat:1", 0, epoch="").subscribe
    assert res is not None and res.recovered and [p.offset for p in res.publications] == [1, 2, 3]


def test_gap_is_not_recovered(hc: Harness) -> None:
    s = hc.node.stream("chat:1")
    s.size = 3
    s.publish(10)  # retains 8..10
    res = resubscribe(hc, "chat:1", 5).subscribe
    assert res is not None
    assert not res.recovered and res.was_recovering and res.publications == []
    assert res.offset == 10 and res.epoch == "ep1"


def test_epoch_mismatch_is_not_recovered(hc: Harness) -> None:
    hc.node.stream("chat:1").publish(5)
    res = resubscribe(hc, "chat:1", 4, epoch="old-epoch").subscribe
    assert res is not None and not res.recovered and res.publications == [] and res.offset == 5


def test_too_many_missed_is_not_recovered() -> None:
    h = Harness(SessionConfig(recovery_max_publication_limit=5))
    h.connect()
    h.node.stream("chat:1").publish(20)
    res = resubscribe(h, "chat:1", 14).subscribe  # 6 missed > 5
    assert res is not None and not res.recovered and res.publications == []
    assert h.node.of(effects.SubscribeChannel)[-1].recovery_limit == 5
    h.call(unsubscribe={"channel": "chat:1"})
    res = resubscribe(h, "chat:1", 15).subscribe  # exactly 5 missed
    assert res is not None and res.recovered and [p.offset for p in res.publications] == [16, 17, 18, 19, 20]


def test_reject_unrecovered_flag_is_112(hc: Harness) -> None:
    hc.node.stream("chat:1").publish(5)
    reply = resubscribe(hc, "chat:1", 2, epoch="old", flag=3)
    assert err(reply) == 112 and reply.error is not None
    assert reply.error.message == "unrecoverable position"
    [unsub] = hc.node.of(effects.UnsubscribeChannel)
    assert unsub.channel == "chat:1"
    assert "chat:1" not in hc.session.subs and "chat:1" not in hc.node.attached
    # Still connected: the client resubscribes after reloading its state.
    assert err(hc.subscribe("chat:1", recoverable=True)) is None


def test_reject_unrecovered_flag_when_recovered_is_ignored(hc: Harness) -> None:
    hc.node.stream("chat:1").publish(5)
    res = resubscribe(hc, "chat:1", 4, flag=3).subscribe
    assert res is not None and res.recovered


def test_compaction_flag_alone_is_ignored(hc: Harness) -> None:
    hc.node.stream("chat:1").publish(5)
    res = resubscribe(hc, "chat:1", 2, epoch="old", flag=1).subscribe
    assert res is not None and not res.recovered


def test_recover_on_channel_without_recovery(hc: Harness) -> None:
    res = hc.subscribe("news", recover=True, offset=3, epoch="x").subscribe
    assert res is not None and not res.recovered and not res.recoverable and res.publications == []
    # centrifuge reports the attempt (was_recovering = req.recover) even when not recoverable.
    assert res.was_recovering


def test_cache_recovery_mode(hc: Harness) -> None:
    hc.node.stream("cache:1").publish(5)
    res = resubscribe(hc, "cache:1", 2).subscribe
    assert res is not None and res.recovered and [p.offset for p in res.publications] == [5]
    assert res.offset == 2
    hc.call(unsubscribe={"channel": "cache:1"})
    # The client already has the latest publication.
    res = resubscribe(hc, "cache:1", 5).subscribe
    assert res is not None and res.recovered and res.publications == []
    hc.call(unsubscribe={"channel": "cache:1"})
    # Another epoch still gets the latest publication (only the latest state matters).
    res = resubscribe(hc, "cache:1", 5, epoch="other").subscribe
    assert res is not None and res.recovered and [p.offset for p in res.publications] == [5]


def test_cache_recovery_of_empty_stream(hc: Harness) -> None:
    res = resubscribe(hc, "cache:2", 0, epoch="").subscribe
    assert res is not None and not res.recovered and res.publications == []


# ---- history ----------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "passed"), [(0, 0), (-1, 300), (5, 5), (300, 300), (1000, 300)])
def test_history_limit(hc: Harness, asked: int, passed: int) -> None:
    hc.subscribe("chat:1")
    hc.node.stream("chat:1").publish(400)
    reply = hc.call(history={"channel": "chat:1", "limit": asked})
    [eff] = hc.node.of(effects.ReadHistory)
    assert eff.limit == passed
    assert reply.history is not None and len(reply.history.publications) == passed
    assert reply.history.offset == 400 and reply.history.epoch == "ep1"


def test_history_limit_without_cap() -> None:
    h = Harness(SessionConfig(history_max_publication_limit=0))
    h.connect()
    h.subscribe("chat:1")
    h.call(history={"channel": "chat:1", "limit": -1})
    assert h.node.of(effects.ReadHistory)[0].limit == -1


def test_history_reply_keys_always_present(hc: Harness) -> None:
    hc.subscribe("chat:1")
    wire = orjson.loads(hc.session.encode(hc.call(history={"channel": "chat:1"})))
    assert wire == {"id": 3, "history": {"publications": [], "epoch": "ep1", "offset": 0}}


def test_history_since_and_reverse(hc: Harness) -> None:
    hc.subscribe("chat:1")
    hc.node.stream("chat:1").publish(10)
    reply = hc.call(history={"channel": "chat:1", "limit": 3, "since": {"offset": 4, "epoch": "ep1"}})
    assert reply.history is not None and [p.offset for p in reply.history.publications] == [5, 6, 7]
    reply = hc.call(history={"channel": "chat:1", "limit": 2, "reverse": True})
    assert reply.history is not None and [p.offset for p in reply.history.publications] == [10, 9]
    reply = hc.call(history={"channel": "chat:1", "limit": -1, "since": {"offset": 3}, "reverse": True})
    assert reply.history is not None and [p.offset for p in reply.history.publications] == [2, 1]
    assert err(hc.call(history={"channel": "chat:1", "since": {"offset": 1, "epoch": "zzz"}})) == 112


def test_history_reverse_since_zero_is_107(hc: Harness) -> None:
    hc.subscribe("chat:1")
    assert err(hc.call(history={"channel": "chat:1", "reverse": True, "since": {"offset": 0}})) == 107
    assert hc.node.of(effects.ReadHistory) == []


def test_history_errors(hc: Harness) -> None:
    assert err(hc.call(history={"channel": "plain:1"})) == 108
    assert err(hc.call(history={"channel": "locked:1"})) == 103
    assert err(hc.call(history={"channel": "chat:1"})) == 103  # subscribers only
    assert err(hc.call(history={"channel": "nope:1"})) == 102
    assert err(hc.call(history={"channel": "café"})) in (107, 108)
    assert disconnect_code(hc.call, history={"channel": ""}) == 3501
    assert hc.node.of(effects.ReadHistory) == []


# ---- publish ------------------------------------------------------------------------------


PUBLISH_MATRIX = [
    # (allow_publish_for_client, _for_subscriber, _for_anonymous, user, subscribed, allowed)
    (False, False, False, "alice", False, False),
    (False, False, False, "alice", True, False),
    (True, False, False, "alice", False, True),
    (True, False, False, "alice", True, True),
    (True, False, False, "", False, False),
    (True, False, True, "", False, True),
    (False, True, False, "alice", False, False),
    (False, True, False, "alice", True, True),
    (False, True, False, "", True, False),
    (False, True, True, "", True, True),
    (False, True, True, "", False, False),
    (False, False, True, "", True, False),
    (False, False, True, "alice", True, False),
]


@pytest.mark.parametrize(("for_client", "for_subscriber", "for_anonymous", "user", "subscribed", "allowed"),
                         PUBLISH_MATRIX)
def test_publish_permission_matrix(for_client: bool, for_subscriber: bool, for_anonymous: bool,
                                   user: str, subscribed: bool, allowed: bool) -> None:
    opts = ChannelOptions(allow_subscribe_for_client=True, allow_subscribe_for_anonymous=True,
                          allow_publish_for_client=for_client,
                          allow_publish_for_subscriber=for_subscriber,
                          allow_publish_for_anonymous=for_anonymous)
    h = Harness(SessionConfig(allow_anonymous_connect_without_token=True),
                rules=ChannelRules(namespaces={"ns": opts}))
    if user:
        h.connect(user)
    else:
        h.call(connect={})
    if subscribed:
        assert err(h.subscribe("ns:1")) is None
    reply = h.call(publish={"channel": "ns:1", "data": {"text": "hi"}})
    if allowed:
        assert reply.error is None and reply.publish is not None
        [eff] = h.node.of(effects.PublishToChannel)
        assert eff.channel == "ns:1" and eff.data == b'{"text":"hi"}'
        assert eff.info is not None and eff.info.user == user and eff.info.client == "cid-1"
    else:
        assert err(reply) == 103
        assert h.node.of(effects.PublishToChannel) == []


def test_publish_insecure() -> None:
    h = Harness(rules=msgspec.structs.replace(RULES, insecure=True))
    h.connect()
    assert h.call(publish={"channel": "locked:1", "data": 1}).error is None


def test_publish_reply_and_info(hc: Harness) -> None:
    hc.subscribe("secret:1", token=hc.token("alice", channel="secret:1", info={"seat": 1}))
    reply = hc.call(publish={"channel": "secret:1", "data": {"a": 1}})
    assert orjson.loads(hc.session.encode(reply)) == {"id": 3, "publish": {}}
    [eff] = hc.node.of(effects.PublishToChannel)
    # A subscriber publishes with its channel info attached.
    assert bytes(eff.info.chan_info) == b'{"seat":1}'
    assert eff.options == RULES.namespaces["secret"]


def test_publish_errors(hc: Harness) -> None:
    assert err(hc.call(publish={"channel": "nope:1", "data": 1})) == 102
    assert err(hc.call(publish={"channel": "café", "data": 1})) == 107
    assert err(hc.call(publish={"channel": "news"})) == 107  # no data
    # Data is validated before permissions, as in Centrifugo's OnPublish.
    assert err(hc.call(publish={"channel": "locked:1"})) == 107
    assert err(hc.call(publish={"channel": "locked:1", "data": 1})) == 103
    assert disconnect_code(hc.call, publish={"channel": "", "data": 1}) == 3501
    assert hc.node.of(effects.PublishToChannel) == []


# ---- presence ------------------------------------------------------------------------------


def test_presence(hc: Harness) -> None:
    info = ClientInfo(user="bob", client="c2", conn_info=Raw(b'{"n":1}'))
    hc.node.presence["chat:1"] = {"c2": info}
    assert err(hc.call(presence={"channel": "chat:1"})) == 103  # not subscribed yet
    hc.subscribe("chat:1")
    reply = hc.call(presence={"channel": "chat:1"})
    assert reply.presence is not None and reply.presence.presence == {"c2": info}
    wire = orjson.loads(hc.session.encode(reply))
    assert wire["presence"] == {"presence": {"c2": {"user": "bob", "client": "c2", "conn_info": {"n": 1}}}}
    reply = hc.call(presence_stats={"channel": "chat:1"})
    assert orjson.loads(hc.session.encode(reply))["presence_stats"] == {"num_clients": 1, "num_users": 1}


def test_presence_empty_keys_present(hc: Harness) -> None:
    hc.subscribe("chat:1")
    assert orjson.loads(hc.session.encode(hc.call(presence={"channel": "chat:1"}))) == \
        {"id": 3, "presence": {"presence": {}}}
    assert orjson.loads(hc.session.encode(hc.call(presence_stats={"channel": "chat:1"}))) == \
        {"id": 4, "presence_stats": {"num_clients": 0, "num_users": 0}}


@pytest.mark.parametrize("method", ["presence", "presence_stats"])
def test_presence_errors(hc: Harness, method: str) -> None:
    assert err(hc.call(**{method: {"channel": "plain:1"}})) == 108
    assert err(hc.call(**{method: {"channel": "locked:1"}})) == 103
    assert err(hc.call(**{method: {"channel": "nope:1"}})) == 102
    assert disconnect_code(hc.call, **{method: {"channel": ""}}) == 3501
    assert hc.node.of(effects.ReadPresence) == [] and hc.node.of(effects.ReadPresenceStats) == []


def test_presence_for_anonymous() -> None:
    opts = ChannelOptions(presence=True, allow_presence_for_client=True, allow_subscribe_for_client=True)
    rules = ChannelRules(namespaces={"pp": opts, "pa": msgspec.structs.replace(
        opts, allow_presence_for_anonymous=True)})
    h = Harness(SessionConfig(allow_anonymous_connect_without_token=True), rules=rules)
    h.call(connect={})
    assert err(h.call(presence={"channel": "pp:1"})) == 103
    assert err(h.call(presence={"channel": "pa:1"})) is None


# ---- rpc / send ------------------------------------------------------------------------------


def test_rpc_unknown_method_is_104(hc: Harness) -> None:
    reply = hc.call(rpc={"method": "nope", "data": {}})
    assert err(reply) == 104 and reply.error is not None and reply.error.message == "method not found"
    assert orjson.loads(hc.session.encode(reply)) == \
        {"id": 2, "error": {"code": 104, "message": "method not found"}}


def test_rpc_ok(hc: Harness) -> None:
    hc.node.rpc["echo"] = b'{"ok":true}'
    reply = hc.call(rpc={"method": "echo", "data": {"x": 1}})
    assert reply.rpc is not None and bytes(reply.rpc.data) == b'{"ok":true}'
    [eff] = hc.node.of(effects.CallRPC)
    assert eff == effects.CallRPC("echo", b'{"x":1}', "alice", "cid-1")
    hc.node.rpc["empty"] = b""
    assert orjson.loads(hc.session.encode(hc.call(rpc={"method": "empty"}))) == {"id": 3, "rpc": {}}


def test_send_without_handler_is_3508(hc: Harness) -> None:
    assert disconnect_code(hc.send, {"send": {"data": {"hello": 1}}}) == 3508


def test_send_with_handler_has_no_reply(hc: Harness) -> None:
    hc.node.messages = []
    assert hc.send({"send": {"data": {"hello": 1}}}) is None
    assert hc.node.messages == [b'{"hello":1}']


# ---- refresh ----------------------------------------------------------------------------------


def test_refresh_empty_token_is_3501(hc: Harness) -> None:
    assert disconnect_code(hc.call, refresh={"token": ""}) == 3501
    assert disconnect_code(hc.call, refresh={}) == 3501


def test_refresh_expired_token_is_3005(hc: Harness) -> None:
    assert disconnect_code(hc.call, refresh={"token": hc.bad_token(TokenExpired())}) == 3005


def test_refresh_invalid_or_other_user_is_3500(hc: Harness) -> None:
    assert disconnect_code(hc.call, refresh={"token": "forged"}) == 3500
    assert disconnect_code(hc.call, refresh={"token": hc.token("bob")}) == 3500
    assert disconnect_code(hc.call, refresh={"token": hc.token("alice", channel="x")}) == 3500


def test_refresh_ok() -> None:
    h = Harness()
    h.connect("alice", exp=int(T0) + 60)
    h.now = T0 + 50
    reply = h.call(refresh={"token": h.token("alice", exp=int(T0) + 3650, info={"v": 2})})
    assert reply.refresh is not None and reply.refresh.expires and reply.refresh.ttl == 3600
    assert h.session.expire_at == T0 + 3650 and h.session.conn_info == b'{"v":2}'
    wire = orjson.loads(h.session.encode(reply))["refresh"]
    assert wire["expires"] is True and wire["ttl"] == 3600
    # A token without exp ends the expiry.
    reply = h.call(refresh={"token": h.token("alice")})
    assert reply.refresh is not None and not reply.refresh.expires and h.session.expire_at == 0


def test_refresh_with_changed_token_channels_is_3010() -> None:
    h = Harness()
    h.connect("alice", channels=["chat:a", "news"])
    h.subscribe("chat:z")
    # Same set (order and client-side subscriptions do not matter): fine.
    assert h.call(refresh={"token": h.token("alice", channels=["news", "chat:a"])}).error is None
    # `subs` naming the same channels is the same grant.
    assert h.call(refresh={"token": h.token("alice", subs={"news": {}, "chat:a": {}})}).error is None
    # A channel the client is already subscribed to on its own counts as subscribed.
    assert h.call(refresh={"token": h.token("alice", channels=["chat:a", "news", "chat:z"])}).error is None
    assert disconnect_code(h.call, refresh={"token": h.token("alice", channels=["chat:a"])}) == 3010
    h = Harness()
    h.connect("alice", channels=["chat:a"])
    assert disconnect_code(h.call, refresh={"token": h.token("alice", channels=["chat:a", "chat:b"])}) == 3010
    h = Harness()
    h.connect("alice")
    assert disconnect_code(h.call, refresh={"token": h.token("alice", channels=["chat:b"])}) == 3010
    # A token channel the client unsubscribed from is not required back.
    h = Harness()
    h.connect("alice", channels=["chat:a"])
    h.call(unsubscribe={"channel": "chat:a"})
    assert h.call(refresh={"token": h.token("alice")}).error is None


def test_refresh_to_a_past_expire_at_is_110(hc: Harness) -> None:
    reply = hc.call(refresh={"token": hc.token("alice", exp=int(T0) + 60, expire_at=int(T0) - 1)})
    assert err(reply) == 110
    assert not hc.session.failed


# ---- sub_refresh ------------------------------------------------------------------------------


def test_sub_refresh_not_subscribed_is_103(hc: Harness) -> None:
    assert err(hc.call(sub_refresh={"channel": "secret:1", "token": hc.token(channel="secret:1")})) == 103


def test_sub_refresh_empty_token_is_107(hc: Harness) -> None:
    hc.subscribe("secret:1", token=hc.token("alice", channel="secret:1", exp=int(T0) + 10))
    assert err(hc.call(sub_refresh={"channel": "secret:1", "token": ""})) == 107
    assert disconnect_code(hc.call, sub_refresh={"channel": "", "token": "x"}) == 3501


def test_sub_refresh_ok(hc: Harness) -> None:
    hc.subscribe("secret:1", token=hc.token("alice", channel="secret:1", exp=int(T0) + 10))
    hc.now = T0 + 5
    reply = hc.call(sub_refresh={"channel": "secret:1",
                                 "token": hc.token("alice", channel="secret:1", exp=int(T0) + 605)})
    assert reply.sub_refresh is not None and reply.sub_refresh.expires and reply.sub_refresh.ttl == 600
    assert hc.session.subs["secret:1"].expire_at == T0 + 605
    assert orjson.loads(hc.session.encode(reply)) == \
        {"id": 3, "sub_refresh": {"expires": True, "ttl": 600}}


def test_sub_refresh_mismatch_is_3500(hc: Harness) -> None:
    hc.subscribe("secret:1", token=hc.token("alice", channel="secret:1", exp=int(T0) + 10))
    assert disconnect_code(hc.call, sub_refresh={"channel": "secret:1",
                                                 "token": hc.token("alice", channel="secret:2")}) == 3500
    assert disconnect_code(hc.call, sub_refresh={"channel": "secret:1",
                                                 "token": hc.token("bob", channel="secret:1")}) == 3500
    assert disconnect_code(hc.call, sub_refresh={"channel": "secret:1", "token": "forged"}) == 3500


# ---- timers ------------------------------------------------------------------------------------


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_stale_before_connect(h: Harness) -> None:
    assert h.session.next_deadline() == T0 + 10
    assert h.session.on_timer(T0 + 9.9).disconnect is None
    assert h.session.on_timer(T0 + 10).disconnect == codes.STALE
    assert codes.STALE.code == 3502


def test_stale_after_failed_connect(h: Harness) -> None:
    # centrifuge's closeStale also closes a connection left unusable by a failed connect.
    h.call(connect={"token": h.bad_token(TokenExpired())})
    assert h.session.failed
    assert h.session.next_deadline() == T0 + 10
    assert h.session.on_timer(T0 + 10).disconnect == codes.STALE


def test_no_stale_after_connect(hc: Harness) -> None:
    actions = hc.session.on_timer(T0 + 10)
    assert actions.disconnect is None


@pytest.mark.parametrize(("value", "expected"), [(0.0, 12.5), (0.5, 18.75), (0.999999, 25.0)])
def test_first_ping_between_half_interval_and_interval(value: float, expected: float) -> None:
    h = Harness(rng=FixedRandom(value))
    h.connect()
    assert h.session.next_ping_at == pytest.approx(T0 + expected, abs=1e-3)
    assert T0 + 12.5 <= h.session.next_ping_at <= T0 + 25


def test_ping_schedule_and_pong_timeout() -> None:
    h = Harness(rng=FixedRandom(0.0))
    h.connect()
    first = h.session.next_ping_at
    assert h.session.next_deadline() == first
    assert h.session.on_timer(first - 0.1).frames == []
    actions = h.session.on_timer(first)
    assert actions.frames == [b"{}"]
    assert h.session.pong_deadline == first + 8
    assert h.session.next_ping_at == first + 25
    assert h.session.next_deadline() == first + 8
    assert h.session.on_timer(first + 7.9).disconnect is None
    actions = h.session.on_timer(first + 8)
    assert actions.disconnect == codes.NO_PONG and actions.disconnect.code == 3012


def test_pong_keeps_connection_alive() -> None:
    h = Harness(rng=FixedRandom(0.0))
    h.connect()
    first = h.session.next_ping_at
    h.session.on_timer(first)
    h.now = first + 1
    assert h.send({}) is None
    assert h.session.on_timer(first + 8).disconnect is None
    # The next ping comes a full interval after the previous one.
    assert h.session.on_timer(first + 25).frames == [b"{}"]


def test_protobuf_ping_is_a_zero_byte() -> None:
    h = Harness(codec=codec_for("protobuf"), rng=FixedRandom(0.0))
    reply = h.handle(Command(id=1, connect=ConnectRequest(token=h.token())))
    assert reply is not None and reply.connect is not None
    actions = h.session.on_timer(h.session.next_ping_at)
    assert actions.frames == [b"\x00"]
    # The protobuf pong is an empty Command.
    [pong] = h.session.decode(b"\x00")
    assert pong == Command()
    assert h.handle(pong) is None


def test_connection_expiry_closes_after_delay() -> None:
    h = Harness(SessionConfig(ping_interval=0))
    h.connect("alice", exp=int(T0) + 60)
    assert h.session.next_deadline() == T0 + 60 + 25
    assert h.session.on_timer(T0 + 84).disconnect is None
    actions = h.session.on_timer(T0 + 85)
    assert actions.disconnect == codes.CONNECTION_EXPIRED and actions.disconnect.code == 3005


def test_refresh_postpones_connection_expiry() -> None:
    h = Harness(SessionConfig(ping_interval=0))
    h.connect("alice", exp=int(T0) + 60)
    h.now = T0 + 55
    h.call(refresh={"token": h.token("alice", exp=int(T0) + 600)})
    assert h.session.on_timer(T0 + 85).disconnect is None
    assert h.session.next_deadline() == T0 + 625


def test_subscription_expiry_unsubscribes_with_2501() -> None:
    h = Harness(SessionConfig(ping_interval=0))
    h.connect()
    h.subscribe("secret:1", token=h.token("alice", channel="secret:1", exp=int(T0) + 30))
    assert h.session.next_deadline() == T0 + 30 + 25
    assert h.session.on_timer(T0 + 54).frames == []
    actions = h.session.on_timer(T0 + 55)
    assert actions.disconnect is None
    assert [orjson.loads(f) for f in actions.frames] == [
        {"push": {"channel": "secret:1", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}}]
    [eff] = actions.unsubscribe
    assert isinstance(eff, effects.UnsubscribeChannel) and eff.channel == "secret:1"
    assert "secret:1" not in h.session.subs
    assert h.session.next_deadline() == 0


def test_sub_refresh_postpones_subscription_expiry() -> None:
    h = Harness(SessionConfig(ping_interval=0))
    h.connect()
    h.subscribe("secret:1", token=h.token("alice", channel="secret:1", exp=int(T0) + 30))
    h.now = T0 + 20
    h.call(sub_refresh={"channel": "secret:1", "token": h.token("alice", channel="secret:1",
                                                                 exp=int(T0) + 300)})
    assert h.session.on_timer(T0 + 55).frames == []
    assert "secret:1" in h.session.subs


def test_closed_session_does_nothing(hc: Harness) -> None:
    hc.subscribe("chat:1")
    detach = hc.session.close()
    assert [e.channel for e in detach] == ["chat:1"]
    assert hc.session.on_timer(T0 + 10_000) == hc.session.on_timer(T0 + 10_000)
    assert hc.session.on_timer(T0 + 10_000).disconnect is None
    assert hc.send({"id": 50, "subscribe": {"channel": "x"}}) is None


# ---- server-initiated -------------------------------------------------------------------------


def test_server_unsubscribe_push(hc: Harness) -> None:
    hc.subscribe("chat:1")
    out = hc.session.server_unsubscribe("chat:1", *codes.UNSUBSCRIBE_SERVER)
    assert out is not None
    frame, eff = out
    assert frame == b'{"push":{"channel":"chat:1","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}'
    assert eff.channel == "chat:1"
    assert hc.session.server_unsubscribe("chat:1", 2000, "x") is None


def test_server_subscribe_push(hc: Harness) -> None:
    hc.node.stream("chat:9").publish(3)
    frame = drive(hc.session.server_subscribe("chat:9", b"", b'{"w":1}', 0, None, None, T0), hc.node)
    assert orjson.loads(frame) == {"push": {"channel": "chat:9", "subscribe": {
        "recoverable": True, "epoch": "ep1", "offset": 3, "positioned": True, "data": {"w": 1}}}}
    assert hc.session.subs["chat:9"].server_side
    assert drive(hc.session.server_subscribe("chat:9", b"", b"", 0, None, None, T0), hc.node) is None


# ---- fuzz ------------------------------------------------------------------------------------

_SEEDS = [
    b'{"id":1,"connect":{"token":"tok-1","name":"js","subs":{"chat:a":{"recover":true,"offset":1}}}}',
    b'{"id":2,"subscribe":{"channel":"chat:1","recover":true,"offset":3,"epoch":"ep1","flag":3}}',
    b'{"id":3,"publish":{"channel":"chat:1","data":{"text":"hi"}}}',
    b'{"id":4,"history":{"channel":"chat:1","limit":-1,"since":{"offset":2,"epoch":"ep1"},"reverse":true}}',
    b'{"id":5,"presence":{"channel":"chat:1"}}\n{"id":6,"presence_stats":{"channel":"chat:1"}}',
    b'{"id":7,"rpc":{"method":"echo","data":[1,2]}}',
    b'{"id":8,"refresh":{"token":"tok-1"}}',
    b'{"id":9,"sub_refresh":{"channel":"secret:1","token":"tok-2"}}',
    b'{"id":10,"unsubscribe":{"channel":"chat:1"}}',
    b'{"send":{"data":"x"}}', b"{}", b'{"id":11,"ping":{}}',
    b'{"id":12,"subscribe":{"channel":"$dm:#alice,bob","token":"tok-2","delta":"fossil","type":0}}',
    b'{"id":13,"subscribe":{"channel":"chat:2","recoverable":true,"positioned":true,"join_leave":true}}',
    b'{"id":14,"history":{"channel":"chat:a","limit":5}}',
    b'{"id":15,"presence":{"channel":"chat:a"}}\n{"id":16,"presence_stats":{"channel":"chat:a"}}',
    b'{"id":17,"publish":{"channel":"chat:a","data":{"t":1}}}',
    b'{"id":18,"subscribe":{"channel":"secret:1","token":"tok-2"}}',
    b'{"id":19,"subscribe":{"channel":"dm:#alice,bob"}}',
]
_FIELDS = ["connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
           "ping", "send", "rpc", "refresh", "sub_refresh"]
_CHANNELS = ["chat:1", "news", "", "$chat:1", "dm:#alice,bob", "nope:1", "re:я", "x" * 300, ":",
             "secret:1", "cache:1", "#alice", "café", "a\x00b"]
_VALUES: list[Any] = [None, True, False, 0, 1, -1, 2**31, 2**32, 2**63 - 1, -(2**63), 1.5, "", "x",
                      [], {}, {"offset": 1}, "tok-1", "tok-2"]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return {rng.choice(["channel", "token", "offset", "epoch", "data", "limit", "since", "recover",
                            "flag", "type", "method", "reverse", "subs", "delta", "x"]):
                _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if roll < 0.35:
        return rng.choice(_CHANNELS)
    return rng.choice(_VALUES)


_TEMPLATES: list[dict[str, Any]] = [orjson.loads(line) for seed in _SEEDS for line in seed.split(b"\n")]


def _random_command(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.6:
        # A mostly valid command: a template with a few fields perturbed.
        cmd = orjson.loads(orjson.dumps(rng.choice(_TEMPLATES)))
        cmd["id"] = rng.randint(1, 50)
        for body in cmd.values():
            if isinstance(body, dict):
                if rng.random() < 0.3:
                    body["channel"] = rng.choice(_CHANNELS)
                for _ in range(rng.choice([0, 0, 1, 2])):
                    body[rng.choice(list(body) or ["x"])] = _random_value(rng)
        return cmd
    cmd = {}
    if rng.random() < 0.9:
        cmd["id"] = rng.choice([1, 2, 3, 7, 0, 2**32 - 1])
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        body: dict[str, Any] = {}
        for key in rng.sample(["channel", "token", "recover", "offset", "epoch", "data", "limit",
                               "since", "reverse", "method", "flag", "type", "delta", "positioned",
                               "recoverable", "join_leave", "subs"], rng.randint(0, 5)):
            body[key] = _random_value(rng)
        if rng.random() < 0.6:
            body["channel"] = rng.choice(_CHANNELS)
        cmd[rng.choice(_FIELDS)] = body
    return cmd


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            del buf[min(pos, len(buf) - 1)]
        elif op == 1:
            buf.insert(pos, rng.randrange(256))
        elif op == 2:
            buf.insert(pos, ord(rng.choice('{}[]":,\n 0-e')))
        elif op == 3 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        else:
            buf[pos:pos] = rng.choice(_SEEDS)[: rng.randint(0, 40)]
    return bytes(buf)


def _fuzz_session(codec: Any) -> Harness:
    h = Harness(SessionConfig(allow_anonymous_connect_without_token=True), codec=codec, client_id="cid")
    h.node.tokens["tok-1"] = {"sub": "alice", "channels": ["chat:a"], "exp": int(T0) + 100}
    h.node.tokens["tok-2"] = {"sub": "alice", "channel": "secret:1", "exp": int(T0) + 100}
    h.node.tokens["tok-x"] = TokenExpired()
    h.node.rpc["echo"] = b"[1]"
    h.node.messages = []
    return h


def _exercise(h: Harness, commands: list[Command], rng: random.Random) -> None:
    for cmd in commands:
        try:
            h.handle(cmd)
        except DisconnectError:
            return
        if rng.random() < 0.1:
            h.session.on_timer(h.now + rng.choice([0, 10, 30, 200]))


def test_fuzz_json_frames() -> None:
    rng = random.Random(20240601)
    for i in range(3000):
        if i % 3 == 0:
            data = b"\n".join(orjson.dumps(_random_command(rng)) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.8:
                data = orjson.dumps({"id": 1, "connect": {"token": "tok-1"}}) + b"\n" + data
        elif i % 3 == 1:
            data = _mutate(rng, rng.choice(_SEEDS))
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        h = _fuzz_session(JSON)
        try:
            commands = h.session.decode(data)
        except DisconnectError as exc:
            assert exc.disconnect.code == 3501, data
            continue
        assert commands and all(isinstance(c, Command) for c in commands)
        _exercise(h, commands, rng)


def test_fuzz_protobuf_frames() -> None:
    codec = codec_for("protobuf")
    rng = random.Random(77)
    valid = [codec_for("protobuf").encode_reply(Reply())]  # a lone zero byte: a pong Command
    for seed in _SEEDS:
        for cmd in JSON.decode_commands(seed):
            valid.append(_encode_command(cmd))
    for i in range(3000):
        if i % 2 == 0:
            data = _mutate_bytes(rng, b"".join(rng.choice(valid) for _ in range(rng.randint(1, 3))))
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        h = _fuzz_session(codec)
        try:
            commands = h.session.decode(data)
        except DisconnectError as exc:
            assert exc.disconnect.code == 3501, data
            continue
        assert all(isinstance(c, Command) for c in commands)
        connect = Command(id=1, connect=ConnectRequest(token="tok-1"))
        _exercise(h, [connect, *commands] if rng.random() < 0.7 else commands, rng)


def _encode_command(cmd: Command) -> bytes:
    from centrifugo_bridge.protobuf_codec import encode_message

    body = encode_message(cmd)
    n, prefix = len(body), bytearray()
    while n > 0x7F:
        prefix.append((n & 0x7F) | 0x80)
        n >>= 7
    prefix.append(n)
    return bytes(prefix) + body


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(0, 3)):
        pos = rng.randrange(len(buf) + 1)
        op = rng.randrange(3)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf.insert(pos, rng.randrange(256))
        elif buf:
            del buf[min(pos, len(buf) - 1)]
    return bytes(buf)


# ---- access providers apply to every way of subscribing ---------------------------------------


def test_acl_namespace_client_subscribe_asks_the_provider(hc: Harness) -> None:
    assert err(hc.subscribe("members:a")) == codes.PERMISSION_DENIED[0]
    hc.node.allowed.add(("club", "members:a", "alice"))
    assert err(hc.subscribe("members:a")) is None
    assert "members:a" in hc.session.subs


def test_token_channels_claim_is_checked_by_the_provider(h: Harness) -> None:
    """A token's `channels` do not bypass the namespace's access provider: a refused channel
    is left out (nothing attached, no history read), the others and the connect stand."""
    h.node.allowed.add(("club", "members:ok", "alice"))
    reply = h.connect(channels=["members:ok", "members:kicked", "chat:x"])
    assert reply.connect is not None
    assert sorted(reply.connect.subs) == ["chat:x", "members:ok"]
    assert sorted(h.session.subs) == ["chat:x", "members:ok"]
    assert "members:kicked" not in h.node.attached
    asked = [(e.channel, e.action) for e in h.node.of(effects.CheckAccess)]
    assert asked == [("members:ok", "subscribe"), ("members:kicked", "subscribe")]


def test_token_subs_claim_and_recovery_are_checked_too(h: Harness) -> None:
    token = h.token("alice", subs={"members:kicked": {}})
    h.node.stream("members:kicked").publish(3)
    reply = h.call(connect={"token": token, "subs": {"members:kicked": {
        "recover": True, "offset": 1, "epoch": "ep1"}}})
    assert reply.error is None and reply.connect is not None
    assert reply.connect.subs == {}
    assert h.node.of(effects.SubscribeChannel) == []


def test_server_api_subscribe_is_checked_by_the_provider(hc: Harness) -> None:
    with pytest.raises(ClientError) as refused:
        drive(hc.session.server_subscribe("members:a", b"", b"", 0.0, None, None, hc.now), hc.node)
    assert refused.value.code == codes.PERMISSION_DENIED[0]
    assert "members:a" not in hc.session.subs
    hc.node.allowed.add(("club", "members:a", "alice"))
    assert drive(hc.session.server_subscribe("members:a", b"", b"", 0.0, None, None, hc.now), hc.node)
    assert "members:a" in hc.session.subs


def test_refresh_keeps_a_connection_whose_granted_channel_the_provider_refused(h: Harness) -> None:
    """A member kicked since the token was signed is left out of the channel at connect; the
    same grant at refresh is not a change (no 3010 at every refresh)."""
    h.node.allowed.add(("club", "members:ok", "alice"))
    h.connect(channels=["members:ok", "members:kicked"])
    assert sorted(h.session.subs) == ["members:ok"]
    same = h.token("alice", channels=["members:ok", "members:kicked"])
    assert h.call(refresh={"token": same}).error is None
    # A channel in neither the old grant nor the subscriptions still needs a reconnect.
    more = h.token("alice", channels=["members:ok", "members:kicked", "chat:new"])
    assert disconnect_code(h.call, refresh={"token": more}) == 3010

