"""Protobuf codec checked against the generated classes shipped with centrifuge-python.

Commands are encoded by the SDK and decoded by us; Replies and Pushes are encoded by us
and decoded by the SDK. The SDK's client.proto is an older revision than ours, so fields
it lacks are checked only by round trips through our own codec.
"""

from __future__ import annotations

import random

import msgspec
import pytest
from centrifuge.protocol import client_pb2 as pb
from google.protobuf.message import DecodeError as PbDecodeError
from google.protobuf.message import Message as PbMessage
from google.protobuf.unknown_fields import UnknownFieldSet

from centrifugo_bridge.codecs import DecodeError, codec_for
from centrifugo_bridge.protobuf_codec import (
    PROTOBUF,
    ProtobufCodec,
    decode_message,
    encode_message,
)
from centrifugo_bridge.protocol import (
    ClientInfo,
    Command,
    ConnectRequest,
    Disconnect,
    Error,
    FilterNode,
    HistoryRequest,
    HistoryResult,
    PresenceResult,
    Publication,
    PublishRequest,
    PublishResult,
    Push,
    Raw,
    Reply,
    StreamPosition,
    SubscribeRequest,
    SubscribeResult,
)

U64_MAX = 2**64 - 1


def delimited(body: bytes) -> bytes:
    """Prefix ``body`` with its varint length, as a WebSocket frame carries it."""
    out = bytearray()
    n = len(body)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + body


def assert_same(ours: msgspec.Struct, theirs: PbMessage) -> None:
    """Compare our Struct with an SDK message field by field, matching field numbers."""
    fields_by_number = theirs.DESCRIPTOR.fields_by_number
    for name, (number, kind) in type(ours).__proto__.items():
        value = getattr(ours, name)
        fd = fields_by_number.get(number)
        if fd is None:  # field newer than the SDK's client.proto
            continue
        where = f"{type(ours).__name__}.{name}"
        assert fd.name == name.rstrip("_"), f"{where}: number {number} is {fd.name}"
        other = getattr(theirs, fd.name)
        if kind == "bytes":
            assert bytes(value) == other, where
        elif kind.startswith("msg:"):
            if value is None:
                assert not theirs.HasField(fd.name), where
            else:
                assert theirs.HasField(fd.name), where
                assert_same(value, other)
        elif kind.startswith("rep:") and kind != "rep:string":
            assert len(value) == len(other), where
            for mine, sdk in zip(value, other, strict=True):
                assert_same(mine, sdk)
        elif kind.startswith("map:") and kind != "map:str":
            assert set(value) == set(other), where
            for key, mine in value.items():
                assert_same(mine, other[key])
        elif kind == "map:str":
            assert value == dict(other), where
        elif kind == "rep:string":
            assert value == list(other), where
        else:
            assert value == other, where


def sdk_reply(data: bytes) -> pb.Reply:
    """Parse one length-delimited Reply with the SDK, checking the prefix is exact."""
    length, pos = 0, 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    assert pos + length == len(data)
    return pb.Reply.FromString(data[pos:])


def our_reply_via_sdk(reply: Reply) -> pb.Reply:
    theirs = sdk_reply(PROTOBUF.encode_reply(reply))
    assert_same(reply, theirs)
    return theirs


# ---- surface -------------------------------------------------------------------------


def test_codec_surface() -> None:
    assert isinstance(PROTOBUF, ProtobufCodec)
    assert PROTOBUF.name == "protobuf"
    assert PROTOBUF.binary is True
    assert codec_for("protobuf") is PROTOBUF


def test_ping_reply_is_single_zero_byte() -> None:
    assert PROTOBUF.encode_reply(Reply()) == b"\x00"
    assert encode_message(Reply()) == b""


def test_empty_result_message_is_still_emitted() -> None:
    theirs = our_reply_via_sdk(Reply(id=1, publish=PublishResult()))
    assert theirs.id == 1
    assert theirs.HasField("publish")
    assert encode_message(Reply(id=1, publish=PublishResult())) == b"\x08\x01\x42\x00"


def test_join_concatenates_delimited_replies() -> None:
    parts = [
        PROTOBUF.encode_reply(Reply(id=i, publish=PublishResult())) for i in (1, 2)
    ]
    frame = PROTOBUF.join(parts)
    assert frame == parts[0] + parts[1]


