"""The gateway's listening socket: one asyncio.Protocol per TCP connection.

Plain HTTP (server API, health, metrics) and the WebSocket endpoint share the port. A
WebSocket is upgraded with websockets' sans-I/O ServerProtocol and then handed to a
``Connection``; no task runs for an idle socket.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from centrifugo_bridge import server_api
from gateway import LOG_ROOT, cluster_view
from gateway.api import ServerApi, authorized
from gateway.connection import Connection
from gateway.http import Answer, HttpError, RequestHead, parse_head, response
from gateway.metrics import CONTENT_TYPE_LATEST
from gateway.node import Node

log = logging.getLogger(f"{LOG_ROOT}.server")

WEBSOCKET_PATH = "/connection/websocket"
API_PREFIX = "/api/"
SUBPROTOCOLS = [Subprotocol("centrifuge-protobuf"), Subprotocol("centrifuge-json")]


def _select_subprotocol(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    # Echo what the client asked for (browsers fail the handshake otherwise); no subprotocol
    # means JSON.
    for proto in SUBPROTOCOLS:
        if proto in offered:
            return proto
    return None


def origin_allowed(origin: str | None, host: str, allowed: list[str]) -> bool:
    """Centrifugo's origin check: no Origin header, a listed pattern, or the same host."""
    if origin is None:
        return True
    origin = origin.lower()
    for pattern in allowed:
        if pattern == "*" or fnmatch.fnmatchcase(origin, pattern.lower()):
            return True
    return urlsplit(origin).netloc == host.lower()


