"""The fast path for client WebSocket frames, without I/O (RFC 6455 §5.2).

websockets' generator-based parser costs several µs per frame, most of the work of a small
command. A :class:`FrameReader` takes the frames a Centrifugo client sends nearly always —
complete, unfragmented, masked data frames of the connection's one opcode — off the byte
stream itself, and hands everything from the first other frame on (a control frame, a
fragment, an oversized or unmasked frame, the other opcode) to websockets for good, so
websockets sees exactly the bytes it would have and answers as before (pong, close
handshake, 1002/1009).

Bytes go in through :meth:`FrameReader.feed`; each message goes to the ``deliver`` callback
(one call per message, as a method call would cost); nothing here touches a socket.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["FrameReader"]

# FIN set, no RSV bits (no extension is ever negotiated), and the data opcode.
_FIRST_TEXT = 0x81
_FIRST_BINARY = 0x82


class FrameReader:
    """Takes a connection's plain data frames off its byte stream until the first other frame.

    ``deliver(message)`` is called with each unmasked payload in order and returns True when
    the consumer wants no more (the connection closed): the bytes after that frame go to the
    fallback parser. ``max_size`` is the largest payload taken here (None: no limit); a larger
    one is left to the fallback parser, which refuses it as it always did (1009).
    """

    __slots__ = ("active", "binary", "deliver", "inbuf", "max_size")

    def __init__(self, deliver: Callable[[bytes], bool], binary: bool, max_size: int | None,
                 active: bool = True) -> None:
        self.deliver = deliver
        self.binary = binary
        self.max_size = max_size
        # False once a frame was handed on: every later byte goes to the fallback parser.
        self.active = active
        # The start of a frame not complete yet.
        self.inbuf = b""

    def feed(self, data: bytes) -> bytes:
        """Deliver the complete frames at the start of ``data``; returns the bytes the
        fallback parser must read instead (empty while this reader keeps up)."""
        if self.inbuf:
            data = self.inbuf + data
            self.inbuf = b""
        expected = _FIRST_BINARY if self.binary else _FIRST_TEXT
        limit = self.max_size
        deliver = self.deliver
        end = len(data)
        pos = 0
        while pos < end:
            if data[pos] != expected:
                break
            if end - pos < 6:
                self.inbuf = data[pos:]
                return b""
            second = data[pos + 1]
            if not second & 0x80:  # unmasked: a protocol error websockets reports
                break
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 8:
                    self.inbuf = data[pos:]
                    return b""
                length = int.from_bytes(data[start:start + 2], "big")
                start += 2
            elif length == 127:  # 64-bit lengths are beyond any message limit we take here
                break
            if limit is not None and length > limit:
                break
            stop = start + 4 + length
            if stop > end:
                self.inbuf = data[pos:]
                return b""
            pos = stop
            # UTF-8 is not checked here, as websockets' sans-I/O parser does not either: the
            # command decoder refuses invalid text (3501).
            if deliver(apply_mask(data[start + 4:stop], data[start:start + 4])):
                break
        else:
            return b""
        self.active = False
        return data[pos:]

    def release(self, data: bytes) -> bytes:
        """Stop taking frames (the consumer closed): ``data`` and any incomplete frame held,
        for the fallback parser."""
        self.active = False
        held, self.inbuf = self.inbuf, b""
        return held + data if held else data
