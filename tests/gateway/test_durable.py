"""Durable namespaces end to end: real PostgreSQL, real gateways, the real SDK.

- acknowledged means committed; subscribers only ever see committed publications;
- history and recovery come from PostgreSQL, across a full restart of the gateway;
- a gateway SIGKILLed in the middle of a burst of 50 publishers loses nothing it acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from centrifuge import Client

from gateway.config import build_settings
from gateway.node import Node
from gateway.server import serve
from tests.conftest import API_KEY, SECRET, Server, standard_settings, stop_server
from tests.sdk import TIMEOUT, ClientEvents, SubEvents, eventually, uniq

ROOT = Path(__file__).resolve().parents[2]


def durable_settings(dsn: str, **client: Any) -> dict[str, Any]:
    settings = standard_settings(**client)
    settings["channel"]["namespaces"].append({
        "name": "log", "durable": True, "retention": "30d", "presence": True,
        "force_recovery": True, "allow_subscribe_for_client": True,
        "allow_publish_for_subscriber": True, "allow_history_for_subscriber": True,
        "allow_presence_for_subscriber": True,
    })
    settings["storage"] = {"postgres_dsn": dsn}
    return settings


async def start_on(settings: dict[str, Any], port: int = 0) -> Server:
    node = Node(build_settings(settings))
    await node.start()
    server = await serve(node, "127.0.0.1", port)
    return Server(node, server, server.sockets[0].getsockname()[1])


@pytest.fixture
async def durable(empty_dsn: str) -> AsyncIterator[Server]:
    srv = await start_on(durable_settings(empty_dsn))
    yield srv
    await stop_server(srv)


async def api(srv: Server, method: str, **payload: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{srv.api_url}/{method}", json=payload, headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def rows(dsn: str, channel: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            'SELECT "offset", epoch, data FROM publications WHERE channel = $1 ORDER BY "offset"',
            channel)
    finally:
        await conn.close()


async def test_publish_is_acknowledged_after_commit(durable: Server, empty_dsn: str) -> None:
    channel = uniq("log:ack")
    first = await api(durable, "publish", channel=channel, data={"n": 1})
    second = await api(durable, "publish", channel=channel, data={"n": 2})
    assert first["result"]["offset"] == 1 and second["result"]["offset"] == 2
    assert first["result"]["epoch"] == second["result"]["epoch"]
    stored = await rows(empty_dsn, channel)
    assert [(r["offset"], r["epoch"]) for r in stored] == [(1, first["result"]["epoch"]),
                                                         (2, first["result"]["epoch"])]
    history = await api(durable, "history", channel=channel, limit=-1)
    assert [p["data"] for p in history["result"]["publications"]] == [{"n": 1}, {"n": 2}]
    assert history["result"]["offset"] == 2


async def test_idempotency_key_stores_once(durable: Server, empty_dsn: str) -> None:
    channel = uniq("log:idem")
    a = await api(durable, "publish", channel=channel, data={"n": 1}, idempotency_key="k1")
    b = await api(durable, "publish", channel=channel, data={"n": 1}, idempotency_key="k1")
    assert a == b
    assert len(await rows(empty_dsn, channel)) == 1


async def test_subscriber_sees_only_committed_in_order(durable: Server, empty_dsn: str) -> None:
    """Every publication a subscriber receives is already in PostgreSQL when it arrives."""
    channel = uniq("log:order")
    events = ClientEvents()
    client = Client(durable.ws_url, token=durable.token("reader"), events=events)
    sub_events = SubEvents()
    sub = client.new_subscription(channel, sub_events)
    await client.connect()
    await sub.subscribe()
    await sub.ready(timeout=TIMEOUT)
    conn = await asyncpg.connect(empty_dsn)
    try:
        publishers = [api(durable, "publish", channel=channel, data={"n": i}) for i in range(200)]
        results = await asyncio.gather(*publishers)
        assert sorted(r["result"]["offset"] for r in results) == list(range(1, 201))
        seen = []
        for _ in range(200):
            ctx = await sub_events.next("publication")
            seen.append(ctx.pub.offset)
            exists = await conn.fetchval(
                'SELECT count(*) FROM publications WHERE channel = $1 AND "offset" = $2',
                channel, ctx.pub.offset)
            assert exists == 1
        assert seen == list(range(1, 201))
    finally:
        await conn.close()
        await client.disconnect()


async def test_subscribe_while_publishing_loses_and_duplicates_nothing(durable: Server) -> None:
    """History reads await PostgreSQL; publications committed meanwhile are held back and
    sent after the subscribe reply, never twice, never dropped."""
    channel = uniq("log:race")
    stop = asyncio.Event()

    async def publish_forever() -> int:
        n = 0
        while not stop.is_set():
            n += 1
            await api(durable, "publish", channel=channel, data={"n": n})
        return n

    publisher = asyncio.ensure_future(publish_forever())
    await asyncio.sleep(0.2)
    clients = []
    subs = []
    try:
        for i in range(5):
            events = SubEvents()
            client = Client(durable.ws_url, token=durable.token(f"late{i}"))
            sub = client.new_subscription(channel, events)
            await client.connect()
            await sub.subscribe()
            await sub.ready(timeout=TIMEOUT)
            clients.append(client)
            subs.append(events)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        total = await publisher
    for events in subs:
        subscribed = events.seen("subscribed")[0]
        start = subscribed.stream_position.offset
        expected = list(range(start + 1, total + 1))

        async def all_arrived(events: SubEvents = events, expected: list[int] = expected) -> bool:
            return len(events.seen("publication")) >= len(expected)

        await eventually(all_arrived)
        assert [c.pub.offset for c in events.seen("publication")] == expected
    for client in clients:
        await client.disconnect()


async def test_recovery_across_full_restart_beyond_memory_window(empty_dsn: str) -> None:
    """5,000 publications missed while the only gateway restarted come back from
    PostgreSQL with `recovered: true`, and the epoch survives the restart."""
    settings = durable_settings(empty_dsn, recovery_max_publication_limit=10_000)
    first = await start_on(settings)
    port = first.port
    channel = uniq("log:restart")
    gate = asyncio.Event()
    events = ClientEvents(hold_reconnect=gate)
    client = Client(first.ws_url, token=first.token("alice"), events=events,
                    max_reconnect_delay=0.5)
    sub_events = SubEvents()
    sub = client.new_subscription(channel, sub_events)
    await client.connect()
    await sub.subscribe()
    await sub.ready(timeout=TIMEOUT)
    await api(first, "publish", channel=channel, data={"n": 0})
    assert (await sub_events.next("publication")).pub.offset == 1
    epoch = sub_events.seen("subscribed")[0].stream_position.epoch

    # Alice is cut off and held offline; 5,000 publications land; the gateway restarts.
    first.node.connections[client.client_id].transport.abort()
    await events.next_where("connecting", lambda c: c.code != 0)
    for chunk in range(50):
        await asyncio.gather(*(api(first, "publish", channel=channel, data={"n": chunk * 100 + i + 1})
                               for i in range(100)))
    await stop_server(first)
    second = await start_on(settings, port)
    try:
        gate.set()
        resubscribed = await sub_events.next_where("subscribed", lambda c: c.was_recovering, timeout=30)
        assert resubscribed.was_recovering and resubscribed.recovered
        assert resubscribed.stream_position.epoch == epoch
        async def all_arrived() -> bool:
            return len(sub_events.seen("publication")) >= 5001

        await eventually(all_arrived, timeout=60)
        assert [c.pub.offset for c in sub_events.seen("publication")] == list(range(1, 5002))
    finally:
        await client.disconnect()
        await stop_server(second)


async def test_queue_full_is_a_temporary_error(empty_dsn: str) -> None:
    settings = durable_settings(empty_dsn)
    settings["storage"]["queue_limit"] = 1
    srv = await start_on(settings)
    try:
        channel = uniq("log:full")
        replies = await asyncio.gather(*(api(srv, "publish", channel=channel, data={"n": i})
                                         for i in range(50)))
        errors = [r["error"] for r in replies if "error" in r]
        oks = [r["result"] for r in replies if "result" in r]
        assert errors and oks
        assert {e["code"] for e in errors} == {111}
        stored = await rows(empty_dsn, channel)
        # Exactly the acknowledged ones are stored: nothing refused was written.
        assert sorted(r["offset"] for r in stored) == sorted(o["offset"] for o in oks)
    finally:
        await stop_server(srv)


# ---- the crash test -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CRASH_CONFIG = """
[http_api]
key = "{api_key}"