# ---- commands: SDK encodes, we decode ------------------------------------------------


def test_connect_with_subs_and_headers() -> None:
    sdk = pb.Command(
        id=1,
        connect=pb.ConnectRequest(
            token="jwt.token.here",
            data=b'{"hello":"world"}',
            name="js",
            version="5.0.0",
            headers={"authorization": "Bearer x", "x-empty": ""},
            flag=3,
        ),
    )
    sdk.connect.subs["news"].recover = True
    sdk.connect.subs["news"].offset = 42
    sdk.connect.subs["news"].epoch = "abcd"
    sdk.connect.subs["chat:1"].CopyFrom(pb.SubscribeRequest())  # an all-default value
    [cmd] = PROTOBUF.decode_commands(delimited(sdk.SerializeToString()))
    assert_same(cmd, sdk)
    assert cmd.id == 1
    assert cmd.connect is not None
    assert cmd.connect.headers == {"authorization": "Bearer x", "x-empty": ""}
    assert set(cmd.connect.subs) == {"news", "chat:1"}
    news = cmd.connect.subs["news"]
    assert (news.recover, news.offset, news.epoch) == (True, 42, "abcd")
    assert cmd.connect.subs["chat:1"] == SubscribeRequest()
    assert bytes(cmd.connect.data) == b'{"hello":"world"}'


def test_subscribe_with_recover_offset_epoch_flag() -> None:
    sdk = pb.Command(
        id=7,
        subscribe=pb.SubscribeRequest(
            channel="news",
            token="t",
            recover=True,
            epoch="xyz",
            offset=U64_MAX,
            data=b"\x00\xff",
            positioned=True,
            recoverable=True,
            join_leave=True,
            delta="fossil",
            flag=-2,
        ),
    )
    cmd = decode_message(Command, sdk.SerializeToString())
    assert_same(cmd, sdk)
    assert cmd.subscribe is not None
    assert cmd.subscribe.offset == U64_MAX
    assert cmd.subscribe.flag == -2


def test_subscribe_with_filter_tree() -> None:
    sdk = pb.Command(id=2)
    sdk.subscribe.channel = "tickers"
    sdk.subscribe.tf.op = "and"
    leaf = sdk.subscribe.tf.nodes.add(key="ticker", cmp="in")
    leaf.vals.extend(["AAPL", "", "GOOG"])
    sdk.subscribe.tf.nodes.add(op="not").nodes.add(key="x", cmp="eq", val="1")
    cmd = decode_message(Command, sdk.SerializeToString())
    assert_same(cmd, sdk)
    assert cmd.subscribe is not None and cmd.subscribe.tf is not None
    assert cmd.subscribe.tf.nodes[0].vals == ["AAPL", "", "GOOG"]


def test_publish_with_binary_data() -> None:
    payload = bytes(range(256))
    sdk = pb.Command(id=3, publish=pb.PublishRequest(channel="bin", data=payload))
    [cmd] = PROTOBUF.decode_commands(delimited(sdk.SerializeToString()))
    assert_same(cmd, sdk)
    assert cmd.publish is not None
    assert isinstance(cmd.publish.data, Raw)
    assert bytes(cmd.publish.data) == payload


def test_history_with_since_and_negative_limit() -> None:
    sdk = pb.Command(
        id=4,
        history=pb.HistoryRequest(
            channel="h",
            limit=-1,
            since=pb.StreamPosition(offset=10, epoch="e"),
            reverse=True,
        ),
    )
    cmd = decode_message(Command, sdk.SerializeToString())
    assert_same(cmd, sdk)
    assert cmd.history is not None
    assert cmd.history.limit == -1
    assert cmd.history.since == StreamPosition(offset=10, epoch="e")
    # Negative int32 is a 10-byte varint; ours must match the SDK's byte for byte.
    ours = HistoryRequest(
        channel="h", limit=-1, since=StreamPosition(10, "e"), reverse=True
    )
    assert encode_message(ours) == sdk.history.SerializeToString()
    assert encode_message(HistoryRequest(limit=-1)) == b"\x38" + b"\xff" * 9 + b"\x01"


