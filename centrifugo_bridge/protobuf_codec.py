"""Protobuf wire format for the Centrifugo client protocol v2.

The schema is not generated code: it is read once, at import, from the ``__proto__``
tables of the Structs in :mod:`centrifugo_bridge.protocol` and turned into per-class
field tables that the encoder and decoder walk. Encoding follows proto3: scalars equal
to their zero value are omitted, while an embedded message that is not ``None`` is
always written (an empty ``PublishResult`` still tells the client which command it
answers).

Over WebSocket each Command and Reply is prefixed with its length as a varint, so one
binary frame can carry several of them.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec
from msgspec import Raw

from centrifugo_bridge import protocol
from centrifugo_bridge.codecs import DecodeError
from centrifugo_bridge.protocol import EMPTY, Command, Reply

__all__ = ["PROTOBUF", "ProtobufCodec", "decode_message", "encode_message"]

S = TypeVar("S", bound=msgspec.Struct)

_MASK32: Final = 0xFFFFFFFF
_MASK64: Final = 0xFFFFFFFFFFFFFFFF
# Same nesting limit as the reference protobuf runtimes; without it a frame of a few
# kilobytes of nested FilterNodes would exhaust the Python stack.
_MAX_DEPTH: Final = 100

_VARINT: Final = 0
_FIXED64: Final = 1
_LEN: Final = 2
_START_GROUP: Final = 3
_END_GROUP: Final = 4
_FIXED32: Final = 5
_MAX_FIELD_NUMBER: Final = (1 << 29) - 1

# Field kinds, as small ints so the hot loops compare integers instead of strings.
_STRING: Final = 0
_BYTES: Final = 1
_BOOL: Final = 2
_UINT32: Final = 3
_UINT64: Final = 4
_INT32: Final = 5
_INT64: Final = 6
_SINT64: Final = 7
_MSG: Final = 8
_REP_MSG: Final = 9
_REP_STRING: Final = 10
_MAP_MSG: Final = 11
_MAP_STR: Final = 12

_SCALAR_KINDS: Final = {
    "string": _STRING, "bytes": _BYTES, "bool": _BOOL,
    "uint32": _UINT32, "uint64": _UINT64, "int32": _INT32, "int64": _INT64,
    "sint64": _SINT64, "rep:string": _REP_STRING, "map:str": _MAP_STR,
}
_NESTED_KINDS: Final = {"msg": _MSG, "rep": _REP_MSG, "map": _MAP_MSG}
_VARINT_KINDS: Final = frozenset({_BOOL, _UINT32, _UINT64, _INT32, _INT64, _SINT64})

# Map entries are messages {1: key, 2: value}; both tags are length-delimited here.
_ENTRY_KEY_TAG: Final = b"\x0a"
_ENTRY_VALUE_TAG: Final = b"\x12"


class _Field:
    """One field: where it lives on the Struct and how it looks on the wire."""

    __slots__ = ("kind", "name", "number", "sub", "tag", "wire_type")

    def __init__(self, name: str, number: int, kind: int) -> None:
        self.name = name
        self.number = number
        self.kind = kind
        self.wire_type = _VARINT if kind in _VARINT_KINDS else _LEN
        self.tag = _varint_bytes(number << 3 | self.wire_type)
        # Resolved once every table exists, because schemas refer to each other.
        # The table of a message / repeated message / map field, set by _build_tables (None
        # for scalars): the encoder and decoder pass it on only for those kinds, hence the
        # `type: ignore[arg-type]` where they do.
        self.sub: _Table | None = None


class _Table:
    """Encoder/decoder view of one Struct class."""

    __slots__ = ("by_number", "cls", "fields", "required", "values")

    def __init__(self, cls: type[msgspec.Struct], fields: list[_Field]) -> None:
        self.cls = cls
        # Field-number order, as protobuf-go writes them.
        self.fields = tuple(sorted(fields, key=lambda f: f.number))
        self.by_number = {f.number: f for f in self.fields}
        self.values = _values_getter(tuple(f.name for f in self.fields))
        # Struct fields without a default must be passed to __init__ even when the wire
        # omitted them (proto3 drops zero values), so the decoder fills these in.
        required = {info.name for info in msgspec.structs.fields(cls) if info.required}
        self.required = tuple(f for f in self.fields if f.name in required)


def _values_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """Return a function reading ``names`` off a Struct as a tuple, in one C call."""
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return operator.attrgetter(*names)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    _put_varint(out, value)
    return bytes(out)


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _build_tables() -> dict[type[msgspec.Struct], _Table]:
    classes = {
        name: obj
        for name, obj in vars(protocol).items()
        if inspect.isclass(obj)
        # Every wire Struct derives from _Wire, which declares __proto__.
        and issubclass(obj, protocol._Wire)
        and obj.__module__ == protocol.__name__
    }
    tables: dict[type[msgspec.Struct], _Table] = {}
    sub_names: dict[tuple[type[msgspec.Struct], str], str] = {}
    for cls in classes.values():
        attrs = set(cls.__struct_fields__)
        fields: list[_Field] = []
        for name, (number, kind_spec) in cls.__proto__.items():
            if name not in attrs:
                raise ValueError(f"{cls.__name__}.__proto__: no attribute {name!r}")
            if kind_spec in _SCALAR_KINDS:
                kind = _SCALAR_KINDS[kind_spec]
            else:
                prefix, _, target = kind_spec.partition(":")
                if prefix not in _NESTED_KINDS or target not in classes:
                    raise ValueError(f"{cls.__name__}.{name}: bad kind {kind_spec!r}")
                kind = _NESTED_KINDS[prefix]
                sub_names[(cls, name)] = target
            fields.append(_Field(name, number, kind))
        tables[cls] = _Table(cls, fields)
    for table in tables.values():
        for field in table.fields:
            sub = sub_names.get((table.cls, field.name))
            if sub is not None:
                field.sub = tables[classes[sub]]
    return tables


_TABLES: Final = _build_tables()


# ---- encoding ------------------------------------------------------------------------


def _encode(table: _Table, obj: Any, out: bytearray) -> None:
    # Same length by construction; zip's strict flag costs measurably on this path.
    for field, value in zip(table.fields, table.values(obj)):  # noqa: B905
        # Every zero value proto3 omits is falsy (0, False, "", empty Raw/list/dict),
        # and so is a None submessage, while a Struct instance is always truthy: one
        # test skips every absent field, which is most of them in a Reply.
        if not value:
            continue
        kind = field.kind
        if kind == _MSG:
            out += field.tag
            _put_message(field.sub, value, out)  # type: ignore[arg-type]  # sub: set for message kinds
        elif kind == _STRING:
            encoded = value.encode()
            out += field.tag
            _put_varint(out, len(encoded))
            out += encoded
        elif kind == _BYTES:
            out += field.tag
            _put_varint(out, len(value))
            out += value
        elif kind == _SINT64:
            out += field.tag
            _put_varint(out, ((value << 1) ^ (value >> 63)) & _MASK64)
        elif kind == _UINT32:
            out += field.tag
            _put_varint(out, value & _MASK32)
        elif kind in _VARINT_KINDS:
            # bool becomes 1; negative int32/int64 become 10-byte two's-complement
            # varints, as proto3 specifies.
            out += field.tag
            _put_varint(out, int(value) & _MASK64)
        elif kind == _REP_MSG:
            for item in value:
                out += field.tag
                _put_message(field.sub, item, out)  # type: ignore[arg-type]  # sub: set for message kinds
        elif kind == _REP_STRING:
            for item in value:
                encoded = item.encode()
                out += field.tag
                _put_varint(out, len(encoded))
                out += encoded
        elif kind == _MAP_STR:
            for key, item in value.items():
                entry = bytearray()
                _put_string_entry(entry, _ENTRY_KEY_TAG, key)
                _put_string_entry(entry, _ENTRY_VALUE_TAG, item)
                out += field.tag
                _put_varint(out, len(entry))
                out += entry
        else:  # _MAP_MSG
            for key, item in value.items():
                entry = bytearray()
                _put_string_entry(entry, _ENTRY_KEY_TAG, key)
                entry += _ENTRY_VALUE_TAG
                _put_message(field.sub, item, entry)  # type: ignore[arg-type]  # sub: set for message kinds
                out += field.tag
                _put_varint(out, len(entry))
                out += entry


def _put_message(table: _Table, obj: Any, out: bytearray) -> None:
    body = bytearray()
    _encode(table, obj, body)
    _put_varint(out, len(body))
    out += body


def _put_string_entry(out: bytearray, tag: bytes, value: str) -> None:
    # Map keys and values are written even when empty, as protobuf-go does.
    encoded = value.encode()
    out += tag
    _put_varint(out, len(encoded))
    out += encoded


def encode_message(obj: msgspec.Struct) -> bytes:
    """Encode one protocol Struct as a proto3 message (without a length prefix)."""
    try:
        table = _TABLES[type(obj)]
    except KeyError:
        raise TypeError(f"{type(obj).__name__} is not a protocol message") from None
    out = bytearray()
    _encode(table, obj, out)
    return bytes(out)


# ---- decoding ------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Return ``(value, new_pos)``, truncated to 64 bits as the runtimes do."""
    result = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")
    raise DecodeError("truncated varint")


