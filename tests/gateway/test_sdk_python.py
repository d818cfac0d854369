"""End-to-end tests with the real PyPI ``centrifuge-python`` 0.7.0 SDK.

Every test runs twice: over the JSON protocol and over Protobuf (``use_protobuf``). With
Protobuf the SDK only accepts ``bytes`` payloads and returns ``bytes``; ``Sdk.enc`` /
``Sdk.dec`` hide that so the assertions are the same for both.

Servers: the session ``server`` fixture (standard namespaces, see tests/conftest.py) and a
few nodes from ``make_server`` with short expiry / ping settings or personal channels.
Waiting is always for an event (``asyncio.wait_for`` with generous timeouts); the only
plain waits are where a test must let time pass (a token expiry, several ping intervals,
or "nothing else happens" after a terminal disconnect).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest
from centrifuge import (
    ClientState,
    ReplyError,
    StreamPosition,
    SubscriptionState,
)

from tests.conftest import Server, standard_settings
from tests.sdk import (
    TIMEOUT,
    ClientEvents,
    Sdk,
    SubEvents,
    _async,
    api,
    eventually,
    metric,
    reply_error,
    uniq,
)

# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["json", "protobuf"])
def use_protobuf(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
async def sdk(use_protobuf: bool) -> AsyncIterator[Sdk]:
    s = Sdk(use_protobuf)
    yield s
    await s.close()


# The SDK refreshes `ttl` whole seconds after connect, i.e. up to a second after `exp`
# (Centrifuge counts the ttl against the integer Unix clock): the grace must exceed that.
EXPIRED_CLOSE_DELAY = 2.0


@pytest.fixture(scope="module")
async def expiring_server(make_server: Callable[..., Awaitable[Server]]) -> Server:
    """A missed refresh is punished quickly: two seconds after expiry a connection is closed
    with 3005, a subscription is unsubscribed with 2501."""
    return await make_server(standard_settings(
        expired_close_delay=f"{EXPIRED_CLOSE_DELAY}s", expired_sub_close_delay=f"{EXPIRED_CLOSE_DELAY}s"))


@pytest.fixture(scope="module")
async def personal_server(make_server: Callable[..., Awaitable[Server]]) -> Server:
    """Every user is subscribed server-side to its personal channel ``#<user>``."""
    return await make_server(standard_settings(subscribe_to_user_personal_channel=True))


# ---- 1. connect ---------------------------------------------------------------------------


async def test_connect_with_token(server: Server, sdk: Sdk) -> None:
    client, events = sdk.client(server, server.token("alice", info={"name": "Alice"}))
    await client.connect()
    connected = await events.next("connected")
    assert client.state == ClientState.CONNECTED
    # A UUID client id, the same in the event, on the client and on the server.
    assert str(uuid.UUID(client.client_id)) == client.client_id
    assert connected.client == client.client_id
    assert connected.version
    conn = server.node.connections[client.client_id]
    assert conn.session.user == "alice"
    assert conn.codec.binary is sdk.protobuf
    assert [c.code for c in events.seen("connecting")] == [0]
    assert events.seen("disconnected") == []
    await client.disconnect()
    disconnected = await events.next("disconnected")
    assert disconnected.code == 0  # disconnect() called
    await eventually(lambda: _async(client.client_id not in server.node.connections))


# ---- 2. bad token -------------------------------------------------------------------------


BAD_TOKENS = {
    "wrong-key": lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) + 60},
                                    "another-secret-0123456789-0123456789-xyz", algorithm="HS256"),
    "garbage": lambda: "not-a-jwt",
    # A subscription token (has `channel`) is not a connection token.
    "subscription-token": lambda: Server.token("alice", channel="chat:x"),
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_is_terminal(server: Server, sdk: Sdk, kind: str) -> None:
    before = metric(server, "sentchat_errors_total", code="3500")
    client, events = sdk.client(server, BAD_TOKENS[kind](), min_reconnect_delay=0.05)
    await client.connect()
    disconnected = await events.next("disconnected")
    assert disconnected.code == 3500
    assert disconnected.reason == "invalid token"
    assert client.state == ClientState.DISCONNECTED
    # Terminal: nothing retries. Give a reconnect loop (backoff from 50 ms) time to show.
    await asyncio.sleep(0.5)
    assert client.state == ClientState.DISCONNECTED
    assert [c.code for c in events.seen("disconnected")] == [3500]
    assert events.seen("connected") == []
    assert [c.code for c in events.seen("connecting")] == [0]
    # The server refused exactly one connection attempt.
    assert metric(server, "sentchat_errors_total", code="3500") == before + 1


