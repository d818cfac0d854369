"""HTTP-layer errors answer in the shape of the API the path belongs to — the server API's
`{"error": {"code": <int>, "message"}}`, an extension's `{"error": {"code": <slug>, ...}}` —
and a too-large body sent in one go gets its 413, not a connection reset."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from centrifuge import Client, ClientState

from tests.conftest import API_KEY, SECRET, Server


async def raw(srv: Server, request: bytes, body_chunks: int = 0, chunk: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(request)
        for _ in range(body_chunks):
            writer.write(chunk)
            await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def req(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    hdrs = "".join(f"{h}\r\n" for h in headers)
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{hdrs}Content-Length: {len(body)}\r\n\r\n"
            .encode() + body)


async def test_server_api_errors_are_json(server: Server) -> None:
    status, headers, body = await raw(server, req("POST", "/api/publish", "Connection: close", body=b"{}"))
    assert status == 401 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == 401
    status, headers, body = await raw(server, req("POST", "/api/nothing", "Connection: close"))
    assert status == 404 and json.loads(body)["error"]["code"] == 404
    status, headers, body = await raw(server, req("GET", "/api/publish", "Connection: close"))
    assert status == 405 and headers["allow"] == "POST" and json.loads(body)["error"]["code"] == 405
    # The key still works.
    status, _, body = await raw(server, req("POST", "/api/info", f"X-API-Key: {API_KEY}",
                                            "Connection: close", body=b"{}"))
    assert status == 200 and "result" in json.loads(body)


async def test_oversized_body_is_a_json_413_not_a_reset(server: Server) -> None:
    limit = server.node.settings.http.max_body_size
    size = limit + 1024 * 1024
    for path, code in (("/api/publish", 413), ("/v1/channels", "payload_too_large")):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                f"Content-Length: {size}\r\n\r\n").encode()
        # The whole body is sent at once, as curl does: the answer must still be read.
        chunk = b"x" * (64 * 1024)
        status, headers, body = await raw(server, head, body_chunks=size // len(chunk) + 1, chunk=chunk)
        assert status == 413, (path, status)
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == code


async def test_oversized_headers_on_an_api_path_are_json(server: Server) -> None:
    big = "X-Filler: " + "a" * (server.node.settings.http.max_header_size + 10)
    status, headers, body = await raw(server, req("GET", "/v1/channels", big))
    assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large"
    status, headers, body = await raw(server, req("POST", "/api/publish", big))
    assert status == 431 and json.loads(body)["error"]["code"] == 431
    # Outside the APIs: plain text as before.
    status, headers, body = await raw(server, req("GET", "/health", big))
    assert status == 431 and headers["content-type"].startswith("text/plain")


async def test_slow_head_idle_keepalive_and_slow_body_are_closed(
        make_server: Any) -> None:
    """http.read_timeout bounds a request arriving byte by byte (head or body); an idle
    keep-alive socket closes after http.idle_timeout; a WebSocket is not affected."""
    srv = await make_server({"http_api": {"key": API_KEY},
                             "http": {"read_timeout": "0.5s", "idle_timeout": "0.5s"}})
    loop = asyncio.get_running_loop()

    async def closed_after(writer_actions: list[bytes]) -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        started = loop.time()
        try:
            for part in writer_actions:
                writer.write(part)
                await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        finally:
            writer.close()
        return loop.time() - started, data

    # A head that never completes: 408, then closed.
    _, data = await closed_after([b"GET /v1/channels HTTP/1.1\r\nHost: x\r\n"])
    assert data.startswith(b"HTTP/1.1 408") and b"request_timeout" in data
    # A body shorter than its Content-Length: 408 in the server API's shape.
    _, data = await closed_after([b"POST /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}"])
    assert data.startswith(b"HTTP/1.1 408") and b'"code":408' in data
    # A keep-alive socket: one answer, then closed when idle (no second request).
    _, data = await closed_after([f"POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                                  f"Content-Length: 2\r\n\r\n{{}}".encode()])
    assert data.startswith(b"HTTP/1.1 200") and data.count(b"HTTP/1.1") == 1


async def test_websocket_outlives_the_http_timeouts(make_server: Any) -> None:
    srv = await make_server({"http_api": {"key": API_KEY}, "client": {"token": {"hmac_secret_key": SECRET}},
                             "http": {"read_timeout": "0.3s", "idle_timeout": "0.3s"}})
    client = Client(srv.ws_url, token=srv.token("alice"))
    try:
        await client.connect()
        await asyncio.sleep(1.0)  # past both timeouts
        assert client.state == ClientState.CONNECTED
        assert len(srv.node.connections) == 1
    finally:
        await client.disconnect()