def _skip(
    data: bytes, pos: int, end: int, number: int, wire_type: int, depth: int,
) -> int:
    """Skip the value of an unknown field whose tag ended at ``pos``."""
    if not 0 < number <= _MAX_FIELD_NUMBER:
        raise DecodeError(f"invalid field number {number}")
    if wire_type == _VARINT:
        return _read_varint(data, pos, end)[1]
    if wire_type == _FIXED64:
        pos += 8
    elif wire_type == _LEN:
        length, pos = _read_varint(data, pos, end)
        pos += length
    elif wire_type == _FIXED32:
        pos += 4
    elif wire_type == _START_GROUP:
        # Groups are long deprecated, but every reference runtime still skips them
        # inside unknown fields, so a frame carrying one must not be rejected.
        if depth > _MAX_DEPTH:
            raise DecodeError("message nested too deeply")
        while True:
            tag, pos = _read_varint(data, pos, end)
            if tag & 7 == _END_GROUP:
                if tag >> 3 != number:
                    raise DecodeError("mismatched end of group")
                return pos
            pos = _skip(data, pos, end, tag >> 3, tag & 7, depth + 1)
    else:
        raise DecodeError(f"unexpected wire type {wire_type}")
    if pos > end:
        raise DecodeError("truncated field")
    return pos