# ---- 3. token expiry and refresh ----------------------------------------------------------


async def test_expiring_token_is_refreshed(expiring_server: Server, sdk: Sdk) -> None:
    srv = expiring_server
    exp = int(time.time()) + 2
    refreshed = asyncio.Event()
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        refreshed.set()
        return srv.token("alice", ttl=3600)

    client, events = sdk.client(srv, srv.token("alice", ttl=None, exp=exp), get_token=get_token)
    await client.connect()
    await events.next("connected")
    client_id = client.client_id
    session = srv.node.connections[client_id].session
    assert session.expire_at == exp

    await asyncio.wait_for(refreshed.wait(), TIMEOUT)
    # The refresh reached the server: the connection now expires with the new token.
    await eventually(lambda: _async(session.expire_at > exp + 600))

    # Let the original expiry plus the close delay pass: a missed refresh would be 3005 now.
    await asyncio.sleep(max(0.0, exp + EXPIRED_CLOSE_DELAY + 0.5 - time.time()))
    assert client.state == ClientState.CONNECTED
    assert client.client_id == client_id
    assert srv.node.connections.get(client_id) is not None
    assert [c.code for c in events.seen("connecting")] == [0]
    assert events.seen("disconnected") == []
    assert calls == 1

    # Still functional.
    channel = uniq("chat:refresh")
    sub, sub_events = await sdk.subscribe(client, channel)
    await sub.publish(sdk.enc({"after": "expiry"}))
    pub = await sub_events.next("publication")
    assert sdk.dec(pub.pub.data) == {"after": "expiry"}


async def test_token_with_under_a_second_left(server: Server, sdk: Sdk) -> None:
    """A token still valid for a fraction of a second connects (Centrifuge counts the ttl
    in whole seconds of the Unix clock: exp - now >= 0) and is refreshed right away; it
    must not be refused with 110 "expired"."""
    fresh = asyncio.Event()

    async def get_token() -> str:
        fresh.set()
        return server.token("alice", ttl=3600)

    # Start 0.6 s into a wall-clock second: exp = the next whole second, ~0.4 s away.
    frac = time.time() % 1
    await asyncio.sleep((0.6 - frac) % 1)
    exp = int(time.time()) + 1
    client, events = sdk.client(server, server.token("alice", ttl=None, exp=exp), get_token=get_token)
    await client.connect()
    await eventually(lambda: _async(events.seen("connected") or events.seen("disconnected")))
    assert events.seen("disconnected") == []
    await asyncio.wait_for(fresh.wait(), TIMEOUT)
    session = server.node.connections[client.client_id].session
    await eventually(lambda: _async(session.expire_at > exp + 600))
    assert client.state == ClientState.CONNECTED
    assert events.seen("disconnected") == []


async def test_expiring_token_without_get_token(expiring_server: Server, sdk: Sdk) -> None:
    srv = expiring_server
    exp = int(time.time()) + 2
    client, events = sdk.client(srv, srv.token("alice", ttl=None, exp=exp))
    await client.connect()
    await events.next("connected")

    # Nothing can refresh: the server closes with 3005 after expiry + expired_close_delay,
    # a reconnect code, so the SDK moves to connecting.
    connecting = await events.next_where("connecting", lambda c: c.code != 0)
    assert (connecting.code, connecting.reason) == (3005, "connection expired")
    assert time.time() >= exp

    # The reconnect presents the expired token: error 109 (token expired). Without
    # get_token the SDK then gives up as unauthorized.
    error = await events.next_where("error", lambda c: isinstance(c.error, ReplyError))
    assert error.error.code == 109
    disconnected = await events.next("disconnected")
    assert (disconnected.code, disconnected.reason) == (1, "unauthorized")
    assert client.state == ClientState.DISCONNECTED
    assert events.seen("connected")[1:] == []