def test_empty_sub_commands_are_present() -> None:
    sdk = pb.Command(id=9)
    sdk.ping.SetInParent()
    cmd = decode_message(Command, sdk.SerializeToString())
    assert cmd.id == 9
    assert cmd.ping is not None
    assert cmd.connect is None


def test_several_commands_in_one_frame() -> None:
    sdk_cmds = [
        pb.Command(id=1, subscribe=pb.SubscribeRequest(channel="a")),
        pb.Command(id=2, publish=pb.PublishRequest(channel="a", data=b"x" * 300)),
        pb.Command(id=3, unsubscribe=pb.UnsubscribeRequest(channel="a")),
        pb.Command(),
    ]
    frame = b"".join(delimited(c.SerializeToString()) for c in sdk_cmds)
    cmds = PROTOBUF.decode_commands(frame)
    assert len(cmds) == len(sdk_cmds)
    for ours, theirs in zip(cmds, sdk_cmds, strict=True):
        assert_same(ours, theirs)
    assert cmds[3] == Command()


def test_decode_commands_accepts_bytearray_and_memoryview() -> None:
    frame = delimited(pb.Command(id=5).SerializeToString())
    assert PROTOBUF.decode_commands(bytearray(frame)) == [Command(id=5)]
    assert PROTOBUF.decode_commands(memoryview(frame)) == [Command(id=5)]  # type: ignore[arg-type]


# ---- replies and pushes: we encode, SDK decodes --------------------------------------


def test_reply_with_error() -> None:
    reply = Reply(
        id=11, error=Error(code=102, message="unknown channel", temporary=True)
    )
    theirs = our_reply_via_sdk(reply)
    assert (theirs.error.code, theirs.error.message, theirs.error.temporary) == (
        102,
        "unknown channel",
        True,
    )


def test_push_publication_with_info_tags_offset() -> None:
    pub = Publication(
        data=Raw(b'{"text":"hi"}'),
        info=ClientInfo(
            user="42", client="c-1", conn_info=Raw(b"\x01"), chan_info=Raw(b"")
        ),
        offset=2**63 + 5,
        tags={"kind": "msg", "empty": ""},
        delta=True,
        time=1_700_000_000_000,
        channel="room",
    )
    theirs = our_reply_via_sdk(Reply(push=Push(channel="room", pub=pub)))
    assert theirs.push.pub.offset == 2**63 + 5
    assert dict(theirs.push.pub.tags) == {"kind": "msg", "empty": ""}
    assert theirs.push.pub.info.user == "42"


def test_push_with_empty_client_info_still_emits_it() -> None:
    theirs = our_reply_via_sdk(
        Reply(push=Push(pub=Publication(info=ClientInfo("", ""))))
    )
    assert theirs.push.HasField("pub")
    assert theirs.push.pub.HasField("info")


def test_push_disconnect() -> None:
    our_reply_via_sdk(Reply(push=Push(disconnect=Disconnect(code=3000, reason="bye"))))


def test_presence_result_map() -> None:
    presence = {
        "c1": ClientInfo(user="u1", client="c1", conn_info=Raw(b'{"n":1}')),
        "c2": ClientInfo(user="", client=""),
    }
    theirs = our_reply_via_sdk(Reply(id=5, presence=PresenceResult(presence=presence)))
    assert set(theirs.presence.presence) == {"c1", "c2"}
    assert theirs.presence.presence["c1"].conn_info == b'{"n":1}'
    # And back: map values that are empty messages decode with all-zero required fields.
    back = decode_message(Reply, theirs.SerializeToString())
    assert back.presence == PresenceResult(presence=presence)


def test_history_result() -> None:
    pubs = [
        Publication(data=Raw(b"1"), offset=1),
        Publication(
            data=Raw(b"2"), offset=U64_MAX, info=ClientInfo(user="u", client="c")
        ),
        Publication(),
    ]
    reply = Reply(
        id=6, history=HistoryResult(publications=pubs, epoch="ep", offset=U64_MAX)
    )
    theirs = our_reply_via_sdk(reply)
    assert len(theirs.history.publications) == 3
    assert theirs.history.offset == U64_MAX
    assert decode_message(Reply, theirs.SerializeToString()) == reply


def test_connect_result_with_subscriptions() -> None:
    from centrifugo_bridge.protocol import ConnectResult

    result = ConnectResult(
        client="cid",
        version="0.0.1",
        expires=True,
        ttl=60,
        data=Raw(b"{}"),
        subs={
            "a": SubscribeResult(recoverable=True, epoch="e", offset=3),
            "b": SubscribeResult(),
        },
        ping=25,
        pong=True,
        session="s",
        node="n",
        time=-1,
    )
    our_reply_via_sdk(Reply(id=1, connect=result))


def test_required_fields_get_zero_values_when_absent() -> None:
    assert decode_message(HistoryResult, b"") == HistoryResult(
        publications=[], epoch="", offset=0
    )
    assert decode_message(ClientInfo, b"") == ClientInfo(user="", client="")
    assert decode_message(Error, b"") == Error(code=0, message="")


# ---- round trips of fields the SDK's older client.proto does not have ----------------


def test_roundtrip_fields_newer_than_sdk() -> None:
    pub = Publication(
        data=Raw(b"d"),
        key="k",
        removed=True,
        score=-12345678901,
        epoch="e",
        version=U64_MAX,
    )
    reply = Reply(push=Push(channel="c", pub=pub))
    assert decode_message(Reply, encode_message(reply)) == reply
    cmd = Command(
        id=2**32 - 1,
        subscribe=SubscribeRequest(
            channel="c", type=-3, phase=2, cursor="x", limit=-1, asc=True
        ),
        publish=PublishRequest(
            channel="c", data=Raw(b"p"), type=1, key="k", removed=True
        ),
        connect=ConnectRequest(dict_="d", profile="p", flag=-(2**63)),
    )
    assert decode_message(Command, encode_message(cmd)) == cmd


def test_sint64_is_zigzag() -> None:
    assert encode_message(Publication(score=-1)) == b"\x68\x01"
    assert encode_message(Publication(score=1)) == b"\x68\x02"
    for score in (0, 1, -1, 2**63 - 1, -(2**63)):
        assert (
            decode_message(Publication, encode_message(Publication(score=score))).score
            == score
        )


def test_large_uint64_offsets() -> None:
    for offset in (2**32, 2**63, U64_MAX):
        sdk = pb.Command(subscribe=pb.SubscribeRequest(channel="c", offset=offset))
        assert (
            decode_message(Command, sdk.SerializeToString()).subscribe.offset == offset
        )  # type: ignore[union-attr]
        ours = encode_message(Reply(subscribe=SubscribeResult(offset=offset)))
        assert pb.Reply.FromString(ours).subscribe.offset == offset


def test_encode_rejects_non_protocol_objects() -> None:
    with pytest.raises(TypeError):
        encode_message(object())  # type: ignore[arg-type]


# ---- unknown and odd input -----------------------------------------------------------


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    body = pb.Command(
        id=8, presence=pb.PresenceRequest(channel="p")
    ).SerializeToString()
    unknown = (
        b"\xf8\x06\x96\x01"  # field 111, varint 150
        + b"\x81\x07"
        + b"\x01" * 8  # field 112, fixed64
        + b"\x8a\x07\x03abc"  # field 113, length-delimited
        + b"\x95\x07"
        + b"\x02" * 4  # field 114, fixed32
    )
    for data in (unknown + body, body + unknown):
        [cmd] = PROTOBUF.decode_commands(delimited(data))
        assert cmd == Command(id=8, presence=cmd.presence)
        assert cmd.presence is not None and cmd.presence.channel == "p"


def test_fields_unknown_to_us_from_sdk_are_skipped() -> None:
    # The SDK's Push.id, Disconnect.reconnect and SubscribeResult.id are not ours.
    sdk = pb.Reply(
        push=pb.Push(
            id=77, channel="c", disconnect=pb.Disconnect(code=1, reconnect=True)
        )
    )
    sdk.subscribe.id = 5
    sdk.subscribe.epoch = "e"
    reply = decode_message(Reply, sdk.SerializeToString())
    assert_same(reply, sdk)
    assert reply.subscribe == SubscribeResult(epoch="e")