def _read_str(data: bytes, pos: int, stop: int) -> str:
    try:
        return data[pos:stop].decode()
    except UnicodeDecodeError:
        raise DecodeError("string field is not valid UTF-8") from None


def _zero(field: _Field) -> Any:
    kind = field.kind
    if kind == _STRING:
        return ""
    if kind == _BYTES:
        return EMPTY
    if kind == _BOOL:
        return False
    if kind in _VARINT_KINDS:
        return 0
    if kind == _MSG:
        return None
    if kind in (_REP_MSG, _REP_STRING):
        return []
    return {}


def _from_varint(kind: int, value: int) -> int | bool:
    if kind == _UINT64:
        return value
    if kind == _BOOL:
        return value != 0
    if kind == _UINT32:
        return value & _MASK32
    if kind == _INT64:
        return value - (1 << 64) if value >> 63 else value
    if kind == _INT32:
        value &= _MASK32
        return value - (1 << 32) if value >> 31 else value
    return (value >> 1) ^ -(value & 1)  # _SINT64


def _decode_entry(
    field: _Field, data: bytes, pos: int, end: int, depth: int,
) -> tuple[str, Any]:
    """Decode one map entry ``{1: key, 2: value}``; missing parts are zero values."""
    key = ""
    value: Any = None
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type != _LEN or number not in (1, 2):
            pos = _skip(data, pos, end, number, wire_type, depth + 1)
            continue
        length, pos = _read_varint(data, pos, end)
        stop = pos + length
        if stop > end:
            raise DecodeError("truncated map entry")
        if number == 1:
            key = _read_str(data, pos, stop)
        elif field.kind == _MAP_STR:
            value = _read_str(data, pos, stop)
        else:
            # A second value in the same entry replaces the first rather than merging
            # into it; no client sends one.
            value = _decode(field.sub, data, pos, stop, depth + 1)  # type: ignore[arg-type]  # sub: set for message kinds
        pos = stop
    if value is None:
        if field.kind == _MAP_STR:
            value = ""
        else:
            value = _decode(field.sub, b"", 0, 0, depth + 1)  # type: ignore[arg-type]  # sub: set for message kinds
    return key, value


