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
import json
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
    """One SDK client subscribed to the channel, recording what it got."""

    def __init__(self, url: str, token: str, channel: str, protobuf: bool) -> None:
        self.events = ClientEvents()
        self.sub_events = SubEvents()
        self.client = Client(url, token=token, events=self.events, use_protobuf=protobuf,
                             min_reconnect_delay=0.05, max_reconnect_delay=0.5)
        self.sub = self.client.new_subscription(channel, self.sub_events)

    async def start(self) -> None:
        await self.client.connect()
        await self.sub.subscribe()
        await self.sub.ready(timeout=10)

    def offsets(self) -> list[int]:
        return [c.pub.offset for c in self.sub_events.seen("publication")]

    def resubscribes(self) -> list[Any]:
        return [c for c in self.sub_events.seen("subscribed") if c.was_recovering]


async def publish_stream(srv: Server, channel: str, count: int, rate: float) -> list[int]:
    """Publish ``count`` publications at ``rate``/s through the server API, several in
    flight at once; returns the acknowledged offsets."""
    acked: list[int] = []
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> None:
            async with http.post(f"{srv.api_url}/publish", headers={"X-API-Key": API_KEY},
                                 json={"channel": channel, "data": {"i": i}}) as resp:
                body = await resp.json()
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


async def run_storm(srv: Server, channel: str, protobuf: bool,
                    cut: Callable[[list[Follower]], Awaitable[None]]) -> None:
    followers = [Follower(srv.ws_url, srv.token(f"user{i}"), channel, protobuf)
                 for i in range(CLIENTS)]
    await asyncio.gather(*(f.start() for f in followers))
    try:
        publisher = asyncio.ensure_future(publish_stream(srv, channel, PUBLICATIONS, RATE))
        # Cut while the stream is in full flow, twice, so some resubscribes overlap commits.
        await asyncio.sleep(0.8)
        await cut(followers[:CUT])
        await asyncio.sleep(0.7)
        await cut(followers[CUT // 2:CUT + CUT // 2])
        acked = await publisher
        assert acked == list(range(1, PUBLICATIONS + 1))

        async def complete() -> bool:
            return all(len(f.offsets()) >= PUBLICATIONS for f in followers)

        try:
            await eventually(complete, timeout=30)
        except TimeoutError:
            pass
        problems = []
        for i, f in enumerate(followers):
            got = f.offsets()
            if got != acked:
                missing = sorted(set(acked) - set(got))
                dup = len(got) - len(set(got))
                problems.append(f"user{i}: {len(got)} received, {len(missing)} missing "
                                f"(first {missing[:5]}), {dup} duplicates, ordered={got == sorted(got)}")
            bad = [json.dumps({"offset": c.stream_position.offset}) for c in f.resubscribes()
                   if not c.recovered]
            if bad:
                problems.append(f"user{i}: resubscribe not recovered at {bad}")
        assert not problems, "\n".join(problems)
        cut_users = followers[:CUT + CUT // 2]
        assert all(f.resubscribes() for f in cut_users), "every cut client resubscribed"
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