async def test_subscription_token_refresh_and_expiry(expiring_server: Server, sdk: Sdk) -> None:
    srv = expiring_server
    exp = int(time.time()) + 2
    refreshed_ch, static_ch = "$" + uniq("secret:refresh"), "$" + uniq("secret:static")
    asked: list[str] = []

    async def get_sub_token(channel: str) -> str:
        asked.append(channel)
        return srv.token("alice", ttl=3600, channel=channel)

    alice, events = await sdk.connect(srv, "alice")
    refreshed, r_events = await sdk.subscribe(
        alice, refreshed_ch, token=srv.token("alice", ttl=None, exp=exp, channel=refreshed_ch),
        get_token=get_sub_token)
    static, s_events = await sdk.subscribe(
        alice, static_ch, token=srv.token("alice", ttl=None, exp=exp, channel=static_ch))
    subs = srv.node.connections[alice.client_id].session.subs
    assert subs[refreshed_ch].expire_at == subs[static_ch].expire_at == exp

    # Without get_token nothing refreshes: 2501 (subscription expired) makes the SDK
    # resubscribe, the expired token gets 109, and without get_token it gives up.
    subscribing = await s_events.next_where("subscribing", lambda c: c.code != 0)
    assert (subscribing.code, subscribing.reason) == (2501, "subscription expired")
    assert time.time() >= exp
    unsubscribed = await s_events.next("unsubscribed")
    assert (unsubscribed.code, unsubscribed.reason) == (1, "unauthorized")
    assert static.state == SubscriptionState.UNSUBSCRIBED

    # The other subscription was refreshed with sub_refresh and is untouched.
    assert asked == [refreshed_ch]
    assert subs[refreshed_ch].expire_at > exp + 600
    assert refreshed.state == SubscriptionState.SUBSCRIBED
    assert [c.code for c in r_events.seen("subscribing")] == [0]
    assert r_events.seen("unsubscribed") == []
    assert alice.state == ClientState.CONNECTED
    assert events.seen("disconnected") == [] and [c.code for c in events.seen("connecting")] == [0]
    await refreshed.publish(sdk.enc({"still": "here"}))
    assert sdk.dec((await r_events.next("publication")).pub.data) == {"still": "here"}


# ---- 4. publish / receive -----------------------------------------------------------------


async def test_publish_and_receive(server: Server, sdk: Sdk) -> None:
    channel = uniq("chat:pubsub")
    alice, _ = await sdk.connect(server, "alice", info={"name": "Alice"})
    bob, _ = await sdk.connect(server, "bob")
    a_sub, a_events = await sdk.subscribe(alice, channel)
    b_sub, b_events = await sdk.subscribe(bob, channel)

    await a_sub.publish(sdk.enc({"text": "from alice"}))
    for events in (a_events, b_events):
        ctx = await events.next("publication")
        assert sdk.dec(ctx.pub.data) == {"text": "from alice"}
        assert ctx.pub.info.user == "alice"
        assert ctx.pub.info.client == alice.client_id
        assert sdk.dec(ctx.pub.info.conn_info) == {"name": "Alice"}
        assert ctx.pub.offset == 1

    await b_sub.publish(sdk.enc({"text": "from bob"}))
    for events in (a_events, b_events):
        ctx = await events.next("publication")
        assert sdk.dec(ctx.pub.data) == {"text": "from bob"}
        assert ctx.pub.info.user == "bob"
        assert ctx.pub.info.client == bob.client_id
        assert ctx.pub.info.conn_info is None
        assert ctx.pub.offset == 2

    # A server API publication has no publisher info.
    await api(server, "publish", channel=channel, data={"text": "from api"})
    for events in (a_events, b_events):
        ctx = await events.next("publication")
        assert sdk.dec(ctx.pub.data) == {"text": "from api"}
        assert ctx.pub.info is None
        assert ctx.pub.offset == 3

    # After unsubscribe nothing more arrives for bob; alice still gets the next one.
    await b_sub.unsubscribe()
    await a_sub.publish(sdk.enc({"text": "bob is gone"}))
    ctx = await a_events.next("publication")
    assert sdk.dec(ctx.pub.data) == {"text": "bob is gone"}
    assert len(b_events.seen("publication")) == 3


# ---- 5. join / leave ----------------------------------------------------------------------