def test_unknown_groups_are_skipped_like_sdk() -> None:
    group = (
        b"\x9b\x06" + b"\x08\x01" + b"\xa3\x06\xa4\x06" + b"\x9c\x06"
    )  # 99{1:1, 100{}}
    data = group + b"\x08\x05" + group
    cmd = decode_message(Command, data)
    assert_same(cmd, pb.Command.FromString(data))
    assert cmd == Command(id=5)


def test_largest_field_number_is_skipped_and_larger_rejected_like_sdk() -> None:
    largest = b"\xf8\xff\xff\xff\x0f\x00"  # field 2**29-1, varint 0
    assert decode_message(Command, largest + b"\x08\x01") == Command(id=1)
    pb.Command.FromString(largest)
    too_large = b"\x80\x80\x80\x80\x10\x00"  # field 2**29
    with pytest.raises(DecodeError):
        decode_message(Command, too_large)
    with pytest.raises(PbDecodeError):
        pb.Command.FromString(too_large)


def test_known_field_with_wrong_wire_type_is_skipped_like_sdk() -> None:
    data = (
        b"\x0d\x01\x02\x03\x04" + b"\x2a\x02\x0a\x00"
    )  # id as fixed32, then subscribe
    cmd = decode_message(Command, data)
    assert_same(cmd, pb.Command.FromString(data))
    assert cmd.id == 0 and cmd.subscribe == SubscribeRequest()


def test_repeated_singular_message_is_merged_like_sdk() -> None:
    first = pb.Command(
        subscribe=pb.SubscribeRequest(channel="a", offset=1)
    ).SerializeToString()
    second = pb.Command(subscribe=pb.SubscribeRequest(token="t")).SerializeToString()
    third = pb.Command(subscribe=pb.SubscribeRequest(offset=9)).SerializeToString()
    data = first + second + third
    cmd = decode_message(Command, data)
    assert_same(cmd, pb.Command.FromString(data))
    assert cmd.subscribe == SubscribeRequest(channel="a", token="t", offset=9)


def test_oversized_varints_are_truncated_like_sdk() -> None:
    # uint32 id given a value wider than 32 bits keeps the low 32 bits.
    data = b"\x08" + b"\xff\xff\xff\xff\x1f"
    assert (
        decode_message(Command, data).id == pb.Command.FromString(data).id == 2**32 - 1
    )


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "empty frame"),
        (b"\x05\x08\x01", "length prefix beyond the frame"),
        (b"\x80", "truncated length prefix"),
        (b"\x02\x08", "length prefix beyond the frame"),
        (b"\x02\x08\x80", "truncated varint inside a command"),
        (b"\x03\x22\x05\x0a", "submessage longer than the command"),
        (b"\x02\x00\x00", "field number 0"),
        (b"\x01\x0b", "unterminated group"),
        (b"\x02\x0b\x14", "group closed by another field number"),
        (b"\x01\x0c", "end of group without a start"),
        (b"\x06\x80\x80\x80\x80\x10\x00", "field number above 2**29-1"),
        (b"\x02\x0e\x00", "wire type 6"),
        (b"\x0b" + b"\x08" + b"\xff" * 10, "varint over 10 bytes"),
        (b"\x05\x2a\x03\x0a\x01\xff", "invalid UTF-8 string"),
        (b"\x03\xf8\x06\x96", "truncated unknown varint"),
        (b"\x04\x81\x07\x01\x01", "truncated unknown fixed64"),
        (b"\x04\x95\x07\x01\x01", "truncated unknown fixed32"),
        (b"\x04\x8a\x07\x05a", "truncated unknown bytes"),
    ],
)
def test_malformed_frames_raise_decode_error(frame: bytes, reason: str) -> None:
    with pytest.raises(DecodeError):
        PROTOBUF.decode_commands(frame)


def test_every_truncation_of_a_frame_raises() -> None:
    sdk = pb.Command(
        id=1, connect=pb.ConnectRequest(token="t", data=b"xyz", headers={"a": "b"})
    )
    sdk.connect.subs["s"].offset = 5
    frame = delimited(sdk.SerializeToString())
    for cut in range(len(frame)):
        with pytest.raises(DecodeError):
            PROTOBUF.decode_commands(frame[:cut])