class GatewayProtocol(asyncio.Protocol):
    """HTTP until a WebSocket upgrade, then a thin shim in front of a Connection."""

    __slots__ = ("node", "api", "transport", "buf", "conn", "busy", "closing", "draining",
                 "timer")

    def __init__(self, node: Node, api: ServerApi) -> None:
        self.node = node
        self.api = api
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.conn: Connection | None = None
        self.busy = False
        self.closing = False
        # Bytes of a refused body still to read and drop before closing (see _refuse_body).
        self.draining = 0
        # http.read_timeout while a request is arriving, http.idle_timeout between requests;
        # None once the socket is a WebSocket (its session has its own deadlines).
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream socket's transport (asyncio types the argument as the base class).
        self.transport = transport  # type: ignore[assignment]
        self._arm(self.node.settings.http.read_timeout)

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        """A request that did not arrive whole in time, or an idle keep-alive: close (a
        request in progress first hears 408)."""
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or self.conn is not None or self.busy:
            return
        if self.buf:
            self._send(*self._error(_target_of(self.buf), 408, "Request Timeout: the request "
                                    "did not arrive whole in time"), keep_alive=False)
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.data_received(data)
            return
        if self.draining:
            self.draining -= min(self.draining, len(data))
            if not self.draining and self.transport is not None:
                self.transport.close()
            return
        if not self.buf and not self.busy:
            # The first byte of a request: it has read_timeout to arrive whole.
            self._arm(self.node.settings.http.read_timeout)
        self.buf += data
        if not self.busy:
            self._next_request()
        elif len(self.buf) > self._max_buffered() and self.transport is not None:
            # A client pipelining while we answer: stop reading until we catch up.
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            self.conn.eof_received()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.conn is not None:
            self.conn.connection_lost()
            self.conn = None

    # ---- HTTP -------------------------------------------------------------------------

    def _next_request(self) -> None:
        settings = self.node.settings.http
        try:
            head = parse_head(self.buf, settings.max_header_size)
        except HttpError as exc:
            # No parsed head: the request line (if any) still says which API it was for.
            path = _target_of(self.buf)
            self._send(*self._error(path, exc.status, exc.message), keep_alive=False)
            return
        if head is None:
            return
        if head.path == WEBSOCKET_PATH and head.is_upgrade:
            self._disarm()
            del self.buf[: len(head.raw)]
            self._upgrade(head)
            return
        if head.content_length > settings.max_body_size:
            self._refuse_body(head, self._error(head.path, 413, "Payload Too Large: the body is "
                                                f"over {settings.max_body_size} bytes"))
            return
        total = len(head.raw) + head.content_length
        if len(self.buf) < total:
            return
        body = bytes(self.buf[len(head.raw): total])
        del self.buf[:total]
        self._disarm()  # the request is whole; the handler's time is not the client's
        self.busy = True
        asyncio.get_running_loop().create_task(self._handle(head, body))

    async def _handle(self, head: RequestHead, body: bytes) -> None:
        keep_alive = head.keep_alive
        # Handlers get the socket's peer address (per-address limits), never a header's.
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        head.peer = str(peer[0]) if peer else "?"
        try:
            answer = await self._route(head, body)
        except Exception:
            log.exception("HTTP handler failed for %s %s", head.method, head.path)
            answer = 500, b"Internal Server Error", "text/plain; charset=utf-8"
        status, payload, ctype = answer[0], answer[1], answer[2]
        extra = answer[3] if len(answer) == 4 else None
        # A HEAD response carries the GET headers (Content-Length included) but no body.
        self._send(status, payload, ctype, keep_alive=keep_alive, head_only=head.method == "HEAD",
                   extra=extra)
        self.busy = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            http = self.node.settings.http
            # Pipelined bytes already here are a request arriving; otherwise the socket idles.
            self._arm(http.read_timeout if self.buf else http.idle_timeout)
        if keep_alive and self.buf and not self.closing:
            self._next_request()

    def _max_buffered(self) -> int:
        http = self.node.settings.http
        return http.max_header_size + http.max_body_size

    async def _route(self, head: RequestHead, body: bytes) -> Answer:
        text = "text/plain; charset=utf-8"
        path = head.path
        if path.startswith(API_PREFIX):
            if path[len(API_PREFIX):] not in server_api.REQUESTS:
                # Not a route at all: Centrifugo's mux answers 404 before method and key checks.
                return self._error(path, 404, f"Not Found: no server API method {path[len(API_PREFIX):]!r}")
            if head.method != "POST":
                return (*self._error(path, 405, "Method Not Allowed: the server API takes POST"),
                        {"Allow": "POST"})
            api = self.node.settings.http_api
            if not authorized(head.headers, head.query, api.key, api.insecure):
                return self._error(path, 401, "Unauthorized: a valid API key is required "
                                   "(X-API-Key or Authorization: apikey)")
            status, payload = await self.api.call(path[len(API_PREFIX):], body)
            return status, payload, "application/json" if status == 200 else text
        handler = self.node.http_handler(path)
        if handler is not None:
            return await handler(head, body)
        if path == "/health":
            if head.method not in ("GET", "HEAD"):
                return 405, b"Method Not Allowed", text, {"Allow": "GET, HEAD"}
            if cluster_view.enabled(head.query):  # --workers N: all workers' health
                status, payload = await cluster_view.health(self.node)
                return status, payload, "application/json"
            return 200, orjson.dumps({"status": "ok", "node": self.node.name}), "application/json"
        if path == "/metrics":
            if head.method not in ("GET", "HEAD"):
                return 405, b"Method Not Allowed", text, {"Allow": "GET, HEAD"}
            if cluster_view.enabled(head.query):  # --workers N: totals over the workers
                return 200, await cluster_view.metrics(self.node), CONTENT_TYPE_LATEST
            self.node.refresh_metrics()
            return 200, self.node.metrics.render(), CONTENT_TYPE_LATEST
        if path == WEBSOCKET_PATH:
            return 400, b"WebSocket upgrade expected", text
        return 404, b"Not Found", text

    def _refuse_body(self, head: RequestHead, answer: tuple[int, bytes, str]) -> None:
        """Answer before the body arrives, then read and drop it (up to a bound and a time
        limit) before closing: closing with unread data makes the kernel reset the
        connection, and a client still sending sees the reset instead of the answer."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response(answer[0], answer[1], answer[2], False, None))
        self.closing = True
        pending = head.content_length - (len(self.buf) - len(head.raw))
        self.buf.clear()
        self.draining = min(max(pending, 0), DRAIN_LIMIT)
        if not self.draining:
            transport.close()
            return
        asyncio.get_running_loop().call_later(DRAIN_SECONDS, transport.close)

    def _error(self, path: str, status: int, message: str) -> tuple[int, bytes, str]:
        """An error answer in the shape of the API the path belongs to: the server API's
        ``{"error": {"code": <int>, "message"}}``, an extension's ``{"error": {"code":
        <slug>, "message"}}``, plain text elsewhere (health, metrics, the upgrade path)."""
        if path.startswith(API_PREFIX):
            return status, orjson.dumps({"error": {"code": status, "message": message}}), JSON_TYPE
        if path and self.node.http_handler(path) is not None and not self.node.is_fallback(path):
            slug = _SLUGS.get(status, "error")
            return status, orjson.dumps({"error": {"code": slug, "message": message}}), JSON_TYPE
        return status, message.encode(), "text/plain; charset=utf-8"

    def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
              keep_alive: bool = True, head_only: bool = False,
              extra: dict[str, str] | None = None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = response(status, body, ctype, keep_alive, extra)
        transport.write(data[: len(data) - len(body)] if head_only else data)
        if not keep_alive:
            self.closing = True
            transport.close()

    # ---- WebSocket --------------------------------------------------------------------

    def _upgrade(self, head: RequestHead) -> None:
        node = self.node
        client = node.settings.client
        ws = ServerProtocol(subprotocols=SUBPROTOCOLS, select_subprotocol=_select_subprotocol,
                            max_size=client.message_size_limit)
        ws.receive_data(head.raw)
        events = ws.events_received()
        transport = self.transport
        assert transport is not None  # noqa: S101 - set in connection_made
        if not events:
            self._send(400, b"Bad WebSocket handshake", keep_alive=False)
            return
        request = events[0]
        origin = head.headers.get("origin")
        if not origin_allowed(origin, head.headers.get("host", ""), client.allowed_origins):
            resp = ws.reject(403, "Request origin is not allowed\n")
        else:
            # events_received() types every event; the first one of a handshake is the Request.
            resp = ws.accept(request)  # type: ignore[arg-type]
        ws.send_response(resp)
        for chunk in ws.data_to_send():
            if chunk:
                transport.write(chunk)
        if resp.status_code != 101:
            self.closing = True
            transport.close()
            return
        fmt = head.query.get("format") or head.query.get("cf_protocol") or ""
        protobuf = ws.subprotocol == "centrifuge-protobuf" or fmt == "protobuf"
        session = node.new_session("protobuf" if protobuf else "json")
        conn = Connection(node, transport, ws, session)
        self.conn = conn
        node.attach(conn)
        if self.buf:
            rest = bytes(self.buf)
            self.buf.clear()
            conn.data_received(rest)


async def serve(node: Node, host: str, port: int, *, reuse_port: bool = False,
                backlog: int = 4096, sock: socket.socket | None = None) -> asyncio.Server:
    """Start listening; the node must already be started."""
    api = ServerApi(node)
    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(lambda: GatewayProtocol(node, api), sock=sock,
                                        backlog=backlog)
    return await loop.create_server(lambda: GatewayProtocol(node, api), host, port,
                                    reuse_port=reuse_port or None, backlog=backlog)


JSON_TYPE = "application/json"
# A refused body is read and dropped up to this many bytes / seconds before the connection
# closes (so the client reads the 413 instead of a reset); past them it is cut.
DRAIN_LIMIT = 64 * 1024 * 1024
DRAIN_SECONDS = 5.0
# Stable error codes of the HTTP layer's own answers, in the extensions' (snake_case) style.
_SLUGS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          408: "request_timeout", 411: "length_required", 413: "payload_too_large",
          431: "headers_too_large",
          505: "http_version_not_supported"}


def _target_of(buf: bytearray | bytes) -> str:
    """The path of a request line at the start of ``buf`` (empty when there is none)."""
    line = bytes(buf[:2048]).split(b"\r\n", 1)[0].split(b" ")
    if len(line) >= 2:
        try:
            return line[1].decode("ascii").partition("?")[0]
        except UnicodeDecodeError:
            return ""
    return ""