async def test_join_leave_pushes(server: Server, sdk: Sdk) -> None:
    channel = uniq("chat:joinleave")
    alice, _ = await sdk.connect(server, "alice")
    bob, _ = await sdk.connect(server, "bob", info={"name": "Bob"})
    carol, _ = await sdk.connect(server, "carol")
    _, a_events = await sdk.subscribe(alice, channel, join_leave=True)

    b_sub, _ = await sdk.subscribe(bob, channel)
    join = await a_events.next_where("join", lambda c: c.info.user != "alice")
    assert (join.info.user, join.info.client) == ("bob", bob.client_id)
    assert sdk.dec(join.info.conn_info) == {"name": "Bob"}

    # carol did not ask for join/leave: she must not get them.
    c_sub, c_events = await sdk.subscribe(carol, channel)
    join = await a_events.next_where("join", lambda c: c.info.user != "alice")
    assert (join.info.user, join.info.client) == ("carol", carol.client_id)

    await b_sub.unsubscribe()
    leave = await a_events.next("leave")
    assert (leave.info.user, leave.info.client) == ("bob", bob.client_id)

    # A disconnect leaves every channel.
    await bob.disconnect()
    await c_sub.publish(sdk.enc({"barrier": 1}))
    await c_events.next("publication")
    # The barrier publication went out after every push above, on the same socket.
    assert c_events.seen("join") == [] and c_events.seen("leave") == []
    await carol.disconnect()
    leave = await a_events.next("leave")
    # bob's disconnect (no subscription left) produced no second leave: this one is carol's.
    assert (leave.info.user, leave.info.client) == ("carol", carol.client_id)


# ---- 6. presence --------------------------------------------------------------------------


async def test_presence_and_stats(server: Server, sdk: Sdk) -> None:
    channel = uniq("chat:presence")
    alice1, _ = await sdk.connect(server, "alice", info={"name": "Alice"})
    alice2, _ = await sdk.connect(server, "alice", info={"name": "Alice"})
    bob, _ = await sdk.connect(server, "bob")
    a_sub, _ = await sdk.subscribe(alice1, channel)
    await sdk.subscribe(alice2, channel)
    await sdk.subscribe(bob, channel)

    presence = await a_sub.presence()
    assert set(presence.clients) == {alice1.client_id, alice2.client_id, bob.client_id}
    for client_id, info in presence.clients.items():
        assert info.client == client_id
    assert presence.clients[alice1.client_id].user == "alice"
    assert sdk.dec(presence.clients[alice2.client_id].conn_info) == {"name": "Alice"}
    assert presence.clients[bob.client_id].user == "bob"
    assert presence.clients[bob.client_id].conn_info is None

    stats = await a_sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (3, 2)

    await bob.disconnect()

    async def bob_gone() -> bool:
        s = await a_sub.presence_stats()
        return (s.num_clients, s.num_users) == (2, 1)

    await eventually(bob_gone)
    presence = await a_sub.presence()
    assert set(presence.clients) == {alice1.client_id, alice2.client_id}


# ---- 7. history ---------------------------------------------------------------------------


async def test_history(server: Server, sdk: Sdk) -> None:
    channel = uniq("chat:history")
    alice, _ = await sdk.connect(server, "alice")
    sub, events = await sdk.subscribe(alice, channel)
    subscribed = events.seen("subscribed")[0]
    assert subscribed.recoverable and subscribed.positioned
    epoch = subscribed.stream_position.epoch
    assert epoch
    assert subscribed.stream_position.offset == 0
    for n in range(1, 6):
        await sub.publish(sdk.enc({"n": n}))

    def ns(result: Any) -> list[int]:
        return [sdk.dec(p.data)["n"] for p in result.publications]

    # limit 0: only the stream position.
    top = await sub.history(limit=0)
    assert top.publications == []
    assert (top.offset, top.epoch) == (5, epoch)

    everything = await sub.history(limit=-1)
    assert ns(everything) == [1, 2, 3, 4, 5]
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    assert {p.info.user for p in everything.publications} == {"alice"}
    assert (everything.offset, everything.epoch) == (5, epoch)

    assert ns(await sub.history(limit=2)) == [1, 2]
    assert ns(await sub.history(limit=2, reverse=True)) == [5, 4]
    assert ns(await sub.history(limit=10, since=StreamPosition(offset=2, epoch=epoch))) == [3, 4, 5]
    assert ns(await sub.history(limit=1, since=StreamPosition(offset=2, epoch=epoch))) == [3]
    assert ns(await sub.history(limit=10, since=StreamPosition(offset=4, epoch=epoch),
                                reverse=True)) == [3, 2, 1]
    assert ns(await sub.history(limit=10, since=StreamPosition(offset=5, epoch=epoch))) == []

    err = await reply_error(sub.history(limit=10, since=StreamPosition(offset=2, epoch="stale")))
    assert err.code == 112


# ---- 8. recovery --------------------------------------------------------------------------


