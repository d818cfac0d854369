"""The sans-I/O HTTP/1.1 request-head parser of the gateway's single port."""

from __future__ import annotations

import pytest

from gateway.http import HttpError, parse_head, response

MAX = 16384


def head(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def status_of(buf: bytes, max_size: int = MAX) -> int:
    with pytest.raises(HttpError) as info:
        parse_head(buf, max_size)
    return info.value.status


def test_complete_head() -> None:
    buf = head("POST /api/publish?api_key=k&x=1&x=2 HTTP/1.1", "Host: example",
               "Content-Type: application/json", "Content-Length: 2", "X-API-Key:  secret  ",
               body=b"{}")
    req = parse_head(buf, MAX)
    assert req is not None
    assert (req.method, req.path, req.version) == ("POST", "/api/publish", "HTTP/1.1")
    assert req.query == {"api_key": "k", "x": "2"}
    assert req.headers["x-api-key"] == "secret"
    assert req.headers["content-type"] == "application/json"
    assert req.content_length == 2
    # The head ends at the blank line; the body is not part of it.
    assert req.raw == buf[:-2] and buf[len(req.raw):] == b"{}"


def test_incomplete_head_returns_none() -> None:
    full = head("GET / HTTP/1.1", "Host: x")
    for cut in range(len(full)):
        assert parse_head(full[:cut], MAX) is None, cut
    assert parse_head(bytearray(full), MAX) is not None


def test_pipelined_requests_parse_one_head() -> None:
    buf = head("GET /a HTTP/1.1", "Host: x") + head("GET /b HTTP/1.1", "Host: x")
    req = parse_head(buf, MAX)
    assert req is not None and req.path == "/a"
    rest = buf[len(req.raw):]
    nxt = parse_head(rest, MAX)
    assert nxt is not None and nxt.path == "/b"


def test_oversized_head_is_431() -> None:
    # Incomplete and already too long.
    assert status_of(b"GET / HTTP/1.1\r\nX: " + b"a" * 100, max_size=64) == 431
    # Complete but too long.
    assert status_of(head("GET / HTTP/1.1", "X: " + "a" * 100), max_size=64) == 431
    # Exactly at the limit is fine.
    exact = head("GET / HTTP/1.1", "X: a")
    assert parse_head(exact, len(exact)) is not None
    assert status_of(exact, len(exact) - 1) == 431


def test_incomplete_under_limit_waits() -> None:
    assert parse_head(b"GET / HTTP/1.1\r\nX: " + b"a" * 10, max_size=64) is None


@pytest.mark.parametrize("value", ["chunked", "gzip, chunked", "identity"])
def test_transfer_encoding_is_411(value: str) -> None:
    assert status_of(head("POST /api HTTP/1.1", f"Transfer-Encoding: {value}")) == 411


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1.5", "", "5, 6", "0x10", " ", "²", "١٢"])
def test_bad_content_length_is_400(value: str) -> None:
    buf = ("POST /api HTTP/1.1\r\nContent-Length: " + value + "\r\n\r\n").encode("utf-8")
    assert status_of(buf) == 400


@pytest.mark.parametrize("raw", [b"\xb2", b"\xb9\xb3", b"1\xbd"])
def test_content_length_with_latin1_digit_lookalikes_is_400(raw: bytes) -> None:
    # "²" (0xB2 in latin-1) passes str.isdigit() but is not a length.
    assert status_of(b"POST /api HTTP/1.1\r\nContent-Length: " + raw + b"\r\n\r\n") == 400


def test_duplicate_content_length() -> None:
    # Duplicates fold into "5, 5", which is not a length: refused rather than guessed.
    assert status_of(head("POST / HTTP/1.1", "Content-Length: 5", "Content-Length: 5")) == 400


def test_content_length_values() -> None:
    req = parse_head(head("POST / HTTP/1.1", "Content-Length: 0"), MAX)
    assert req is not None and req.content_length == 0
    req = parse_head(head("POST / HTTP/1.1", "content-length:  123  "), MAX)
    assert req is not None and req.content_length == 123
    req = parse_head(head("GET / HTTP/1.1"), MAX)
    assert req is not None and req.content_length == 0


def test_duplicate_headers_fold_with_comma() -> None:
    req = parse_head(head("GET / HTTP/1.1", "Accept: a", "X-Thing: 1", "accept: b", "ACCEPT: c"), MAX)
    assert req is not None
    assert req.headers["accept"] == "a, b, c"
    assert req.headers["x-thing"] == "1"


def test_header_names_are_case_insensitive_and_values_latin1() -> None:
    buf = b"GET / HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n"
    req = parse_head(buf, MAX)
    assert req is not None and req.headers["x-name"] == "café"


def test_empty_header_value() -> None:
    req = parse_head(head("GET / HTTP/1.1", "X-Empty:"), MAX)
    assert req is not None and req.headers["x-empty"] == ""


@pytest.mark.parametrize("buf", [
    head("GET /  HTTP/1.1"),                 # extra space
    head("GET / HTTP/1.1 extra"),
    head("GET /"),
    head(""),
    head("G(T / HTTP/1.1"),                  # method not a token
    head(" / HTTP/1.1"),
    head("GET / HTTP/1.1", "No colon here"),
    head("GET / HTTP/1.1", ": empty name"),
    head("GET / HTTP/1.1", "Bad Name: x"),   # space in a header name
    head("GET / HTTP/1.1", "X-A: 1", " folded continuation"),  # obs-fold is refused
    b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",     # non-ASCII target
])
def test_malformed_heads_are_400(buf: bytes) -> None:
    assert status_of(buf) == 400


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "http/1.1"])
def test_unsupported_versions_are_505(version: str) -> None:
    assert status_of(head(f"GET / {version}")) == 505