[client.token]
hmac_secret_key = "{secret}"

[client]
recovery_max_publication_limit = 100000

[channel.without_namespace]
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "log"
durable = true
retention = "30d"
force_recovery = true
allow_subscribe_for_client = true
allow_history_for_subscriber = true
"""


@contextlib.asynccontextmanager
async def gateway_process(tmp: Path, dsn: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    config = tmp / "sentchat.toml"
    config.write_text(CRASH_CONFIG.format(api_key=API_KEY, secret=SECRET))
    env = {**os.environ, "SENTCHAT_POSTGRES_DSN": dsn, "SENTCHAT_DATA_DIR": str(tmp / "data"),
           "SENTCHAT_LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None, "gateway exited during start"
                assert time.monotonic() < deadline, "gateway did not start"
                await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_sigkill_mid_burst_loses_nothing_acknowledged(tmp_path: Path, empty_dsn: str) -> None:
    port = free_port()
    channels = [f"log:crash-{i}" for i in range(5)]
    acked: dict[str, tuple[str, int]] = {}  # payload id -> (channel, offset)
    url = f"http://127.0.0.1:{port}/api/publish"

    async def publisher(n: int, http: aiohttp.ClientSession) -> None:
        i = 0
        while True:
            i += 1
            pid = f"{n}-{i}-{uuid.uuid4().hex[:6]}"
            channel = channels[(n + i) % len(channels)]
            try:
                async with http.post(url, json={"channel": channel, "data": {"id": pid}},
                                     headers={"X-API-Key": API_KEY}) as resp:
                    body = await resp.json()
            except (TimeoutError, aiohttp.ClientError):
                return  # the gateway is gone; whatever was not answered is not acknowledged
            if "result" in body:
                acked[pid] = (channel, body["result"]["offset"])

    async with gateway_process(tmp_path, empty_dsn, port) as proc:
        # Subscribers (the real SDK) hold every channel during the burst.
        readers: list[tuple[Client, dict[str, SubEvents]]] = []
        for r in range(2):
            client = Client(f"ws://127.0.0.1:{port}/connection/websocket",
                            token=Server.token(f"reader{r}"), max_reconnect_delay=0.5)
            subs = {}
            for ch in channels:
                events = SubEvents()
                client.new_subscription(ch, events)
                subs[ch] = events
            await client.connect()
            for ch in channels:
                await client.get_subscription(ch).subscribe()
                await client.get_subscription(ch).ready(timeout=TIMEOUT)
            readers.append((client, subs))

        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector) as http:
            burst = [asyncio.ensure_future(publisher(n, http)) for n in range(50)]
            await asyncio.sleep(1.5)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await asyncio.wait_for(asyncio.gather(*burst), 30)
    assert len(acked) > 100, "the burst should have been acknowledged in part before the kill"

    conn = await asyncpg.connect(empty_dsn)
    try:
        stored = await conn.fetch(
            "SELECT channel, \"offset\", data->>'id' AS id FROM publications "
            "WHERE channel = ANY($1::text[]) ORDER BY channel, \"offset\"", channels)
    finally:
        await conn.close()
    by_id: dict[str, list[tuple[str, int]]] = {}
    for row in stored:
        by_id.setdefault(row["id"], []).append((row["channel"], row["offset"]))
    for pid, where in acked.items():
        assert by_id.get(pid) == [where], f"acknowledged {pid} stored as {by_id.get(pid)}"
    for ch in channels:
        offsets = [r["offset"] for r in stored if r["channel"] == ch]
        assert offsets == list(range(1, len(offsets) + 1)), f"{ch}: offsets not 1..N"

    # The gateway comes back on the same port; the SDK clients reconnect and recover.
    async with gateway_process(tmp_path, empty_dsn, port):
        for client, subs in readers:
            for ch, events in subs.items():
                top = max((r["offset"] for r in stored if r["channel"] == ch), default=0)

                async def caught_up(events: SubEvents = events, top: int = top) -> bool:
                    resubscribed = any(c.was_recovering for c in events.seen("subscribed"))
                    seen = [c.pub.offset for c in events.seen("publication")]
                    return resubscribed and (top == 0 or (bool(seen) and seen[-1] >= top))

                await eventually(caught_up, timeout=30)
                recovered = [c for c in events.seen("subscribed") if c.was_recovering]
                assert recovered and all(c.recovered for c in recovered)
                seen = [c.pub.offset for c in events.seen("publication")]
                assert seen == list(range(1, top + 1)), f"{ch}: gaps or duplicates"
            await client.disconnect()