async def test_recovery_after_lost_connection(server: Server, sdk: Sdk) -> None:
    channel = uniq("chat:recover")
    gate = asyncio.Event()
    a_client_events = ClientEvents(hold_reconnect=gate)
    alice, _ = await sdk.connect(server, "alice", events=a_client_events)
    bob, _ = await sdk.connect(server, "bob")
    a_sub, a_events = await sdk.subscribe(alice, channel)
    b_sub, b_events = await sdk.subscribe(bob, channel)
    first = await a_events.next("subscribed")
    assert first.recoverable and not first.was_recovering

    await b_sub.publish(sdk.enc({"n": 1}))
    assert (await a_events.next("publication")).pub.offset == 1

    # Kill alice's socket abruptly on the server side (no close frame).
    old_id = alice.client_id
    server.node.connections[old_id].transport.abort()
    lost = await a_client_events.next_where("connecting", lambda c: c.code != 0)
    assert lost.code == 1  # transport closed: the SDK will reconnect
    await a_events.next("subscribing")
    assert a_sub.state == SubscriptionState.SUBSCRIBING

    # alice cannot come back until the gate opens: these are missed for sure.
    for n in (2, 3, 4):
        await b_sub.publish(sdk.enc({"n": n}))
    for n in (1, 2, 3, 4):
        assert (await b_events.next("publication")).pub.offset == n
    assert len(a_events.seen("publication")) == 1

    gate.set()
    resubscribed = await a_events.next("subscribed")
    assert resubscribed.was_recovering
    assert resubscribed.recovered
    assert alice.client_id != old_id
    got = [await a_events.next("publication") for _ in range(3)]
    assert [p.pub.offset for p in got] == [2, 3, 4]
    assert [sdk.dec(p.pub.data) for p in got] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert {p.pub.info.user for p in got} == {"bob"}

    # Live delivery continues after the recovered ones.
    await b_sub.publish(sdk.enc({"n": 5}))
    assert (await a_events.next("publication")).pub.offset == 5


async def test_recovery_impossible_when_history_window_is_too_short(server: Server, sdk: Sdk) -> None:
    channel = uniq("short:recover")  # history_size 5
    gate = asyncio.Event()
    a_client_events = ClientEvents(hold_reconnect=gate)
    alice, _ = await sdk.connect(server, "alice", events=a_client_events)
    bob, _ = await sdk.connect(server, "bob")
    a_sub, a_events = await sdk.subscribe(alice, channel)
    b_sub, _ = await sdk.subscribe(bob, channel)
    await a_events.next("subscribed")
    await b_sub.publish(sdk.enc({"n": 1}))
    assert (await a_events.next("publication")).pub.offset == 1

    server.node.connections[alice.client_id].transport.abort()
    await a_client_events.next_where("connecting", lambda c: c.code != 0)
    for n in range(2, 9):  # 7 missed, only the last 5 are retained
        await b_sub.publish(sdk.enc({"n": n}))
    gate.set()

    resubscribed = await a_events.next("subscribed")
    assert resubscribed.was_recovering
    assert not resubscribed.recovered
    # Not recovered: the position jumps to the stream top, nothing is replayed.
    assert resubscribed.stream_position.offset == 8
    await b_sub.publish(sdk.enc({"n": 9}))
    assert (await a_events.next("publication")).pub.offset == 9
    assert [p.pub.offset for p in a_events.seen("publication")] == [1, 9]


async def test_server_side_subscription_recovery(server: Server, sdk: Sdk) -> None:
    channel = uniq("chat:srvrecover")
    gate = asyncio.Event()
    events = ClientEvents(hold_reconnect=gate)
    alice, _ = await sdk.connect(server, "alice", events=events, channels=[channel])
    first = await events.next("subscribed")
    assert first.channel == channel and first.recoverable and not first.was_recovering
    await api(server, "publish", channel=channel, data={"n": 1})
    assert (await events.next("publication")).pub.offset == 1

    server.node.connections[alice.client_id].transport.abort()
    assert (await events.next("subscribing")).channel == channel
    await events.next_where("connecting", lambda c: c.code != 0)
    for n in (2, 3):
        await api(server, "publish", channel=channel, data={"n": n})
    gate.set()

    # The SDK sends the position of the server-side subscription in connect `subs`.
    again = await events.next("subscribed")
    assert again.channel == channel
    assert again.was_recovering and again.recovered
    got = [await events.next("publication") for _ in range(2)]
    assert [(p.channel, p.pub.offset, sdk.dec(p.pub.data)) for p in got] == [
        (channel, 2, {"n": 2}), (channel, 3, {"n": 3})]


