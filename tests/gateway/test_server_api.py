"""Centrifugo's server HTTP API (`POST /api/<method>`) driven by the real `cent` 5.2.0 client.

Only `cent.AsyncClient` is used: the gateway runs in the same event loop as the tests, so a
blocking client would deadlock. Effects on live connections are observed through real
centrifuge-python clients. Byte-level HTTP behaviour (status codes, keep-alive, 411/413) is
checked with raw aiohttp requests or raw asyncio streams, never mocks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    ChannelOptionsOverride,
    ChannelsRequest,
    Disconnect,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.dto import BoolValue
from cent.exceptions import CentApiResponseError, CentTransportError, CentUnauthorizedError
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler
from prometheus_client.parser import text_string_to_metric_families

from gateway.server import DRAIN_SECONDS
from tests.conftest import API_KEY, Server, standard_settings
from tests.sdk import SubEvents as Recorded

WAIT = 5.0  # guard against hangs only; nothing asserts on durations


def uid() -> str:
    return uuid.uuid4().hex[:12]


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll a condition that settles asynchronously on the server (e.g. after a client
    closes its socket); fails only if it never holds within the hang guard."""
    async with asyncio.timeout(WAIT):
        while not await check():
            await asyncio.sleep(0.01)


class Events:
    """Every SDK callback lands in a queue named after it (without the ``on_`` prefix)."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[Any]] = {}

    def queue(self, name: str) -> asyncio.Queue[Any]:
        return self.queues.setdefault(name, asyncio.Queue())

    async def next(self, name: str) -> Any:
        return await asyncio.wait_for(self.queue(name).get(), WAIT)

    def pending(self, name: str) -> int:
        return self.queue(name).qsize()


class ClientEvents(ClientEventHandler):
    def __init__(self, events: Events) -> None:
        self.events = events

    async def _put(self, name: str, ctx: Any) -> None:
        await self.events.queue(name).put(ctx)

    async def on_connecting(self, ctx: Any) -> None:
        await self._put("connecting", ctx)

    async def on_connected(self, ctx: Any) -> None:
        await self._put("connected", ctx)

    async def on_disconnected(self, ctx: Any) -> None:
        await self._put("disconnected", ctx)

    async def on_subscribed(self, ctx: Any) -> None:
        await self._put("subscribed", ctx)

    async def on_subscribing(self, ctx: Any) -> None:
        await self._put("subscribing", ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        await self._put("unsubscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        await self._put("publication", ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self, events: Events) -> None:
        self.events = events

    async def on_subscribed(self, ctx: Any) -> None:
        await self.events.queue("sub_subscribed").put(ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        await self.events.queue("sub_unsubscribed").put(ctx)

    async def on_publication(self, ctx: Any) -> None:
        await self.events.queue("sub_publication").put(ctx)


class Conn:
    def __init__(self, client: Client, events: Events, client_id: str) -> None:
        self.client = client
        self.events = events
        self.id = client_id

    async def subscribe(self, channel: str) -> Any:
        sub = self.client.new_subscription(channel, SubEvents(self.events))
        await sub.subscribe()
        await self.events.next("sub_subscribed")
        return sub


@asynccontextmanager
async def connected(server: Server, user: str) -> AsyncIterator[Conn]:
    events = Events()
    client = Client(server.ws_url, events=ClientEvents(events), token=server.token(user))
    await client.connect()
    await events.next("connecting")  # the initial "connect called" transition
    ctx = await events.next("connected")
    try:
        yield Conn(client, events, ctx.client)
    finally:
        await client.disconnect()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.api_url, API_KEY) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def raw_api(http: aiohttp.ClientSession, server: Server, method: str, body: Any,
                  headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST a JSON (or raw bytes) body with the right key unless headers say otherwise."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"X-API-Key": API_KEY, "Content-Type": "application/json"} if headers is None else headers
    async with http.post(f"{server.api_url}/{method}", data=data, headers=hdrs) as resp:
        return resp.status, await resp.read()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), WAIT)
    return status, headers, body


def post_bytes(path: str, body: bytes, *, key: str = API_KEY, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


# ---- publish ------------------------------------------------------------------------------


async def test_publish_history_namespace_returns_offset_and_epoch(api: AsyncClient) -> None:
    channel = f"chat:pub-{uid()}"
    first = await api.publish(PublishRequest(channel=channel, data={"n": 1}))
    second = await api.publish(PublishRequest(channel=channel, data={"n": 2}, tags={"k": "v"}))
    assert first.offset == 1 and second.offset == 2
    assert first.epoch and first.epoch == second.epoch
    history = await api.history(HistoryRequest(channel=channel, limit=10))
    assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]
    assert history.publications[1].tags == {"k": "v"}


async def test_publish_without_history_is_empty_result(server: Server, api: AsyncClient,
                                                       http: aiohttp.ClientSession) -> None:
    res = await api.publish(PublishRequest(channel=f"plain:pub-{uid()}", data={"x": 1}))
    assert res.offset == 0 and res.epoch == ""
    # Go's omitempty: exactly {} on the wire.
    status, body = await raw_api(http, server, "publish", {"channel": f"plain:{uid()}", "data": 1})
    assert status == 200
    assert json.loads(body) == {"result": {}}


async def test_publish_reaches_subscriber(server: Server, api: AsyncClient) -> None:
    channel = f"chat:deliver-{uid()}"
    async with connected(server, f"u-{uid()}") as conn:
        await conn.subscribe(channel)
        res = await api.publish(PublishRequest(channel=channel, data={"text": "from api"}))
        ctx = await conn.events.next("sub_publication")
        assert ctx.pub.data == {"text": "from api"}
        assert ctx.pub.offset == res.offset == 1
        assert ctx.pub.info is None  # server publications carry no client info


async def test_publish_skip_history(api: AsyncClient) -> None:
    channel = f"chat:skip-{uid()}"
    await api.publish(PublishRequest(channel=channel, data={"kept": True}))
    await api.publish(PublishRequest(channel=channel, data={"kept": False}, skip_history=True))
    history = await api.history(HistoryRequest(channel=channel, limit=-1))
    assert [p.data for p in history.publications] == [{"kept": True}]


async def test_publish_b64data(server: Server, api: AsyncClient) -> None:
    channel = f"chat:b64-{uid()}"
    payload = json.dumps({"bin": "ok"}).encode()
    async with connected(server, f"u-{uid()}") as conn:
        await conn.subscribe(channel)
        res = await api.publish(PublishRequest(channel=channel, data=None,
                                               b64data=base64.b64encode(payload).decode()))
        assert res.offset == 1
        ctx = await conn.events.next("sub_publication")
        assert ctx.pub.data == {"bin": "ok"}


async def test_publish_errors(server: Server, api: AsyncClient, http: aiohttp.ClientSession) -> None:
    with pytest.raises(CentApiResponseError) as err:
        await api.publish(PublishRequest(channel="", data={"x": 1}))
    assert (err.value.code, err.value.message) == (107, "bad request")
    with pytest.raises(CentApiResponseError) as err:
        await api.publish(PublishRequest(channel=f"nosuchns:{uid()}", data={"x": 1}))
    assert (err.value.code, err.value.message) == (102, "unknown channel")
    with pytest.raises(CentApiResponseError) as err:
        await api.publish(PublishRequest(channel=f"chat:{uid()}", data=None, b64data="!!not base64!!"))
    assert err.value.code == 107
    # No data at all (cent cannot send that: its `data` is required) -> 107.
    status, body = await raw_api(http, server, "publish", {"channel": f"chat:{uid()}"})
    assert status == 200
    assert json.loads(body) == {"error": {"code": 107, "message": "bad request"}}
    # Unknown namespace is reported before missing data, as Centrifugo orders its checks.
    status, body = await raw_api(http, server, "publish", {"channel": f"nosuchns:{uid()}"})
    assert json.loads(body)["error"]["code"] == 102


# ---- broadcast ----------------------------------------------------------------------------


async def test_broadcast_per_channel_responses(api: AsyncClient) -> None:
    chat, plain, unknown = f"chat:bc-{uid()}", f"plain:bc-{uid()}", f"nosuchns:bc-{uid()}"
    res = await api.broadcast(BroadcastRequest(channels=[chat, plain, unknown], data={"all": 1}))
    assert len(res.responses) == 3
    ok_chat, ok_plain, bad = res.responses
    assert ok_chat.error is None and ok_chat.result is not None
    assert ok_chat.result.offset == 1 and ok_chat.result.epoch
    assert ok_plain.error is None and ok_plain.result is not None
    assert ok_plain.result.offset == 0 and ok_plain.result.epoch == ""
    assert bad.result is None and bad.error is not None
    assert (bad.error.code, bad.error.message) == (102, "unknown channel")
    history = await api.history(HistoryRequest(channel=chat, limit=-1))
    assert [p.data for p in history.publications] == [{"all": 1}]


async def test_broadcast_errors(server: Server, api: AsyncClient, http: aiohttp.ClientSession) -> None:
    with pytest.raises(CentApiResponseError) as err:
        await api.broadcast(BroadcastRequest(channels=[], data={"x": 1}))
    assert err.value.code == 107
    # Empty data is a per-channel error (Centrifugo validates data per channel, after the
    # namespace lookup), not a top-level one.
    status, body = await raw_api(http, server, "broadcast",
                                 {"channels": [f"chat:{uid()}", f"nosuchns:{uid()}", ""]})
    assert status == 200
    assert json.loads(body) == {"result": {"responses": [
        {"error": {"code": 107, "message": "bad request"}},
        {"error": {"code": 102, "message": "unknown channel"}},
        {"error": {"code": 107, "message": "bad request"}},
    ]}}


# ---- subscribe / unsubscribe --------------------------------------------------------------


async def test_server_side_subscribe_reaches_client(server: Server, api: AsyncClient) -> None:
    user = f"u-{uid()}"
    channel = f"chat:srv-{uid()}"
    async with connected(server, user) as conn:
        await api.subscribe(SubscribeRequest(user=user, channel=channel, data={"welcome": True},
                                             info={"role": "admin"}))
        ctx = await conn.events.next("subscribed")
        assert ctx.channel == channel
        assert ctx.data == {"welcome": True}
        assert ctx.recoverable and ctx.positioned  # chat forces recovery and positioning
        # Channel info shows up in presence.
        presence = await api.presence(PresenceRequest(channel=channel))
        assert presence.presence[conn.id].chan_info == {"role": "admin"}
        assert presence.presence[conn.id].user == user
        # And publications flow to the server-side subscription.
        await api.publish(PublishRequest(channel=channel, data={"after": "subscribe"}))
        pub = await conn.events.next("publication")
        assert pub.channel == channel and pub.pub.data == {"after": "subscribe"}
        # Server-side unsubscribe of a server-side subscription.
        await api.unsubscribe(UnsubscribeRequest(user=user, channel=channel))
        unsub = await conn.events.next("unsubscribed")
        assert unsub.channel == channel


async def test_server_side_subscribe_targets_one_client_and_override(server: Server,
                                                                     api: AsyncClient) -> None:
    user = f"u-{uid()}"
    channel = f"chat:srv-client-{uid()}"
    async with connected(server, user) as one, connected(server, user) as two:
        override = ChannelOptionsOverride(presence=BoolValue(value=False))
        await api.subscribe(SubscribeRequest(user=user, channel=channel, client=two.id,
                                             override=override))
        ctx = await two.events.next("subscribed")
        assert ctx.channel == channel
        assert one.events.pending("subscribed") == 0
        stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
        assert (stats.num_clients, stats.num_users) == (0, 0)  # presence overridden off
        channels = await api.channels(ChannelsRequest(pattern=channel))
        assert channels.channels[channel].num_clients == 1


async def test_subscribe_errors(api: AsyncClient) -> None:
    with pytest.raises(CentApiResponseError) as err:
        await api.subscribe(SubscribeRequest(user="someone", channel=f"nosuchns:{uid()}"))
    assert err.value.code == 102
    with pytest.raises(CentApiResponseError) as err:
        await api.subscribe(SubscribeRequest(user="someone", channel=""))
    assert err.value.code == 107
    # Nobody connected: still a success.
    assert await api.subscribe(SubscribeRequest(user=f"ghost-{uid()}", channel="chat:x")) is not None


async def test_unsubscribe_client_side_subscription_code_2000(server: Server, api: AsyncClient) -> None:
    user = f"u-{uid()}"
    channel = f"chat:unsub-{uid()}"
    async with connected(server, user) as conn:
        await conn.subscribe(channel)
        await api.unsubscribe(UnsubscribeRequest(user=user, channel=channel))
        ctx = await conn.events.next("sub_unsubscribed")
        assert (ctx.code, ctx.reason) == (2000, "server unsubscribe")

        async def no_presence() -> bool:
            return (await api.presence(PresenceRequest(channel=channel))).presence == {}

        await eventually(no_presence)
    with pytest.raises(CentApiResponseError) as err:
        await api.unsubscribe(UnsubscribeRequest(user=user, channel=f"nosuchns:{uid()}"))
    assert err.value.code == 102


# ---- disconnect / refresh -----------------------------------------------------------------


async def test_disconnect_default_code(server: Server, api: AsyncClient) -> None:
    user = f"u-{uid()}"
    async with connected(server, user) as conn:
        await api.disconnect(DisconnectRequest(user=user))
        ctx = await conn.events.next("disconnected")
        assert (ctx.code, ctx.reason) == (3503, "force disconnect")


async def test_disconnect_custom_code_and_whitelist(server: Server, api: AsyncClient) -> None:
    user = f"u-{uid()}"
    async with connected(server, user) as kept, connected(server, user) as dropped:
        await api.disconnect(DisconnectRequest(
            user=user, whitelist=[kept.id], disconnect=Disconnect(code=4501, reason="custom bye")))
        ctx = await dropped.events.next("disconnected")
        assert (ctx.code, ctx.reason) == (4501, "custom bye")
        # The whitelisted connection still works.
        info = await api.info(InfoRequest())
        assert info.nodes[0].num_clients >= 1
        sub = await kept.subscribe(f"chat:still-here-{uid()}")
        assert sub is not None
        assert kept.events.pending("disconnected") == 0


async def test_disconnect_one_client(server: Server, api: AsyncClient) -> None:
    user = f"u-{uid()}"
    async with connected(server, user) as one, connected(server, user) as two:
        await api.disconnect(DisconnectRequest(user=user, client=one.id))
        ctx = await one.events.next("disconnected")
        assert ctx.code == 3503
        await two.subscribe(f"chat:{uid()}")
        assert two.events.pending("disconnected") == 0


async def test_refresh_expired_closes_with_3005(server: Server, api: AsyncClient) -> None:
    user = f"u-{uid()}"
    async with connected(server, user) as conn:
        await api.refresh(RefreshRequest(user=user, expired=True))
        # 3005 is a reconnect code: the SDK goes back to connecting, then reconnects
        # (its token is still valid).
        ctx = await conn.events.next("connecting")
        assert (ctx.code, ctx.reason) == (3005, "connection expired")
        again = await conn.events.next("connected")
        assert again.client != conn.id


async def test_refresh_not_expired_keeps_connection(server: Server, api: AsyncClient) -> None:
    user = f"u-{uid()}"
    async with connected(server, user) as conn:
        assert await api.refresh(RefreshRequest(user=user, expire_at=2_000_000_000)) is not None
        await conn.subscribe(f"chat:{uid()}")
        assert conn.events.pending("connecting") == 0
        assert conn.events.pending("disconnected") == 0


# ---- presence / history / channels / info -------------------------------------------------


async def test_presence_and_stats(server: Server, api: AsyncClient) -> None:
    channel = f"chat:presence-{uid()}"
    user_a, user_b = f"a-{uid()}", f"b-{uid()}"
    async with connected(server, user_a) as a1, connected(server, user_a) as a2, \
            connected(server, user_b) as b:
        for conn in (a1, a2, b):
            await conn.subscribe(channel)
        presence = await api.presence(PresenceRequest(channel=channel))
        assert set(presence.presence) == {a1.id, a2.id, b.id}
        assert presence.presence[b.id].user == user_b
        assert presence.presence[b.id].client == b.id
        stats = await api.presence_stats(PresenceStatsRequest(channel=channel))
        assert (stats.num_clients, stats.num_users) == (3, 2)
    empty = await api.presence_stats(PresenceStatsRequest(channel=f"chat:nobody-{uid()}"))
    assert (empty.num_clients, empty.num_users) == (0, 0)


async def test_presence_errors(server: Server, api: AsyncClient, http: aiohttp.ClientSession) -> None:
    for call, req in ((api.presence, PresenceRequest), (api.presence_stats, PresenceStatsRequest)):
        with pytest.raises(CentApiResponseError) as err:
            await call(req(channel=f"plain:{uid()}"))
        assert (err.value.code, err.value.message) == (108, "not available")
        with pytest.raises(CentApiResponseError) as err:
            await call(req(channel=f"nosuchns:{uid()}"))
        assert err.value.code == 102
        with pytest.raises(CentApiResponseError) as err:
            await call(req(channel=""))
        assert err.value.code == 107
    status, body = await raw_api(http, server, "presence", {})
    assert json.loads(body) == {"error": {"code": 107, "message": "bad request"}}


async def test_history_limit_reverse_since(api: AsyncClient) -> None:
    channel = f"chat:hist-{uid()}"
    for n in range(1, 6):
        await api.publish(PublishRequest(channel=channel, data={"n": n}))
    top = await api.history(HistoryRequest(channel=channel))
    assert top.publications == [] and top.offset == 5 and top.epoch  # no limit: position only
    limited = await api.history(HistoryRequest(channel=channel, limit=2))
    assert [p.offset for p in limited.publications] == [1, 2]
    assert [p.data for p in limited.publications] == [{"n": 1}, {"n": 2}]
    everything = await api.history(HistoryRequest(channel=channel, limit=-1))
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    reverse = await api.history(HistoryRequest(channel=channel, limit=2, reverse=True))
    assert [p.offset for p in reverse.publications] == [5, 4]
    since = await api.history(HistoryRequest(
        channel=channel, limit=-1, since=StreamPosition(offset=3, epoch=top.epoch)))
    assert [p.offset for p in since.publications] == [4, 5]
    since_rev = await api.history(HistoryRequest(
        channel=channel, limit=-1, reverse=True, since=StreamPosition(offset=3, epoch=top.epoch)))
    assert [p.offset for p in since_rev.publications] == [2, 1]
    with pytest.raises(CentApiResponseError) as err:
        await api.history(HistoryRequest(channel=channel, limit=-1,
                                         since=StreamPosition(offset=1, epoch="wrong-epoch")))
    assert (err.value.code, err.value.message) == (112, "unrecoverable position")


async def test_history_errors(api: AsyncClient) -> None:
    with pytest.raises(CentApiResponseError) as err:
        await api.history(HistoryRequest(channel=f"plain:{uid()}", limit=10))
    assert err.value.code == 108
    with pytest.raises(CentApiResponseError) as err:
        await api.history(HistoryRequest(channel=f"nosuchns:{uid()}"))
    assert err.value.code == 102
    with pytest.raises(CentApiResponseError) as err:
        await api.history(HistoryRequest(channel=""))
    assert err.value.code == 107


async def test_history_remove(api: AsyncClient) -> None:
    channel = f"chat:hrm-{uid()}"
    for n in range(3):
        await api.publish(PublishRequest(channel=channel, data={"n": n}))
    before = await api.history(HistoryRequest(channel=channel, limit=-1))
    assert len(before.publications) == 3
    await api.history_remove(HistoryRemoveRequest(channel=channel))
    after = await api.history(HistoryRequest(channel=channel, limit=-1))
    assert after.publications == []
    # The stream position survives removal (Centrifuge keeps the stream meta).
    assert (after.offset, after.epoch) == (3, before.epoch)
    res = await api.publish(PublishRequest(channel=channel, data={"n": "next"}))
    assert res.offset == 4
    with pytest.raises(CentApiResponseError) as err:
        await api.history_remove(HistoryRemoveRequest(channel=f"plain:{uid()}"))
    assert err.value.code == 108


async def test_channels_pattern(server: Server, api: AsyncClient) -> None:
    tag = uid()
    a, b, other = f"chat:ch-{tag}-a", f"plain:ch-{tag}-b", f"chat:other-{tag}"
    async with connected(server, f"u-{uid()}") as one, connected(server, f"u-{uid()}") as two:
        await one.subscribe(a)
        await two.subscribe(a)
        await one.subscribe(b)
        await two.subscribe(other)
        res = await api.channels(ChannelsRequest(pattern=f"*ch-{tag}-*"))
        assert set(res.channels) == {a, b}
        assert res.channels[a].num_clients == 2
        assert res.channels[b].num_clients == 1
        everything = await api.channels(ChannelsRequest())
        assert {a, b, other} <= set(everything.channels)

    async def gone() -> bool:
        return (await api.channels(ChannelsRequest(pattern=f"*{tag}*"))).channels == {}

    await eventually(gone)  # the clients have closed their sockets


async def test_info(server: Server, api: AsyncClient) -> None:
    async with connected(server, f"u-{uid()}"):
        res = await api.info(InfoRequest())
        assert len(res.nodes) == 1
        node = res.nodes[0]
        assert node.uid == server.node.uid
        assert node.name == server.node.name
        assert node.version
        assert node.num_clients >= 1 and node.num_users >= 1


# ---- batch --------------------------------------------------------------------------------


async def test_batch_with_cent(api: AsyncClient) -> None:
    channel = f"chat:batch-{uid()}"
    res = await api.batch(BatchRequest(requests=[
        PublishRequest(channel=channel, data={"n": 1}),
        PublishRequest(channel=channel, data={"n": 2}),
        HistoryRequest(channel=channel, limit=-1),
        PresenceStatsRequest(channel=channel),
        InfoRequest(),
    ]))
    pub1, pub2, history, stats, info = res.replies
    assert (pub1.offset, pub2.offset) == (1, 2)
    assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]
    assert (stats.num_clients, stats.num_users) == (0, 0)
    assert info.nodes[0].uid


async def test_batch_parallel_with_cent(api: AsyncClient) -> None:
    channels = [f"chat:pbatch-{uid()}" for _ in range(3)]
    res = await api.batch(BatchRequest(parallel=True, requests=[
        PublishRequest(channel=ch, data={"ch": ch}) for ch in channels]))
    assert [r.offset for r in res.replies] == [1, 1, 1]


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_batch_of_publishes_keeps_sequential_order(
        broker: str, make_server: Any, redis_urls: list[str], http: aiohttp.ClientSession) -> None:
    """A sequential batch issues its run of publishes back to back (one broker round trip),
    with exactly the offsets and delivery order of one-by-one execution; a history read
    after the run sees all of them."""
    settings = standard_settings()
    if broker == "redis":
        settings["redis"] = {"urls": redis_urls}
    srv = await make_server(settings)
    channel = f"chat:order-{uid()}"
    seen: list[int] = []
    events = Recorded()
    client = Client(srv.ws_url, token=srv.token("orderly"), proxy=None)
    sub = client.new_subscription(channel, events)
    await client.connect()
    await sub.subscribe()
    await sub.ready(timeout=10)
    try:
        commands = [{"publish": {"channel": channel, "data": {"n": n}}} for n in range(300)]
        commands.insert(150, {"history": {"channel": channel, "limit": -1}})
        status, body = await raw_api(http, srv, "batch", {"commands": commands})
        assert status == 200
        replies = json.loads(body)["replies"]
        offsets = [r["publish"]["offset"] for r in replies if "publish" in r]
        assert offsets == list(range(1, 301))
        history = replies[150]["history"]["publications"]
        assert [p["data"]["n"] for p in history] == list(range(150))
        while len(seen) < 300:
            ctx = await events.next("publication")
            seen.append(ctx.pub.data["n"])
        assert seen == list(range(300))
    finally:
        await client.disconnect()


async def test_batch_error_reply_breaks_cent(api: AsyncClient) -> None:
    # cent 5.2.0 reads replies[i][method] and so raises a bare KeyError on a reply that only
    # has "error" (a shape Centrifugo does emit). Pinned here so a cent upgrade is noticed.
    with pytest.raises(KeyError):
        await api.batch(BatchRequest(requests=[
            PublishRequest(channel=f"nosuchns:{uid()}", data={"x": 1})]))


async def test_batch_error_replies_raw(server: Server, http: aiohttp.ClientSession) -> None:
    # cent raises KeyError on replies that only carry "error", so check them on the wire.
    channel = f"chat:rbatch-{uid()}"
    status, body = await raw_api(http, server, "batch", {"commands": [
        {"publish": {"channel": f"nosuchns:{uid()}", "data": {}}},
        {"no_such_method": {}},
        {"publish": {"channel": channel, "data": {"ok": True}}},
        {"presence": {"channel": f"plain:{uid()}"}},
        {"publish": {"channel": ""}},
        {"info": {}},
    ]})
    assert status == 200
    replies = json.loads(body)["replies"]
    assert replies[0] == {"error": {"code": 102, "message": "unknown channel"}}
    assert replies[1] == {"error": {"code": 104, "message": "not found"}}
    assert replies[2]["publish"]["offset"] == 1
    assert replies[3] == {"error": {"code": 108, "message": "not available"}}
    assert replies[4] == {"error": {"code": 107, "message": "bad request"}}
    assert replies[5]["info"]["nodes"][0]["uid"] == server.node.uid
    # The batch itself is not wrapped in "result".
    assert set(json.loads(body)) == {"replies"}


# ---- auth and HTTP transport --------------------------------------------------------------


async def test_wrong_key_is_401(server: Server) -> None:
    async with AsyncClient(server.api_url, "wrong-key") as client:
        with pytest.raises(CentUnauthorizedError):
            await client.info(InfoRequest())


async def test_auth_variants(server: Server, http: aiohttp.ClientSession) -> None:
    url = f"{server.api_url}/info"
    async with http.post(url, json={}) as resp:  # no key at all
        assert resp.status == 401
        # The API's JSON error shape (was an empty body), numeric code as Centrifugo's.
        assert (await resp.json())["error"]["code"] == 401
    async with http.post(url, json={}, headers={"X-API-Key": "nope"}) as resp:
        assert resp.status == 401
    async with http.post(url, json={}, headers={"Authorization": f"apikey {API_KEY}"}) as resp:
        assert resp.status == 200
        assert "nodes" in (await resp.json())["result"]
    async with http.post(url, json={}, headers={"Authorization": f"APIKEY {API_KEY}"}) as resp:
        assert resp.status == 200
    async with http.post(url, json={}, headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status == 401
    async with http.post(url, json={}, headers={"Authorization": "apikey nope"}) as resp:
        assert resp.status == 401
    async with http.post(url, json={}, params={"api_key": API_KEY}) as resp:
        assert resp.status == 200
    async with http.post(url, json={}, params={"api_key": "nope"}) as resp:
        assert resp.status == 401
    # Centrifugo falls back to ?api_key when a header carries a wrong key.
    async with http.post(url, json={}, params={"api_key": API_KEY},
                         headers={"X-API-Key": "stale"}) as resp:
        assert resp.status == 200


async def test_insecure_and_empty_key(make_server: Any, http: aiohttp.ClientSession) -> None:
    empty = await make_server({"http_api": {"key": ""}})
    async with http.post(f"{empty.api_url}/info", json={}, headers={"X-API-Key": ""}) as resp:
        assert resp.status == 401  # an empty configured key never authorizes
    insecure = await make_server({"http_api": {"key": "", "insecure": True}})
    async with AsyncClient(insecure.api_url, "") as client:
        res = await client.info(InfoRequest())
        assert res.nodes[0].uid == insecure.node.uid


async def test_http_status_codes(server: Server, api: AsyncClient, http: aiohttp.ClientSession) -> None:
    status, _ = await raw_api(http, server, "no_such_method", {})
    assert status == 404
    # An unknown route is 404 before the method and key checks (Go's mux), unlike a known one.
    async with http.get(f"{server.api_url}/no_such_method") as resp:
        assert resp.status == 404
    status, _ = await raw_api(http, server, "no_such_method", {}, headers={})
    assert status == 404
    status, _ = await raw_api(http, server, "publish", {}, headers={})
    assert status == 401
    async with http.get(f"{server.api_url}/publish", headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
    for path in ("/health", "/metrics"):
        async with http.post(f"{server.http_url}{path}") as resp:
            assert (resp.status, resp.headers.get("Allow")) == (405, "GET, HEAD"), path
    status, body = await raw_api(http, server, "publish", b"{not json")
    assert status == 400
    status, _ = await raw_api(http, server, "batch", b"[1, 2")
    assert status == 400
    # Go's json.Unmarshal also rejects an empty body and mistyped fields.
    status, _ = await raw_api(http, server, "info", b"")
    assert status == 400
    status, _ = await raw_api(http, server, "publish", {"channel": 42, "data": {}})
    assert status == 400
    status, _ = await raw_api(http, server, "batch", {"commands": [
        {"info": {}}, {"history": {"channel": "chat:x", "limit": "ten"}}]})
    assert status == 400
    # cent maps any non-200 other than 401 to a transport error.
    async with AsyncClient(f"{server.http_url}/nothing-here", API_KEY) as client:
        with pytest.raises(CentTransportError) as err:
            await client.info(InfoRequest())
        assert err.value.status_code == 404


async def test_json_content_type(server: Server, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{server.api_url}/info", json={}, headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"


async def test_health(server: Server, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.http_url}/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def test_metrics_after_traffic(server: Server, api: AsyncClient,
                                     http: aiohttp.ClientSession) -> None:
    channel = f"chat:metrics-{uid()}"
    async with connected(server, f"u-{uid()}") as conn:
        await conn.subscribe(channel)
        await api.publish(PublishRequest(channel=channel, data={"m": 1}))
        await conn.events.next("sub_publication")
        with pytest.raises(CentApiResponseError):
            await api.publish(PublishRequest(channel=f"nosuchns:{uid()}", data={}))
        async with http.get(f"{server.http_url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("sentchat_connections") >= 1
    assert value("sentchat_commands_total", method="connect") >= 1
    assert value("sentchat_commands_total", method="subscribe") >= 1
    assert value("sentchat_publications_total", source="api") >= 1
    assert value("sentchat_deliveries_total") >= 1
    assert value("sentchat_errors_total", code="102") >= 1
    assert value("sentchat_command_duration_seconds_count", method="connect") >= 1
    assert value("sentchat_command_duration_seconds_bucket", method="connect", le="+Inf") >= 1
    assert value("sentchat_api_requests_total", method="publish") >= 2


async def test_oversized_body_is_413(server: Server) -> None:
    limit = server.node.settings.http.max_body_size
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            f"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n".encode())
        await writer.drain()
        status, headers, _ = await read_response(reader)
        assert status == 413
        assert headers["connection"] == "close"
        # The server waits a bounded time for the refused body (so a client still sending
        # reads this answer, not a reset), then closes.
        assert await asyncio.wait_for(reader.read(), WAIT + DRAIN_SECONDS) == b""
    finally:
        writer.close()


async def test_oversized_body_is_413_with_aiohttp(make_server: Any, http: aiohttp.ClientSession) -> None:
    small = await make_server({"http_api": {"key": API_KEY}, "http": {"max_body_size": 1024}})
    status, _ = await raw_api(http, small, "publish", {"channel": "x", "data": "y" * 100})
    assert status == 200
    status, _ = await raw_api(http, small, "publish", {"channel": "x", "data": "y" * 2000})
    assert status == 413


async def test_chunked_body_is_411(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        body = b'{"channel":"chat:x","data":{}}'
        writer.write(
            f"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        await writer.drain()
        status, headers, _ = await read_response(reader)
        assert status == 411
        assert headers["connection"] == "close"
    finally:
        writer.close()


async def test_keep_alive_two_requests(server: Server) -> None:
    channel = f"chat:ka-{uid()}"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for n in (1, 2):
            writer.write(post_bytes("/api/publish", json.dumps({"channel": channel, "data": n}).encode()))
            await writer.drain()
            status, headers, body = await read_response(reader)
            assert status == 200
            assert headers["connection"] == "keep-alive"
            assert json.loads(body)["result"]["offset"] == n
    finally:
        writer.close()


async def test_keep_alive_pipelined_and_head(server: Server) -> None:
    channel = f"chat:pipe-{uid()}"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        # Three requests in one write: answered in order on the same connection. A HEAD
        # response has no body, so the next response must parse cleanly after it.
        writer.write(
            post_bytes("/api/publish", json.dumps({"channel": channel, "data": 1}).encode())
            + b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
            + post_bytes("/api/publish", json.dumps({"channel": channel, "data": 2}).encode()))
        await writer.drain()
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["result"]["offset"] == 1
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200 ")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["result"]["offset"] == 2
    finally:
        writer.close()


async def test_connection_close_honoured(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(post_bytes("/api/info", b"{}", extra="Connection: close\r\n"))
        await writer.drain()
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
    finally:
        writer.close()
