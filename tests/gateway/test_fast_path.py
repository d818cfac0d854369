"""The connection's own frame parsing and the synchronous command path.

Data frames are parsed by the connection until the first frame that needs websockets
(control frame, fragment, oversized, ...); a durable client publish waits for its group
commit without a task, and the commands behind it follow once it is answered. A raw socket
client sends frames split and merged at will; replies are checked for order and content.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from tests.conftest import Server, start_server, stop_server
from tests.gateway.test_durable import durable_settings, rows
from tests.sdk import uniq

TIMEOUT = 10.0


def masked(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame (RFC 6455 §5.2), masked as clients must."""
    key = os.urandom(4)
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


class RawClient:
    """A WebSocket client on a plain TCP stream: it writes whatever bytes a test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, srv: Server) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: localhost\r\n"
                     b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
                     + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert b" 101 " in head.split(b"\r\n", 1)[0] + b" "
        return cls(reader, writer)

    async def send(self, data: bytes, *, piecewise: bool = False) -> None:
        if piecewise:
            for i in range(len(data)):
                self.writer.write(data[i:i + 1])
                await self.writer.drain()
                await asyncio.sleep(0)
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT)

    async def messages(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` protocol messages (text frames may carry several lines)."""
        out: list[dict[str, Any]] = []
        while len(out) < count:
            op, payload = await self.frame()
            assert op == 0x1, (op, payload)
            out.extend(json.loads(line) for line in payload.split(b"\n"))
        return out

    def close(self) -> None:
        self.writer.close()


def command(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.fixture
async def durable_srv(empty_dsn: str) -> AsyncIterator[Server]:
    settings = durable_settings(empty_dsn)
    settings["channel"]["namespaces"].append(
        {"name": "open", "durable": True, "allow_publish_for_client": True})
    srv = await start_server(settings)
    yield srv
    await stop_server(srv)


async def test_frames_split_byte_by_byte_and_merged(durable_srv: Server, empty_dsn: str) -> None:
    client = await RawClient.open(durable_srv)
    try:
        channel = uniq("open:split")
        connect = masked(command(id=1, connect={"token": durable_srv.token("split")}))
        await client.send(connect, piecewise=True)
        assert "connect" in (await client.messages(1))[0]
        # One publish byte by byte, then three merged into one write.
        await client.send(masked(command(id=2, publish={"channel": channel, "data": {"n": 0}})),
                          piecewise=True)
        await client.send(b"".join(masked(command(id=3 + i, publish={"channel": channel, "data": {"n": i + 1}}))
                                   for i in range(3)))
        replies = await client.messages(4)
        assert [r["id"] for r in replies] == [2, 3, 4, 5]
        assert all("publish" in r and "error" not in r for r in replies)
        assert [r["data"] for r in await rows(empty_dsn, channel)] == [
            json.dumps({"n": i}) for i in range(4)]
    finally:
        client.close()


async def test_control_frame_hands_parsing_to_websockets(server: Server) -> None:
    client = await RawClient.open(server)
    try:
        await client.send(masked(command(id=1, connect={"token": server.token("ctl")})))
        assert "connect" in (await client.messages(1))[0]
        # A data frame, a ping, a data frame: the pong comes back and both commands run,
        # and data frames keep working after websockets took over.
        await client.send(masked(command(id=2, rpc={"method": "whoami"}))
                          + masked(b"hi", 0x9)
                          + masked(command(id=3, rpc={"method": "whoami"})))
        seen: list[tuple[int, bytes]] = [await client.frame() for _ in range(3)]
        assert (0xA, b"hi") in seen
        ids = [json.loads(p)["id"] for op, p in seen if op == 0x1]
        assert ids == [2, 3]
        await client.send(masked(command(id=4, rpc={"method": "whoami"})))
        assert (await client.messages(1))[0]["id"] == 4
    finally:
        client.close()


async def test_invalid_utf8_text_closes_3501(server: Server) -> None:
    # As through websockets' parser, which does not check UTF-8: the decoder refuses it.
    client = await RawClient.open(server)
    try:
        await client.send(masked(b'{"id":1,"connect":{"token":"\xff"}}'))
        op, payload = await client.frame()
        assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 3501
    finally:
        client.close()


async def test_pipelined_durable_commands_keep_their_order(durable_srv: Server) -> None:
    channel = uniq("log:pipe")
    async with websockets.connect(durable_srv.ws_url) as ws:
        await ws.send(command(id=1, connect={"token": durable_srv.token("pipe")}).decode())
        json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        # Subscribe, two publishes and a history read in one frame: each publish is
        # pushed (fan-out after commit) before it is answered, and the history read runs
        # only after both committed.
        await ws.send("\n".join([
            command(id=2, subscribe={"channel": channel}).decode(),
            command(id=3, publish={"channel": channel, "data": {"n": 1}}).decode(),
            command(id=4, publish={"channel": channel, "data": {"n": 2}}).decode(),
            command(id=5, history={"channel": channel, "limit": -1}).decode(),
        ]))
        seen: list[dict[str, Any]] = []
        while len(seen) < 6:
            frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
            seen.extend(json.loads(line) for line in frame.split("\n"))
        order = [("push", m["push"]["pub"]["offset"]) if "push" in m else ("reply", m["id"])
                 for m in seen]
        assert order == [("reply", 2), ("push", 1), ("reply", 3), ("push", 2), ("reply", 4),
                         ("reply", 5)]
        history = seen[-1]["history"]
        assert [p["data"] for p in history["publications"]] == [{"n": 1}, {"n": 2}]


async def test_client_publish_into_full_queue_gets_111(empty_dsn: str) -> None:
    settings = durable_settings(empty_dsn)
    settings["channel"]["namespaces"].append(
        {"name": "open", "durable": True, "allow_publish_for_client": True})
    settings["storage"]["queue_limit"] = 1
    srv = await start_server(settings)
    channel = uniq("open:full")
    clients = [await RawClient.open(srv) for _ in range(30)]
    try:
        for i, client in enumerate(clients):
            await client.send(masked(command(id=1, connect={"token": srv.token(f"full-{i}")})))
            await client.messages(1)
        # The warm-up publish loads the channel's stream, so the rest take the fast path.
        await clients[0].send(masked(command(id=2, publish={"channel": channel, "data": {"i": -1}})))
        assert "error" not in (await clients[0].messages(1))[0]
        frame = masked(command(id=3, publish={"channel": channel, "data": {"i": 1}}))
        await asyncio.gather(*(c.send(frame) for c in clients))
        replies = [(await c.messages(1))[0] for c in clients]
        errors = [r["error"] for r in replies if "error" in r]
        assert errors and len(errors) < len(replies)
        assert {(e["code"], e.get("temporary")) for e in errors} == {(111, True)}
        # Exactly the acknowledged ones are stored.
        assert len(await rows(empty_dsn, channel)) == 1 + len(replies) - len(errors)
    finally:
        for client in clients:
            client.close()
        await stop_server(srv)
