"""WebSocket transport rules: size limit, frame type, origin, slow subscribers, shared port.

These use a plain `websockets` client where the SDKs cannot produce the situation (an
oversized or wrongly typed frame, a subscriber that stops reading).
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Server, standard_settings


async def _connect(ws: websockets.ClientConnection, token: str) -> dict:
    await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_oversized_message_closes_1009(server: Server) -> None:
    async with websockets.connect(server.ws_url, max_size=None) as ws:
        await _connect(ws, server.token("big"))
        await ws.send(json.dumps({"id": 2, "publish": {"channel": "x", "data": "a" * 70000}}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_binary_frame_on_json_connection_closes_3506(server: Server) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await _connect(ws, server.token("bin"))
        await ws.send(b"\x00")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (3506, "inappropriate protocol")


async def test_bad_json_closes_3501_with_plain_reason(server: Server) -> None:
    async with websockets.connect(server.ws_url) as ws:
        await ws.send("{not json")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (3501, "bad request")


async def test_protobuf_subprotocol_is_echoed(server: Server) -> None:
    async with websockets.connect(server.ws_url, subprotocols=["centrifuge-protobuf"]) as ws:
        assert ws.subprotocol == "centrifuge-protobuf"


async def test_foreign_origin_is_refused_and_listed_origin_accepted(make_server) -> None:
    settings = standard_settings(allowed_origins=["https://chat.example.com"])
    srv = await make_server(settings)
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(srv.ws_url, origin="https://evil.example.net"):
            pass
    assert refused.value.response.status_code == 403
    async with websockets.connect(srv.ws_url, origin="https://chat.example.com") as ws:
        reply = await _connect(ws, srv.token("origin-ok"))
        assert reply["connect"]["client"]


async def test_slow_subscriber_is_closed_3008(make_server) -> None:
    """A subscriber that stops reading is cut off, and memory stays bounded."""
    settings = standard_settings(write_buffer_limit=256 * 1024)
    srv = await make_server(settings)
    reader, writer = await _raw_websocket(srv)
    token = srv.token("slow")
    _send_text(writer, json.dumps({"id": 1, "connect": {"token": token}}) + "\n"
               + json.dumps({"id": 2, "subscribe": {"channel": "chat:slow"}}))
    await writer.drain()
    await asyncio.wait_for(_read_until(reader, b'"subscribe"'), 5)
    client_id = next(iter(c for c, conn in srv.node.connections.items() if conn.session.user == "slow"))
    conn = srv.node.connections[client_id]
    payload = json.dumps({"blob": "x" * 60000}).encode()
    # We never read again; the kernel buffers fill, then the gateway's buffer passes its limit.
    for _ in range(2000):
        await srv.node.publish("chat:slow", payload)
        if conn.closed:
            break
        await asyncio.sleep(0)
    assert conn.closed
    assert client_id not in srv.node.connections
    assert srv.node.hub.num_subscribers("chat:slow") == 0
    writer.transport.abort()


async def test_plain_http_shares_the_port(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    assert first.startswith(b"HTTP/1.1 200")
    second = await asyncio.wait_for(reader.readuntil(b"Not Found"), 5)
    assert b"404" in second
    writer.close()


async def _raw_websocket(srv: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


def _send_text(writer: asyncio.StreamWriter, text: str) -> None:
    data = text.encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    n = len(data)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    else:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    writer.write(header + mask + masked)


async def _read_until(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        chunk = await reader.read(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf
