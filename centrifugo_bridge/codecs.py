"""Framing of Commands and Replies: JSON (newline-delimited, text frames) and Protobuf.

A codec turns one WebSocket message into Commands and one or more Replies into one
WebSocket message. Both directions are pure functions of their input.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from centrifugo_bridge.protocol import Command, Reply

__all__ = ["Codec", "DecodeError", "JsonCodec", "JSON", "codec_for"]


class DecodeError(ValueError):
    """A client frame that cannot be decoded; the session answers with disconnect 3501."""


class Codec(Protocol):
    name: str
    binary: bool  # WebSocket opcode: binary (protobuf) or text (json)

    def decode_commands(self, data: bytes) -> list[Command]: ...

    def encode_reply(self, reply: Reply) -> bytes: ...

    def join(self, encoded: list[bytes]) -> bytes: ...


_json_command = msgspec.json.Decoder(Command)
_json_encode = msgspec.json.Encoder().encode


class JsonCodec:
    """Newline-delimited JSON: several Commands or Replies per WebSocket text frame."""

    name = "json"
    binary = False

    def decode_commands(self, data: bytes) -> list[Command]:
        commands: list[Command] = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                commands.append(_json_command.decode(line))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                # msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError.
                raise DecodeError(str(exc)) from None
        if not commands:
            raise DecodeError("empty frame")
        return commands

    def encode_reply(self, reply: Reply) -> bytes:
        out = _json_encode(reply)
        # A raw newline can only come from an embedded payload (where it is whitespace) and
        # would split the frame: strip it, as centrifugal/protocol's Raw.MarshalJSON does.
        return out.replace(b"\n", b"") if b"\n" in out else out

    def join(self, encoded: list[bytes]) -> bytes:
        return b"\n".join(encoded)


JSON = JsonCodec()


def codec_for(name: str) -> Codec:
    """Return the codec for ``"json"`` or ``"protobuf"``."""
    if name == "json":
        return JSON
    if name == "protobuf":
        from centrifugo_bridge.protobuf_codec import PROTOBUF

        return PROTOBUF
    raise ValueError(f"unknown codec {name!r}")