def test_deep_nesting_is_a_decode_error_not_recursion_error() -> None:
    node = b""
    for _ in range(5000):
        node = b"\x32" + delimited(node)  # FilterNode.nodes
    body = b"\x2a" + delimited(b"\x6a" + delimited(node))  # Command.subscribe.tf
    with pytest.raises(DecodeError):
        PROTOBUF.decode_commands(delimited(body))


def test_moderate_nesting_is_accepted() -> None:
    tree = FilterNode(op="leaf")
    for _ in range(50):
        tree = FilterNode(op="not", nodes=[tree])
    cmd = Command(subscribe=SubscribeRequest(channel="c", tf=tree))
    assert PROTOBUF.decode_commands(delimited(encode_message(cmd))) == [cmd]


# ---- fuzz ----------------------------------------------------------------------------


def _sample_bodies() -> list[bytes]:
    conn = pb.Command(
        id=3,
        connect=pb.ConnectRequest(
            token="tok", data=b"\x01\x02", headers={"h": "v"}, flag=-1
        ),
    )
    conn.connect.subs["a"].recover = True
    conn.connect.subs["a"].offset = 2**40
    conn.connect.subs["a"].tf.nodes.add(key="k", vals=["v"])
    hist = pb.Command(id=4, history=pb.HistoryRequest(channel="h", limit=-1))
    hist.history.since.epoch = "e"
    return [conn.SerializeToString(), hist.SerializeToString()]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(out) + 1)
        op = rng.randrange(3)
        if op == 0 and pos < len(out):
            out[pos] = rng.randrange(256)
        elif op == 1 and pos < len(out):
            del out[pos]
        else:
            out.insert(pos, rng.randrange(256))
    return bytes(out)


def _decode_or_error(frame: bytes) -> list[Command] | None:
    try:
        return PROTOBUF.decode_commands(frame)
    except DecodeError:
        return None


def test_fuzz_random_bytes_only_raise_decode_error() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        _decode_or_error(rng.randbytes(rng.randrange(0, 64)))


def test_fuzz_mutated_frames_only_raise_decode_error() -> None:
    rng = random.Random(7)
    frame = b"".join(delimited(body) for body in _sample_bodies())
    decoded = 0
    for _ in range(3000):
        decoded += _decode_or_error(_mutate(rng, frame)) is not None
    assert decoded > 0  # the mutations do reach the field decoders


def _sdk_stashed_map_entry(msg: PbMessage) -> bool:
    """Whether upb kept a map entry holding an unknown field as an unknown field.

    protobuf-go (and Centrifugo's vtprotobuf code) skips the unknown field and keeps the
    entry, as our codec does; upb instead drops the entry from the map.
    """
    map_numbers = {
        fd.number
        for fd in msg.DESCRIPTOR.fields
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry
    }
    if any(f.field_number in map_numbers for f in UnknownFieldSet(msg)):
        return True
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            values = (
                value.values()
                if fd.message_type.fields_by_name["value"].message_type
                else []
            )
        elif fd.is_repeated:
            values = value
        else:
            values = [value]
        if any(_sdk_stashed_map_entry(v) for v in values):
            return True
    return False


def test_map_entry_with_unknown_field_is_kept() -> None:
    entry = b"\x0a\x01h" + b"\xf8\x01\x76" + b"\x12\x01v"  # key, unknown 31, value
    req = decode_message(ConnectRequest, b"\x32" + delimited(entry))
    assert req.headers == {"h": "v"}


def test_fuzz_mutated_commands_agree_with_sdk() -> None:
    rng = random.Random(11)
    bodies = _sample_bodies()
    agreed = 0
    for _ in range(3000):
        body = _mutate(rng, rng.choice(bodies))
        try:
            ours = decode_message(Command, body)
        except DecodeError:
            continue
        # The SDK only rejects more when our schema is newer (it skips those fields as
        # unknown), so anything we accept it must accept too.
        theirs = pb.Command.FromString(body)
        if _sdk_stashed_map_entry(theirs):
            continue
        # Whatever both decoders accept, they must read the same way.
        assert_same(ours, theirs)
        agreed += 1
    assert agreed > 100
