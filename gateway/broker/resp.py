"""RESP2, the Redis wire protocol, without I/O: parse replies, encode commands.

The broker speaks it directly instead of through a client library: the pub/sub connections
parse and deliver messages synchronously, in arrival order, with no task per message.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProtocolError", "RespError", "encode_command", "parse"]


class RespError(Exception):
    """An error reply (``-ERR ...``) from the server."""


class ProtocolError(Exception):
    """Bytes that are not RESP: the connection is dropped and re-established."""


def parse(buf: bytearray, pos: int) -> tuple[Any, int] | None:
    """One RESP2 value at ``pos``: (value, next position), or None when incomplete.
    Bulk strings are bytes, simple strings str, errors ``RespError``."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return None
        return bytes(buf[end + 2:stop]), stop + 2
    if kind == 42:  # * array
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        items: list[Any] = []
        at = end + 2
        for _ in range(n):
            parsed = parse(buf, at)
            if parsed is None:
                return None
            value, at = parsed
            items.append(value)
        return items, at
    if kind == 58:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 43:  # + simple string
        return buf[pos + 1:end].decode(), end + 2
    if kind == 45:  # - error
        return RespError(buf[pos + 1:end].decode(errors="replace")), end + 2
    raise ProtocolError(f"unexpected RESP type byte {kind!r}")


def encode_command(*parts: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings (str as UTF-8, int in decimal)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            part = part.encode("utf-8", "surrogatepass")
        elif isinstance(part, int):
            part = b"%d" % part
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)
