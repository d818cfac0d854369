"""The load suite's one WebSocket client (bench/common.py: WsClient, connect_ws,
connect_many, abort_all) against a real gateway, the session's in-process one."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import orjson

from bench.common import WsClient, abort_all, client_frame, connect_many, connect_ws
from tests.conftest import API_KEY, Server

LIMIT_S = 10.0


class Recorder(WsClient):
    """Connects, subscribes to ``channel``, and keeps every message and how it ended."""

    def __init__(self, port: int, token: str, channel: str, path: str = "/connection/websocket") -> None:
        super().__init__(f"127.0.0.1:{port}", asyncio.get_running_loop().create_future(), client_frame(
            orjson.dumps({"id": 1, "connect": {"token": token}}) + b"\n"
            + orjson.dumps({"id": 2, "subscribe": {"channel": channel}})), path=path)
        self.messages: list[dict[str, Any]] = []
        self.gone: list[str] = []
        self.pushes = asyncio.Queue[dict[str, Any]]()

    def on_text(self, payload: bytes, now: int) -> None:
        for line in payload.split(b"\n"):
            if line == b"{}":
                self.pong()
                continue
            msg = orjson.loads(line)
            self.messages.append(msg)
            if "error" in msg:
                self.end(f"error {msg['error']['code']}")
            elif msg.get("id") == 2:
                self.ready.set_result(None)
            elif "push" in msg:
                self.pushes.put_nowait(msg["push"])

    def on_gone(self, reason: str) -> None:
        self.gone.append(reason)


async def api(server: Server, method: str, params: dict[str, Any]) -> dict[str, Any]:
    def call() -> dict[str, Any]:
        # S310: an http:// URL of the loopback test server, never a file: or custom scheme
        req = urllib.request.Request(f"{server.api_url}/{method}", data=json.dumps(params).encode(),  # noqa: S310
                                     headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=LIMIT_S) as r:  # noqa: S310
            return json.loads(r.read())
    return await asyncio.to_thread(call)


async def test_connects_from_its_source_address_and_receives(server: Server) -> None:
    c = Recorder(server.port, server.token("wsc-1"), "chat:wsc-a")
    assert await connect_ws(c, "127.0.0.1", server.port, "127.0.0.2", LIMIT_S) is None
    assert c.transport is not None and c.transport.get_extra_info("sockname")[0] == "127.0.0.2"
    await api(server, "publish", {"channel": "chat:wsc-a", "data": {"n": 1}})
    push = await asyncio.wait_for(c.pushes.get(), LIMIT_S)
    assert push["channel"] == "chat:wsc-a" and push["pub"]["data"] == {"n": 1}
    await abort_all([c])
    assert c.closing and c.gone == []  # the bench's own abort is not a loss


async def test_a_refused_upgrade_names_the_status(server: Server) -> None:
    c = Recorder(server.port, server.token("wsc-2"), "chat:wsc-a", path="/nowhere")
    why = await connect_ws(c, "127.0.0.1", server.port, None, LIMIT_S)
    assert why is not None and why.startswith("handshake 4"), why


async def test_a_close_before_ready_fails_the_connection_with_its_reason(server: Server) -> None:
    c = Recorder(server.port, "not-a-token", "chat:wsc-a")
    assert await connect_ws(c, "127.0.0.1", server.port, None, LIMIT_S) == "close 3500 invalid token"


async def test_an_error_reply_fails_the_connection_with_its_reason(server: Server) -> None:
    c = Recorder(server.port, server.token("wsc-4"), "locked:wsc")  # clients may not subscribe
    assert await connect_ws(c, "127.0.0.1", server.port, None, LIMIT_S) == "error 103"


async def test_nothing_listening_is_a_tcp_failure() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.get_running_loop()
    c = WsClient(f"127.0.0.1:{port}", loop.create_future())
    why = await connect_ws(c, "127.0.0.1", port, None, LIMIT_S)
    assert why is not None and why.startswith("tcp connect: ConnectionRefusedError"), why


async def test_a_server_disconnect_is_answered_and_reported(server: Server) -> None:
    c = Recorder(server.port, server.token("wsc-3"), "chat:wsc-b")
    assert await connect_ws(c, "127.0.0.1", server.port, None, LIMIT_S) is None
    await api(server, "disconnect", {"user": "wsc-3"})
    deadline = time.monotonic() + LIMIT_S
    while not c.gone and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    [reason] = c.gone
    assert reason.startswith("close 3"), reason  # a Centrifugo disconnect code


async def test_connect_many_paces_and_abort_all_drops_them(server: Server) -> None:
    clients: list[Recorder] = []

    async def one(i: int) -> None:
        c = Recorder(server.port, server.token(f"wsc-many-{i}"), "chat:wsc-c")
        assert await connect_ws(c, "127.0.0.1", server.port, "127.0.0.3", LIMIT_S) is None
        clients.append(c)

    started = time.perf_counter()
    await connect_many(20, one, concurrency=4, rate=100.0)
    # 20 starts at 100/s: the last one no earlier than 0.19 s after the first
    assert time.perf_counter() - started >= 0.18
    assert len(clients) == 20
    await api(server, "publish", {"channel": "chat:wsc-c", "data": {"n": 2}})
    for c in clients:
        assert (await asyncio.wait_for(c.pushes.get(), LIMIT_S))["pub"]["data"] == {"n": 2}
    await abort_all(clients)
    await asyncio.sleep(0.05)
    assert all(c.transport is not None and c.transport.is_closing() for c in clients)
    assert all(c.gone == [] for c in clients)