# ---- 9. private channel with a subscription token ------------------------------------------


async def test_private_channel_without_token_is_denied(server: Server, sdk: Sdk) -> None:
    alice, _ = await sdk.connect(server, "alice")
    events = SubEvents()
    sub = alice.new_subscription("$" + uniq("secret:x"), events)
    await sub.subscribe()
    unsubscribed = await events.next("unsubscribed")
    assert (unsubscribed.code, unsubscribed.reason) == (103, "permission denied")
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert alice.state == ClientState.CONNECTED


async def test_private_channel_with_token(server: Server, sdk: Sdk) -> None:
    channel = "$" + uniq("secret:x")
    alice, _ = await sdk.connect(server, "alice")
    token = server.token("alice", channel=channel, info={"role": "admin"}, data={"welcome": True})
    sub, events = await sdk.subscribe(alice, channel, token=token)
    subscribed = events.seen("subscribed")[0]
    assert sdk.dec(subscribed.data) == {"welcome": True}
    await sub.publish(sdk.enc({"text": "psst"}))
    pub = await events.next("publication")
    assert sdk.dec(pub.pub.data) == {"text": "psst"}
    # The token's info is the channel info of this subscriber.
    assert sdk.dec(pub.pub.info.chan_info) == {"role": "admin"}
    presence = await sub.presence()
    assert sdk.dec(presence.clients[alice.client_id].chan_info) == {"role": "admin"}


async def test_private_channel_token_for_other_channel_disconnects(server: Server, sdk: Sdk) -> None:
    alice, events = await sdk.connect(server, "alice")
    token = server.token("alice", channel="$" + uniq("secret:other"))
    sub = alice.new_subscription("$" + uniq("secret:x"), SubEvents(), token=token)
    await sub.subscribe()
    disconnected = await events.next("disconnected")
    assert (disconnected.code, disconnected.reason) == (3500, "invalid token")
    assert alice.state == ClientState.DISCONNECTED


# ---- 10. user-limited channel --------------------------------------------------------------


async def test_user_limited_channel(server: Server, sdk: Sdk) -> None:
    channel = uniq("dm:chat") + "#alice,bob"
    alice, _ = await sdk.connect(server, "alice")
    bob, _ = await sdk.connect(server, "bob")
    carol, _ = await sdk.connect(server, "carol")
    a_sub, _ = await sdk.subscribe(alice, channel)
    _, b_events = await sdk.subscribe(bob, channel)

    c_events = SubEvents()
    c_sub = carol.new_subscription(channel, c_events)
    await c_sub.subscribe()
    unsubscribed = await c_events.next("unsubscribed")
    assert unsubscribed.code == 103
    assert carol.state == ClientState.CONNECTED

    await a_sub.publish(sdk.enc({"text": "hi bob"}))
    pub = await b_events.next("publication")
    assert sdk.dec(pub.pub.data) == {"text": "hi bob"}
    assert pub.pub.info.user == "alice"
    # carol is not a subscriber, and dm allows publish/history only to subscribers.
    assert (await reply_error(carol.publish(channel, sdk.enc({"text": "me too"})))).code == 103
    assert (await reply_error(carol.history(channel, limit=10))).code == 103


# ---- 11. permissions and availability ------------------------------------------------------


async def test_permission_denied_and_not_available(server: Server, sdk: Sdk) -> None:
    alice, events = await sdk.connect(server, "alice")
    locked = uniq("locked:x")
    assert (await reply_error(alice.publish(locked, sdk.enc({"x": 1})))).code == 103
    assert (await reply_error(alice.presence(locked))).code == 103
    assert (await reply_error(alice.presence_stats(locked))).code == 103
    err = await reply_error(alice.history(locked, limit=10))
    assert (err.code, err.message) == (103, "permission denied")

    l_events = SubEvents()
    await alice.new_subscription(locked, l_events).subscribe()
    assert (await l_events.next("unsubscribed")).code == 103

    plain = uniq("plain:x")
    err = await reply_error(alice.history(plain, limit=10))
    assert (err.code, err.message) == (108, "not available")
    assert (await reply_error(alice.presence(plain))).code == 108
    # A subscriber of a chat channel may read history; a non-subscriber may not.
    assert (await reply_error(alice.history(uniq("chat:x"), limit=10))).code == 103

    # Errors are replies: the connection is still fine.
    assert alice.state == ClientState.CONNECTED
    assert events.seen("disconnected") == []
    await sdk.subscribe(alice, plain)


