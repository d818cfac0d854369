"""Server-to-client WebSocket frames (RFC 6455 §5.2) built directly.

Server frames are never masked and we negotiate no extensions, so one frame's bytes are
valid on every connection: fan-out builds a publication's frame once and writes the same
bytes object to every subscriber.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2

_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


def build_frame(payload: bytes, binary: bool) -> bytes:
    """One final, unmasked data frame carrying ``payload``."""
    first = 0x80 | (OP_BINARY if binary else OP_TEXT)
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _pack_16(first, 126, n) + payload
    return _pack_64(first, 127, n) + payload
