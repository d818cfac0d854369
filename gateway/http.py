"""A small, strict HTTP/1.1 request-head parser (sans-I/O) for the gateway's one port.

Only what the gateway serves: request line, headers, Content-Length bodies. Chunked
request bodies are refused with 411; oversized heads with 431; oversized bodies with 413.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import msgspec

__all__ = ["HttpError", "RequestHead", "parse_head", "response"]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead(msgspec.Struct):
    method: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]
    raw: bytes
    content_length: int
    # The client's address as the server's socket saw it (set by the server, never from a
    # header, so it cannot be forged by the client): per-address limits key on it.
    peer: str = ""

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    @property
    def is_upgrade(self) -> bool:
        return "websocket" in self.headers.get("upgrade", "").lower()


_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_head(buf: bytes | bytearray, max_size: int) -> RequestHead | None:
    """Parse the request head at the start of ``buf``; None when it is not complete yet."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > max_size:
            raise HttpError(431, "Request Header Fields Too Large")
        return None
    if end + 4 > max_size:
        raise HttpError(431, "Request Header Fields Too Large")
    raw = bytes(buf[: end + 4])
    lines = raw[:end].split(b"\r\n")
    try:
        method_b, target_b, version_b = lines[0].split(b" ")
    except ValueError:
        raise HttpError(400, "Malformed request line") from None
    if not method_b or not set(method_b) <= _TOKEN_CHARS:
        raise HttpError(400, "Malformed method")
    version = version_b.decode("ascii", "replace")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, "HTTP Version Not Supported")
    try:
        target = target_b.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "Malformed request target") from None
    path, _, qs = target.partition("?")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise HttpError(400, "Malformed header")
        key = name.decode("ascii").lower()
        val = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    if "transfer-encoding" in headers:
        raise HttpError(411, "Length Required: chunked request bodies are not accepted")
    length = 0
    if "content-length" in headers:
        cl = headers["content-length"]
        # isascii: latin-1 "²" / "³" / "¹" pass isdigit() but int() refuses them.
        if not (cl.isascii() and cl.isdigit()):
            raise HttpError(400, "Malformed Content-Length")
        length = int(cl)
    try:
        # Strict: an invalid escape (%FF) is refused, not silently turned into U+FFFD.
        query = dict(parse_qsl(qs, errors="strict"))
    except UnicodeDecodeError:
        raise HttpError(400, "Malformed query string: invalid percent-encoding") from None
    return RequestHead(method_b.decode("ascii"), path, query, version, headers, raw, length)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
            413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}


Answer = tuple[int, bytes, str] | tuple[int, bytes, str, dict[str, str]]
"""A handler's answer: status, body, content type, and optionally extra headers (``Allow``
on a 405)."""


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
             keep_alive: bool = True, extra: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response."""
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
            "Connection: keep-alive" if keep_alive else "Connection: close"]
    for k, v in (extra or {}).items():
        head.append(f"{k}: {v}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