# ---- 12. unknown namespace -----------------------------------------------------------------


async def test_unknown_namespace(server: Server, sdk: Sdk) -> None:
    alice, _ = await sdk.connect(server, "alice")
    events = SubEvents()
    sub = alice.new_subscription("nope:x", events)
    await sub.subscribe()
    unsubscribed = await events.next("unsubscribed")
    assert (unsubscribed.code, unsubscribed.reason) == (102, "unknown channel")
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert (await reply_error(alice.publish("nope:x", sdk.enc({"x": 1})))).code == 102
    assert (await reply_error(alice.history("nope:x", limit=1))).code == 102
    assert alice.state == ClientState.CONNECTED


# ---- 13. server API: unsubscribe / disconnect / subscribe ----------------------------------


async def test_api_unsubscribe(server: Server, sdk: Sdk) -> None:
    channel = uniq("chat:apiunsub")
    alice, _ = await sdk.connect(server, "alice")
    bob, _ = await sdk.connect(server, "bob")
    a_sub, a_events = await sdk.subscribe(alice, channel)
    b_sub, b_events = await sdk.subscribe(bob, channel)

    await api(server, "unsubscribe", user="alice", channel=channel)
    unsubscribed = await a_events.next("unsubscribed")
    assert (unsubscribed.code, unsubscribed.reason) == (2000, "server unsubscribe")
    assert a_sub.state == SubscriptionState.UNSUBSCRIBED
    assert alice.state == ClientState.CONNECTED

    # Only alice was unsubscribed: bob still receives, alice no longer does.
    await b_sub.publish(sdk.enc({"n": 1}))
    assert sdk.dec((await b_events.next("publication")).pub.data) == {"n": 1}
    assert a_events.seen("publication") == []
    assert b_sub.state == SubscriptionState.SUBSCRIBED
    # The SDK does not resubscribe by itself after a code < 2500, but the app can.
    await a_sub.subscribe()
    await a_sub.ready(timeout=TIMEOUT)


async def test_api_disconnect_default_is_terminal(server: Server, sdk: Sdk) -> None:
    alice, events = await sdk.connect(server, "alice")
    bob, bob_events = await sdk.connect(server, "bob")
    await api(server, "disconnect", user="alice")
    disconnected = await events.next("disconnected")
    assert (disconnected.code, disconnected.reason) == (3503, "force disconnect")
    assert alice.state == ClientState.DISCONNECTED
    assert bob.state == ClientState.CONNECTED
    assert bob_events.seen("disconnected") == []


async def test_api_disconnect_custom_codes(server: Server, sdk: Sdk) -> None:
    alice, events = await sdk.connect(server, "alice")
    first_id = alice.client_id
    # 4000-4499: the SDK reconnects.
    await api(server, "disconnect", user="alice", disconnect={"code": 4001, "reason": "come back"})
    connecting = await events.next_where("connecting", lambda c: c.code != 0)
    assert (connecting.code, connecting.reason) == (4001, "come back")
    await events.next("connected")
    assert alice.state == ClientState.CONNECTED
    assert alice.client_id != first_id

    # 4500-4999: terminal.
    await api(server, "disconnect", user="alice", client=alice.client_id,
              disconnect={"code": 4501, "reason": "go away"})
    disconnected = await events.next("disconnected")
    assert (disconnected.code, disconnected.reason) == (4501, "go away")
    assert alice.state == ClientState.DISCONNECTED


async def test_api_subscribe(server: Server, sdk: Sdk) -> None:
    channel = uniq("chat:apisub")
    alice, events = await sdk.connect(server, "alice")
    await api(server, "subscribe", user="alice", channel=channel, data={"hello": "alice"})
    subscribed = await events.next("subscribed")
    assert subscribed.channel == channel
    assert subscribed.recoverable and subscribed.positioned
    assert sdk.dec(subscribed.data) == {"hello": "alice"}

    await api(server, "publish", channel=channel, data={"n": 1})
    pub = await events.next("publication")
    assert pub.channel == channel
    assert sdk.dec(pub.pub.data) == {"n": 1}
    assert pub.pub.offset == 1
    # The client is in the channel's presence like any subscriber.
    info = await api(server, "presence", channel=channel)
    assert set(info["presence"]) == {alice.client_id}

    await api(server, "unsubscribe", user="alice", channel=channel)
    unsubscribed = await events.next("unsubscribed")
    assert unsubscribed.channel == channel


# ---- 14. server-side subscriptions: token channels, personal channel -----------------------


async def test_server_side_subscriptions_from_token(server: Server, sdk: Sdk) -> None:
    ch1, ch2 = uniq("chat:tokchan"), uniq("chat:tokchan")
    alice, events = await sdk.connect(server, "alice", channels=[ch1, ch2])
    subscribed = {events.seen("subscribed")[i].channel: events.seen("subscribed")[i] for i in range(2)}
    assert set(subscribed) == {ch1, ch2}
    assert subscribed[ch1].recoverable
    assert set(server.node.connections[alice.client_id].session.subs) == {ch1, ch2}

    await api(server, "publish", channel=ch2, data={"to": "ch2"})
    await api(server, "publish", channel=ch1, data={"to": "ch1"})
    got = [await events.next("publication") for _ in range(2)]
    assert [(p.channel, sdk.dec(p.pub.data)) for p in got] == [(ch2, {"to": "ch2"}), (ch1, {"to": "ch1"})]

    # A client publication into a server-side channel carries the publisher's info.
    bob, _ = await sdk.connect(server, "bob")
    b_sub, _ = await sdk.subscribe(bob, ch1)
    await b_sub.publish(sdk.enc({"from": "bob"}))
    pub = await events.next("publication")
    assert (pub.channel, pub.pub.info.user) == (ch1, "bob")


async def test_personal_channel(personal_server: Server, sdk: Sdk) -> None:
    srv = personal_server
    alice, a_events = await sdk.connect(srv, "alice")
    bob, b_events = await sdk.connect(srv, "bob")
    assert [c.channel for c in a_events.seen("subscribed")] == ["#alice"]
    assert [c.channel for c in b_events.seen("subscribed")] == ["#bob"]

    tag = uuid.uuid4().hex
    await api(srv, "publish", channel="#alice", data={"for": "alice", "tag": tag})
    pub = await a_events.next_where("publication", lambda c: sdk.dec(c.pub.data).get("tag") == tag)
    assert pub.channel == "#alice"
    assert sdk.dec(pub.pub.data)["for"] == "alice"

    await api(srv, "publish", channel="#bob", data={"for": "bob", "tag": tag})
    pub = await b_events.next_where("publication", lambda c: sdk.dec(c.pub.data).get("tag") == tag)
    assert pub.channel == "#bob"
    # bob got his own message and never alice's (same socket order as the API calls).
    assert all(c.channel == "#bob" for c in b_events.seen("publication"))
    assert all(c.channel == "#alice" for c in a_events.seen("publication"))


# ---- 15. RPC ------------------------------------------------------------------------------


async def test_rpc(server: Server, sdk: Sdk) -> None:
    alice, _ = await sdk.connect(server, "alice")
    result = await alice.rpc("whoami", sdk.enc({}))
    data = sdk.dec(result.data)
    assert data["user"] == "alice"
    assert data["client"] == alice.client_id
    err = await reply_error(alice.rpc("no-such-method", sdk.enc({})))
    assert (err.code, err.message) == (104, "method not found")
    assert alice.state == ClientState.CONNECTED


# ---- 16. ping / pong ----------------------------------------------------------------------


async def test_answers_server_pings(make_server: Callable[..., Awaitable[Server]], sdk: Sdk) -> None:
    srv = await make_server(standard_settings(ping_interval="1s", pong_timeout="1s"))
    alice, events = await sdk.connect(srv, "alice")
    started = time.monotonic()
    client_id = alice.client_id

    # Pings go out every second; each must be answered within a second or the server
    # closes 3012. Wait for three answered pings, and for more than 3 s overall.
    await eventually(lambda: _async(metric(srv, "sentchat_commands_total", method="pong") >= 3))
    await asyncio.sleep(max(0.0, started + 3.2 - time.monotonic()))

    assert alice.state == ClientState.CONNECTED
    assert alice.client_id == client_id
    assert client_id in srv.node.connections
    assert [c.code for c in events.seen("connecting")] == [0]
    assert events.seen("disconnected") == []
    assert metric(srv, "sentchat_errors_total", code="3012") == 0
    sub, sub_events = await sdk.subscribe(alice, uniq("chat:ping"))
    await sub.publish(sdk.enc({"alive": True}))
    assert sdk.dec((await sub_events.next("publication")).pub.data) == {"alive": True}
