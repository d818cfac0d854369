"""Recovery while publications keep flowing: "never best-effort" under load.

Clients are cut off (server API disconnect with a reconnecting code, or their socket
dropped) while a publisher keeps writing at ≥ 100/s. Every client must end with every
acknowledged publication exactly once, in offset order, and every resubscribe must report
``recovered: true`` — for durable (PostgreSQL) and ephemeral (broker history) namespaces,
in JSON and Protobuf. The multi-process variant (``--workers 3``, a worker SIGKILLed)
lives in test_recovery_workers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from centrifuge import Client

from tests.conftest import API_KEY, Server, stop_server
from tests.gateway.test_durable import durable_settings, start_on
from tests.sdk import ClientEvents, SubEvents, eventually, uniq

CLIENTS = 24
CUT = 8
RATE = 120.0  # publications per second offered
PUBLICATIONS = 360


def storm_settings(dsn: str) -> dict[str, Any]:
    """The durable ``log`` namespace of test_durable plus an ephemeral ``eph`` with the
    issue's numbers (history 1000, 1 h), both with forced recovery."""
    settings = durable_settings(dsn)
    settings["channel"]["namespaces"].append({
        "name": "eph", "history_size": 1000, "history_ttl": "3600s", "force_recovery": True,
        "force_positioning": True, "allow_subscribe_for_client": True,
    })
    return settings


@pytest.fixture
async def storm_server(empty_dsn: str) -> AsyncIterator[Server]:
    srv = await start_on(storm_settings(empty_dsn))
    yield srv
    await stop_server(srv)


class Follower:
    """One SDK client following the channel, recording what it got: through a client-side
    subscription, or (``server_side``) through a server-side one from its token's
    ``channels`` claim, recovered by the connect command."""

    def __init__(self, url: str, token: str, channel: str, protobuf: bool,
                 server_side: bool = False) -> None:
        self.channel = channel
        self.server_side = server_side
        self.events = ClientEvents()
        self.sub_events = SubEvents()
        self.client = Client(url, token=token, events=self.events, use_protobuf=protobuf,
                             min_reconnect_delay=0.05, max_reconnect_delay=0.5)
        self.sub = None if server_side else self.client.new_subscription(channel, self.sub_events)

    @property
    def _recorder(self) -> ClientEvents | SubEvents:
        return self.events if self.server_side else self.sub_events

    async def start(self) -> None:
        await self.client.connect()
        if self.sub is not None:
            await self.sub.subscribe()
            await self.sub.ready(timeout=10)
        else:
            await self.events.next_where("subscribed", lambda c: c.channel == self.channel)

    def offsets(self) -> list[int]:
        return [c.pub.offset for c in self._recorder.seen("publication")
                if getattr(c, "channel", self.channel) == self.channel]

    def resubscribes(self) -> list[Any]:
        return [c for c in self._recorder.seen("subscribed")
                if c.was_recovering and getattr(c, "channel", self.channel) == self.channel]


async def publish_stream(api_url: str, channel: str, count: int, rate: float,
                         lossy: bool = False) -> list[int]:
    """Publish ``count`` publications at ``rate``/s through the server API, several in
    flight at once; returns the acknowledged offsets. ``lossy``: a request whose worker
    died under it is not acknowledged (and may or may not have been committed)."""
    acked: list[int] = []
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> None:
            try:
                async with http.post(f"{api_url}/publish", headers={"X-API-Key": API_KEY},
                                     json={"channel": channel, "data": {"i": i}}) as resp:
                    body = await resp.json()
            except (aiohttp.ClientError, ValueError):
                if not lossy:
                    raise
                return
            assert "error" not in body, body
            acked.append(body["result"]["offset"])

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return sorted(acked)


async def check_followers(followers: list[Follower], stream: list[int], cut: list[Follower]) -> None:
    """Every follower ends with exactly ``stream`` (every offset once, in order), every
    resubscribe recovered, and every cut follower did resubscribe."""

    async def complete() -> bool:
        return all(len(f.offsets()) >= len(stream) for f in followers)

    with contextlib.suppress(TimeoutError):
        await eventually(complete, timeout=30)
    problems = []
    for i, f in enumerate(followers):
        got = f.offsets()
        if got != stream:
            missing = sorted(set(stream) - set(got))
            dup = len(got) - len(set(got))
            problems.append(f"follower {i}: {len(got)} received, {len(missing)} missing "
                            f"(first {missing[:5]}), {dup} duplicates, ordered={got == sorted(got)}")
        bad = [c.stream_position.offset for c in f.resubscribes() if not c.recovered]
        if bad:
            problems.append(f"follower {i}: resubscribe not recovered at offsets {bad}")
    assert not problems, "\n".join(problems)
    assert all(f.resubscribes() for f in cut), "every cut client resubscribed"


async def run_storm(srv: Server, channel: str, protobuf: bool,
                    cut: Callable[[list[Follower]], Awaitable[None]]) -> None:
    # Every third follower hears the channel through a server-side subscription.
    followers = [Follower(srv.ws_url, srv.token(f"user{i}", channels=[channel] if i % 3 == 2 else []),
                          channel, protobuf, server_side=i % 3 == 2)
                 for i in range(CLIENTS)]
    await asyncio.gather(*(f.start() for f in followers))
    try:
        publisher = asyncio.ensure_future(publish_stream(srv.api_url, channel, PUBLICATIONS, RATE))
        # Cut while the stream is in full flow, twice, so some resubscribes overlap commits.
        await asyncio.sleep(0.8)
        await cut(followers[:CUT])
        await asyncio.sleep(0.7)
        await cut(followers[CUT // 2:CUT + CUT // 2])
        acked = await publisher
        assert acked == list(range(1, PUBLICATIONS + 1))
        await check_followers(followers, acked, followers[:CUT + CUT // 2])
    finally:
        await asyncio.gather(*(f.client.disconnect() for f in followers))


async def api_disconnect(srv: Server, followers: list[Follower]) -> None:
    """Server API ``disconnect`` with a reconnecting code (4000-4499)."""
    async with aiohttp.ClientSession() as http:
        for f in followers:
            async with http.post(f"{srv.api_url}/disconnect", headers={"X-API-Key": API_KEY},
                                 json={"client": f.client.client_id,
                                       "user": _user_of(srv, f.client.client_id),
                                       "disconnect": {"code": 4001, "reason": "storm"}}) as resp:
                assert resp.status == 200


def _user_of(srv: Server, client_id: str | None) -> str:
    conn = srv.node.connections.get(client_id or "")
    return conn.session.user if conn is not None else ""


async def socket_loss(srv: Server, followers: list[Follower]) -> None:
    """The client's TCP connection is dropped without a close frame."""
    for f in followers:
        conn = srv.node.connections.get(f.client.client_id or "")
        if conn is not None:
            conn.transport.abort()


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
@pytest.mark.parametrize("namespace", ["log", "eph"], ids=["durable", "ephemeral"])
@pytest.mark.parametrize("how", ["api", "socket"])
async def test_reconnect_storm_recovers_everything(storm_server: Server, namespace: str,
                                                   protobuf: bool, how: str) -> None:
    cut = api_disconnect if how == "api" else socket_loss

    async def do_cut(followers: list[Follower]) -> None:
        await cut(storm_server, followers)

    await run_storm(storm_server, uniq(f"{namespace}:storm"), protobuf, do_cut)