@pytest.mark.parametrize(("version", "connection", "keep"), [
    ("HTTP/1.1", None, True),
    ("HTTP/1.1", "keep-alive", True),
    ("HTTP/1.1", "close", False),
    ("HTTP/1.1", "Close", False),
    ("HTTP/1.1", "Upgrade, close", False),
    ("HTTP/1.1", "Upgrade", True),
    ("HTTP/1.0", None, False),
    ("HTTP/1.0", "keep-alive", True),
    ("HTTP/1.0", "Keep-Alive", True),
    ("HTTP/1.0", "close", False),
])
def test_keep_alive_rules(version: str, connection: str | None, keep: bool) -> None:
    lines = [f"GET / {version}", "Host: x"]
    if connection is not None:
        lines.append(f"Connection: {connection}")
    req = parse_head(head(*lines), MAX)
    assert req is not None and req.keep_alive is keep


def test_websocket_upgrade_detection() -> None:
    req = parse_head(head("GET /connection/websocket HTTP/1.1", "Upgrade: WebSocket",
                          "Connection: Upgrade"), MAX)
    assert req is not None and req.is_upgrade
    req = parse_head(head("GET / HTTP/1.1", "Upgrade: h2c"), MAX)
    assert req is not None and not req.is_upgrade


def test_query_decoding() -> None:
    req = parse_head(head("GET /connection/websocket?format=protobuf&cf_protocol=&x=a%20b HTTP/1.1"), MAX)
    assert req is not None and req.path == "/connection/websocket"
    assert req.query == {"format": "protobuf", "x": "a b"}


def test_response() -> None:
    out = response(200, b'{"result":{}}', "application/json")
    head_part, body = out.split(b"\r\n\r\n", 1)
    lines = head_part.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Type: application/json" in lines
    assert b"Content-Length: 13" in lines
    assert b"Connection: keep-alive" in lines
    assert body == b'{"result":{}}'
    out = response(401, b"", keep_alive=False, extra={"WWW-Authenticate": "apikey"})
    assert out.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"\r\nConnection: close\r\n" in out and b"\r\nWWW-Authenticate: apikey\r\n" in out
    assert out.endswith(b"Content-Length: 0\r\nConnection: close\r\nWWW-Authenticate: apikey\r\n\r\n")
    assert response(418, b"").startswith(b"HTTP/1.1 418 Unknown\r\n")


def test_invalid_percent_encoding_in_the_query_is_400() -> None:
    with pytest.raises(HttpError) as err:
        parse_head(b"GET /v1/search/messages?q=%FF HTTP/1.1\r\nHost: x\r\n\r\n", 8192)
    assert err.value.status == 400 and "percent-encoding" in str(err.value)
    # A valid escape still decodes.
    head = parse_head(b"GET /v1/x?q=caf%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", 8192)
    assert head is not None and head.query == {"q": "café"}
