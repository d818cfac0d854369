"""The client-frame fast path, fed bytes: which frames it takes, and exactly which bytes it
hands to websockets (everything from the first frame it does not take, for good)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from gateway.frame_reader import FrameReader


def client_frame(payload: bytes, opcode: Opcode = Opcode.TEXT, fin: bool = True) -> bytes:
    # websockets' own serializer: the masked frames a real client sends.
    return Frame(opcode, payload, fin=fin).serialize(mask=True)


class Reader:
    """A FrameReader and the messages it delivered."""

    def __init__(self, binary: bool = False, max_size: int | None = 65536,
                 stop_after: int | None = None) -> None:
        self.messages: list[bytes] = []
        self.stop_after = stop_after
        self.reader = FrameReader(self.deliver, binary, max_size)

    def deliver(self, message: bytes) -> bool:
        self.messages.append(message)
        return self.stop_after is not None and len(self.messages) >= self.stop_after


def test_takes_complete_frames_and_hands_on_nothing() -> None:
    r = Reader()
    data = client_frame(b'{"id":1}') + client_frame(b"x" * 200) + client_frame(b"")
    assert r.reader.feed(data) == b""
    assert r.messages == [b'{"id":1}', b"x" * 200, b""]
    assert r.reader.active and r.reader.inbuf == b""


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535])
def test_any_split_of_the_stream_delivers_the_same_messages(size: int) -> None:
    payloads = [bytes(i % 251 for i in range(size)), b"tail"]
    data = b"".join(client_frame(p) for p in payloads)
    for cut in range(len(data) + 1) if size < 300 else (1, 2, 5, 7, 100, len(data) - 1):
        r = Reader()
        assert r.reader.feed(data[:cut]) == b""
        assert r.reader.feed(data[cut:]) == b""
        assert r.messages == payloads, cut


def test_byte_by_byte() -> None:
    r = Reader()
    data = client_frame(b"a" * 130) + client_frame(b"b")
    for i in range(len(data)):
        assert r.reader.feed(data[i:i + 1]) == b""
    assert r.messages == [b"a" * 130, b"b"]


def test_binary_connection_takes_binary_frames() -> None:
    r = Reader(binary=True)
    assert r.reader.feed(client_frame(b"\x00\x01", Opcode.BINARY)) == b""
    assert r.messages == [b"\x00\x01"]


@pytest.mark.parametrize("other", [
    client_frame(b"", Opcode.PING),                     # control frame: websockets pongs
    client_frame(b"\x03\xe8", Opcode.CLOSE),            # close handshake
    client_frame(b"part", fin=False),                   # fragment
    client_frame(b"bin", Opcode.BINARY),                # the other opcode: 1003 by the adapter
    Frame(Opcode.TEXT, b"plain").serialize(mask=False),  # unmasked: websockets says 1002
    client_frame(b"y" * 70000),                         # 64-bit length
    client_frame(b"z" * 101),                           # over max_size: websockets says 1009
])
def test_first_other_frame_and_everything_after_go_to_websockets(other: bytes) -> None:
    r = Reader(max_size=100)
    before, after = client_frame(b"one"), client_frame(b"two")
    assert r.reader.feed(before + other + after) == other + after
    assert r.messages == [b"one"]
    assert not r.reader.active


def test_incomplete_frame_is_handed_on_with_what_follows() -> None:
    r = Reader()
    frame = client_frame(b"hello world")
    assert r.reader.feed(frame[:4]) == b""
    ping = client_frame(b"", Opcode.PING)
    # The rest of the frame completes it; the ping after it is not taken.
    assert r.reader.feed(frame[4:] + ping) == ping
    assert r.messages == [b"hello world"]


def test_consumer_that_closes_stops_the_reader() -> None:
    r = Reader(stop_after=1)
    rest = client_frame(b"two") + client_frame(b"three")
    assert r.reader.feed(client_frame(b"one") + rest) == rest
    assert r.messages == [b"one"] and not r.reader.active


def test_release_hands_on_the_incomplete_frame_held() -> None:
    r = Reader()
    frame = client_frame(b"pending")
    assert r.reader.feed(frame[:5]) == b""
    assert r.reader.release(frame[5:]) == frame
    assert not r.reader.active and r.messages == []
    assert r.reader.release(b"more") == b"more"
