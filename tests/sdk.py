"""Helpers for tests that drive the gateway with the real centrifuge-python SDK: event
recorders, a per-test client factory for one protocol (JSON or Protobuf), server API calls,
metrics reads and polling for converging state."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ReplyError,
    Subscription,
    SubscriptionEventHandler,
    SubscriptionState,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_KEY, Server

TIMEOUT = 10.0


# ---- helpers ------------------------------------------------------------------------------


class Recorder:
    """Keeps every SDK event: in order (``log``) and per kind in a queue (``next``)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self._queues: defaultdict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)

    def record(self, kind: str, ctx: Any) -> None:
        self.log.append((kind, ctx))
        self._queues[kind].put_nowait(ctx)

    async def next(self, kind: str, timeout: float = TIMEOUT) -> Any:
        return await asyncio.wait_for(self._queues[kind].get(), timeout)

    async def next_where(self, kind: str, pred: Callable[[Any], bool], timeout: float = TIMEOUT) -> Any:
        """The next ``kind`` event matching ``pred`` (earlier non-matching ones are dropped)."""

        async def scan() -> Any:
            while True:
                ctx = await self._queues[kind].get()
                if pred(ctx):
                    return ctx

        return await asyncio.wait_for(scan(), timeout)

    def seen(self, kind: str) -> list[Any]:
        return [ctx for k, ctx in self.log if k == kind]


class ClientEvents(ClientEventHandler, Recorder):
    """Client-level events, including those of server-side subscriptions.

    ``hold_reconnect``: when set, a lost connection's ``on_connecting`` handler waits for
    this event. The SDK awaits that handler before it schedules the reconnect, so a test
    decides exactly when the client may come back.
    """

    def __init__(self, hold_reconnect: asyncio.Event | None = None) -> None:
        Recorder.__init__(self)
        self.hold_reconnect = hold_reconnect

    async def on_connecting(self, ctx: Any) -> None:
        self.record("connecting", ctx)
        if self.hold_reconnect is not None and ctx.code != 0:
            await self.hold_reconnect.wait()

    async def on_connected(self, ctx: Any) -> None:
        self.record("connected", ctx)

    async def on_disconnected(self, ctx: Any) -> None:
        self.record("disconnected", ctx)

    async def on_error(self, ctx: Any) -> None:
        self.record("error", ctx)

    async def on_subscribed(self, ctx: Any) -> None:
        self.record("subscribed", ctx)

    async def on_subscribing(self, ctx: Any) -> None:
        self.record("subscribing", ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.record("unsubscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        self.record("publication", ctx)

    async def on_join(self, ctx: Any) -> None:
        self.record("join", ctx)

    async def on_leave(self, ctx: Any) -> None:
        self.record("leave", ctx)


class SubEvents(SubscriptionEventHandler, Recorder):
    def __init__(self) -> None:
        Recorder.__init__(self)

    async def on_subscribing(self, ctx: Any) -> None:
        self.record("subscribing", ctx)

    async def on_subscribed(self, ctx: Any) -> None:
        self.record("subscribed", ctx)

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.record("unsubscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        self.record("publication", ctx)

    async def on_join(self, ctx: Any) -> None:
        self.record("join", ctx)

    async def on_leave(self, ctx: Any) -> None:
        self.record("leave", ctx)

    async def on_error(self, ctx: Any) -> None:
        self.record("error", ctx)


class Sdk:
    """Creates SDK clients for one protocol and disconnects them all at teardown."""

    def __init__(self, protobuf: bool) -> None:
        self.protobuf = protobuf
        self.clients: list[tuple[Client, ClientEvents]] = []

    def enc(self, value: Any) -> Any:
        """An application payload as the SDK wants it for this protocol."""
        return json.dumps(value).encode() if self.protobuf else value

    @staticmethod
    def dec(value: Any) -> Any:
        """An application payload the SDK returned (bytes with Protobuf) as a JSON value."""
        return json.loads(value) if isinstance(value, bytes | bytearray) else value

    def client(self, srv: Server, token: str = "", *, events: ClientEvents | None = None,
               **kwargs: Any) -> tuple[Client, ClientEvents]:
        events = events or ClientEvents()
        client = Client(srv.ws_url, events=events, token=token, use_protobuf=self.protobuf,
                        proxy=None, **kwargs)
        self.clients.append((client, events))
        return client, events

    async def connect(self, srv: Server, user: str, *, events: ClientEvents | None = None,
                      token: str | None = None, **claims: Any) -> tuple[Client, ClientEvents]:
        client, events = self.client(
            srv, token if token is not None else srv.token(user, **claims), events=events)
        await client.connect()
        ctx = await events.next("connected")
        assert client.state == ClientState.CONNECTED
        assert ctx.client == client.client_id
        return client, events

    async def subscribe(self, client: Client, channel: str, **kwargs: Any) -> tuple[Subscription, SubEvents]:
        events = SubEvents()
        sub = client.new_subscription(channel, events, **kwargs)
        await sub.subscribe()
        await sub.ready(timeout=TIMEOUT)
        assert sub.state == SubscriptionState.SUBSCRIBED
        return sub, events

    async def close(self) -> None:
        for client, events in self.clients:
            if events.hold_reconnect is not None:
                events.hold_reconnect.set()
            await client.disconnect()


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def api(srv: Server, method: str, **payload: Any) -> dict[str, Any]:
    """POST /api/<method> with the API key; returns ``result`` (no error allowed)."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{srv.api_url}/{method}", json=payload, headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert "error" not in body, body
    return body["result"]


def metric(srv: Server, sample: str, **labels: str) -> float:
    """A sample of the node's Prometheus metrics (0 when absent)."""
    text = srv.node.metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = TIMEOUT) -> Any:
    """Poll ``check`` until it returns something truthy (for state that converges)."""

    async def loop() -> Any:
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(loop(), timeout)


async def _async(value: Any) -> Any:
    """``value`` as an awaitable, for ``eventually`` on plain state."""
    return value


async def reply_error(aw: Awaitable[Any]) -> ReplyError:
    with pytest.raises(ReplyError) as exc:
        await asyncio.wait_for(aw, TIMEOUT)
    return exc.value
