"""Durable namespaces with several nodes: PostgreSQL sequences each channel inside the
commit transaction, Redis fans the committed publications out, and every node delivers a
channel's publications in offset order, exactly once (tests/gateway/test_durable.py covers
one node)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from centrifuge import Client

from tests.conftest import API_KEY, Server, stop_server
from tests.gateway.test_durable import durable_settings, start_on
from tests.sdk import TIMEOUT, SubEvents, eventually, uniq


async def api(srv: Server, http: aiohttp.ClientSession, method: str, **payload: Any) -> dict[str, Any]:
    async with http.post(f"{srv.api_url}/{method}", json=payload,
                         headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_two_nodes_publish_into_one_durable_channel(empty_dsn: str, redis_urls: list[str]) -> None:
    settings = durable_settings(empty_dsn)
    settings["redis"] = {"urls": redis_urls}
    nodes = [await start_on(settings), await start_on(settings)]
    channel = uniq("log:shared")
    clients: list[Client] = []
    readers: list[SubEvents] = []
    try:
        for i, node in enumerate(nodes * 2):
            events = SubEvents()
            client = Client(node.ws_url, token=node.token(f"reader{i}"))
            sub = client.new_subscription(channel, events)
            await client.connect()
            await sub.subscribe()
            await sub.ready(timeout=TIMEOUT)
            clients.append(client)
            readers.append(events)
        async with aiohttp.ClientSession() as http:
            replies = await asyncio.gather(*(
                api(nodes[i % 2], http, "publish", channel=channel, data={"i": i})
                for i in range(400)))
        offsets = sorted(r["result"]["offset"] for r in replies)
        assert offsets == list(range(1, 401))
        assert len({r["result"]["epoch"] for r in replies}) == 1
        for events in readers:

            async def complete(events: SubEvents = events) -> bool:
                return len(events.seen("publication")) >= 400

            await eventually(complete, timeout=30)
            assert [c.pub.offset for c in events.seen("publication")] == list(range(1, 401))
        # History is the same stream from either node.
        async with aiohttp.ClientSession() as http:
            for node in nodes:
                history = await api(node, http, "history", channel=channel, limit=-1)
                assert [p["offset"] for p in history["result"]["publications"]] == list(range(1, 401))
    finally:
        for client in clients:
            await client.disconnect()
        for node in nodes:
            await stop_server(node)