def _decode(table: _Table, data: bytes, pos: int, end: int, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise DecodeError("message nested too deeply")
    kwargs: dict[str, Any] = {}
    by_number = table.by_number
    # Where each singular submessage came from, in case it occurs again.
    spans: dict[str, list[tuple[int, int]]] = {}
    while pos < end:
        byte = data[pos]
        if byte < 0x80:
            tag = byte
            pos += 1
        else:
            tag, pos = _read_varint(data, pos, end)
        number = tag >> 3
        wire_type = tag & 7
        field = by_number.get(number)
        # The reference runtimes keep a known number with an unexpected wire type as an
        # unknown field rather than rejecting the message; do the same.
        if field is None or field.wire_type != wire_type:
            pos = _skip(data, pos, end, number, wire_type, depth)
            continue
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos, end)
            kwargs[field.name] = _from_varint(field.kind, value)
            continue
        length, pos = _read_varint(data, pos, end)
        stop = pos + length
        if stop > end:
            owner = table.cls.__name__
            raise DecodeError(f"field {number} of {owner} runs past its message")
        kind = field.kind
        name = field.name
        if kind == _STRING:
            kwargs[name] = _read_str(data, pos, stop)
        elif kind == _BYTES:
            kwargs[name] = Raw(data[pos:stop]) if stop > pos else EMPTY
        elif kind == _MSG:
            seen = spans.get(name)
            if seen is None:
                spans[name] = [(pos, stop)]
                kwargs[name] = _decode(field.sub, data, pos, stop, depth + 1)  # type: ignore[arg-type]  # sub: set for message kinds
            else:
                # proto3 merges repeated occurrences of a singular message, which is the
                # same as decoding the concatenation of their bodies.
                seen.append((pos, stop))
                joined = b"".join(data[a:b] for a, b in seen)
                kwargs[name] = _decode(field.sub, joined, 0, len(joined), depth + 1)  # type: ignore[arg-type]  # sub: set for message kinds
        elif kind == _REP_MSG:
            item = _decode(field.sub, data, pos, stop, depth + 1)  # type: ignore[arg-type]  # sub: set for message kinds
            kwargs.setdefault(name, []).append(item)
        elif kind == _REP_STRING:
            kwargs.setdefault(name, []).append(_read_str(data, pos, stop))
        else:  # _MAP_MSG / _MAP_STR
            key, item = _decode_entry(field, data, pos, stop, depth)
            kwargs.setdefault(name, {})[key] = item
        pos = stop
    for field in table.required:
        if field.name not in kwargs:
            kwargs[field.name] = _zero(field)
    return table.cls(**kwargs)


def decode_message(cls: type[S], data: bytes) -> S:
    """Decode a proto3 message (without a length prefix) into Struct ``cls``.

    Unknown fields are skipped; malformed or truncated input raises
    :class:`DecodeError`.
    """
    try:
        table = _TABLES[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not a protocol message") from None
    data = bytes(data)
    result: S = _decode(table, data, 0, len(data), 0)
    return result


# ---- framing -------------------------------------------------------------------------

_COMMAND_TABLE: Final = _TABLES[Command]
_REPLY_TABLE: Final = _TABLES[Reply]


class ProtobufCodec:
    """Varint-length-delimited protobuf messages: several per WebSocket binary frame."""

    name = "protobuf"
    binary = True

    def decode_commands(self, data: bytes) -> list[Command]:
        """Decode every length-delimited Command in one binary frame."""
        if not data:
            raise DecodeError("empty frame")
        if not isinstance(data, bytes):
            data = bytes(data)
        end = len(data)
        pos = 0
        commands: list[Command] = []
        while pos < end:
            length, pos = _read_varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise DecodeError("command length prefix runs past the frame")
            commands.append(_decode(_COMMAND_TABLE, data, pos, stop, 0))
            pos = stop
        return commands

    def encode_reply(self, reply: Reply) -> bytes:
        """Encode one Reply with its varint length prefix."""
        out = bytearray()
        _put_message(_REPLY_TABLE, reply, out)
        return bytes(out)

    def join(self, encoded: list[bytes]) -> bytes:
        """Concatenate encoded Replies into one frame (each carries its length)."""
        return b"".join(encoded)


PROTOBUF: Final = ProtobufCodec()
