"""The newline-delimited JSON codec: what centrifuge-js and centrifuge-python send and parse.

Field names are the proto names (snake_case), payloads are embedded JSON, several messages
share one frame joined by "\\n" (protocol encode.go / decode_stream.go).
"""

from __future__ import annotations

import orjson
import pytest

from centrifugo_bridge.codecs import JSON, DecodeError, codec_for
from centrifugo_bridge.protocol import (
    EMPTY,
    ClientInfo,
    Command,
    ConnectResult,
    Error,
    HistoryResult,
    Join,
    PresenceResult,
    PresenceStatsResult,
    Publication,
    PublishResult,
    Push,
    Raw,
    RefreshResult,
    Reply,
    RPCResult,
    SubRefreshResult,
    SubscribeResult,
    Unsubscribe,
    UnsubscribeResult,
)


def enc(reply: Reply) -> bytes:
    return JSON.encode_reply(reply)


# ---- decoding --------------------------------------------------------------------------------


def test_codec_lookup() -> None:
    assert codec_for("json") is JSON
    assert JSON.name == "json" and JSON.binary is False
    assert codec_for("protobuf").binary is True
    with pytest.raises(ValueError, match="unknown codec"):
        codec_for("msgpack")


def test_several_commands_per_frame() -> None:
    frame = (b'{"connect":{"token":"t","name":"js"},"id":1}\n'
             b'{"subscribe":{"channel":"a","flag":1},"id":2}\n'
             b'{"subscribe":{"channel":"b","recover":true,"offset":5,"epoch":"e"},"id":3}')
    cmds = JSON.decode_commands(frame)
    assert [c.id for c in cmds] == [1, 2, 3]
    assert cmds[0].connect is not None and cmds[0].connect.token == "t" and cmds[0].connect.name == "js"
    assert cmds[1].subscribe is not None and cmds[1].subscribe.flag == 1
    sub = cmds[2].subscribe
    assert sub is not None and (sub.recover, sub.offset, sub.epoch) == (True, 5, "e")


@pytest.mark.parametrize("frame", [
    b'{"id":1,"connect":{}}\n',
    b'{"id":1,"connect":{}}\n\n',
    b'\n{"id":1,"connect":{}}',
    b'{"id":1,"connect":{}}\r\n',
    b'  {"id":1,"connect":{}}  \n',
])
def test_blank_lines_and_trailing_newline(frame: bytes) -> None:
    [cmd] = JSON.decode_commands(frame)
    assert cmd.id == 1 and cmd.connect is not None


def test_crlf_separated_commands() -> None:
    cmds = JSON.decode_commands(b'{"id":1,"connect":{}}\r\n{"id":2,"ping":{}}\r\n')
    assert [c.id for c in cmds] == [1, 2]


def test_pong_is_an_empty_command() -> None:
    [cmd] = JSON.decode_commands(b"{}")
    assert cmd == Command()


def test_payloads_are_embedded_json() -> None:
    [cmd] = JSON.decode_commands(b'{"id":3,"publish":{"channel":"c","data":{"text":"hi", "n": [1, 2]}}}')
    assert cmd.publish is not None
    assert orjson.loads(bytes(cmd.publish.data)) == {"text": "hi", "n": [1, 2]}
    [cmd] = JSON.decode_commands(b'{"id":4,"rpc":{"method":"m","data":"str"}}')
    assert cmd.rpc is not None and bytes(cmd.rpc.data) == b'"str"'
    [cmd] = JSON.decode_commands(b'{"id":5,"rpc":{"method":"m"}}')
    assert cmd.rpc is not None and bytes(cmd.rpc.data) == b""


def test_unknown_fields_are_ignored() -> None:
    [cmd] = JSON.decode_commands(
        b'{"id":1,"method":7,"params":{"x":1},"connect":{"token":"t","dict":"d","profile":"p","zzz":null}}')
    assert cmd.connect is not None and cmd.connect.dict_ == "d" and cmd.connect.profile == "p"


def test_history_since_decodes() -> None:
    [cmd] = JSON.decode_commands(
        b'{"id":1,"history":{"channel":"c","limit":-1,"since":{"offset":3,"epoch":"e"},"reverse":true}}')
    h = cmd.history
    assert h is not None and h.limit == -1 and h.reverse and h.since is not None
    assert (h.since.offset, h.since.epoch) == (3, "e")


@pytest.mark.parametrize("frame", [
    b"", b"\n", b"{", b'{"id":1}\n{', b'{"id":"1"}', b'{"id":true}', b'{"connect":[]}',
    b'{"id":1,"subscribe":{"recover":"yes"}}', b"[1]", b'{"id":1,"connect":{"token":"\xc8x"}}',
    b'{"id":1,"connect":{"token":"a\\ud800b"}}',
    # Unsigned proto integers: Go refuses negative or overflowing values.
    b'{"id":-1,"connect":{}}', b'{"id":4294967296,"connect":{}}',
    b'{"id":1,"subscribe":{"channel":"c","offset":-5}}',
    b'{"id":1,"history":{"channel":"c","since":{"offset":-1}}}',
])
def test_decode_errors(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        JSON.decode_commands(frame)


# ---- encoding --------------------------------------------------------------------------------


def test_replies_are_compact() -> None:
    reply = Reply(id=3, error=Error(code=103, message="permission denied"))
    assert enc(reply) == b'{"id":3,"error":{"code":103,"message":"permission denied"}}'
    assert enc(Reply()) == b"{}"


def test_replies_carry_no_raw_newline() -> None:
    # Embedded payloads are JSON values: their raw newlines are whitespace and must go,
    # newlines inside strings are escaped by the encoder.
    pub = Publication(data=Raw(b'{\n  "text": "a\\nb"\n}\n'), offset=1)
    out = enc(Reply(push=Push(channel="c", pub=pub)))
    assert b"\n" not in out
    assert orjson.loads(out) == {"push": {"channel": "c", "pub": {"data": {"text": "a\nb"}, "offset": 1}}}
    out = enc(Reply(id=1, rpc=RPCResult(data=Raw(b'[1,\n2]'))))
    assert out == b'{"id":1,"rpc":{"data":[1,2]}}'
    out = enc(Reply(id=2, error=Error(code=400, message="line1\nline2")))
    assert b"\n" not in out and orjson.loads(out)["error"]["message"] == "line1\nline2"


def test_join_frames_several_replies() -> None:
    parts = [enc(Reply(id=1, publish=PublishResult())), enc(Reply())]
    frame = JSON.join(parts)
    assert frame == b'{"id":1,"publish":{}}\n{}'
    assert [orjson.loads(line) for line in frame.split(b"\n")] == [{"id": 1, "publish": {}}, {}]


@pytest.mark.parametrize(("reply", "wire"), [
    (Reply(id=1, presence=PresenceResult(presence={})), {"id": 1, "presence": {"presence": {}}}),
    (Reply(id=1, presence_stats=PresenceStatsResult(num_clients=0, num_users=0)),
     {"id": 1, "presence_stats": {"num_clients": 0, "num_users": 0}}),
    (Reply(id=1, history=HistoryResult(publications=[], epoch="", offset=0)),
     {"id": 1, "history": {"publications": [], "epoch": "", "offset": 0}}),
    (Reply(id=1, subscribe=SubscribeResult()), {"id": 1, "subscribe": {}}),
    (Reply(id=1, unsubscribe=UnsubscribeResult()), {"id": 1, "unsubscribe": {}}),
    (Reply(id=1, publish=PublishResult()), {"id": 1, "publish": {}}),
    (Reply(id=1, rpc=RPCResult()), {"id": 1, "rpc": {}}),
    (Reply(id=1, refresh=RefreshResult()), {"id": 1, "refresh": {}}),
    (Reply(id=1, sub_refresh=SubRefreshResult()), {"id": 1, "sub_refresh": {}}),
])
def test_result_keys_present_when_empty(reply: Reply, wire: dict[str, object]) -> None:
    assert orjson.loads(enc(reply)) == wire


def test_client_info_user_and_client_always_present() -> None:
    info = ClientInfo(user="", client="")
    assert enc(Reply(push=Push(channel="c", join=Join(info=info)))) == \
        b'{"push":{"channel":"c","join":{"info":{"user":"","client":""}}}}'
    out = orjson.loads(enc(Reply(id=1, presence=PresenceResult(presence={"c1": ClientInfo(
        user="u", client="c1", conn_info=Raw(b'{"a":1}'), chan_info=Raw(b'"x"'))}))))
    assert out["presence"]["presence"]["c1"] == {"user": "u", "client": "c1", "conn_info": {"a": 1},
                                                 "chan_info": "x"}
    pub = Publication(data=Raw(b"1"), info=ClientInfo(user="", client="c"), offset=2)
    assert orjson.loads(enc(Reply(push=Push(channel="c", pub=pub))))["push"]["pub"]["info"] == \
        {"user": "", "client": "c"}


def test_defaults_are_omitted() -> None:
    res = ConnectResult(client="c", version="1", ping=25, pong=True)
    assert orjson.loads(enc(Reply(id=1, connect=res))) == \
        {"id": 1, "connect": {"client": "c", "version": "1", "ping": 25, "pong": True}}
    res = SubscribeResult(recoverable=True, positioned=True, epoch="e", offset=0, data=EMPTY)
    assert orjson.loads(enc(Reply(id=2, subscribe=res))) == \
        {"id": 2, "subscribe": {"recoverable": True, "epoch": "e", "positioned": True}}


def test_push_wire_format() -> None:
    unsub = Reply(push=Push(channel="ch", unsubscribe=Unsubscribe(code=2000, reason="server unsubscribe")))
    # The exact string asserted in centrifuge's hub_test.go.
    assert enc(unsub) == b'{"push":{"channel":"ch","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}'
    pub = Reply(push=Push(channel="chat:1", pub=Publication(data=Raw(b'{"text":"hi"}'), offset=13)))
    assert enc(pub) == b'{"push":{"channel":"chat:1","pub":{"data":{"text":"hi"},"offset":13}}}'


def test_large_offsets_survive() -> None:
    top = 2**64 - 1
    out = enc(Reply(id=1, history=HistoryResult(publications=[], epoch="e", offset=top)))
    assert orjson.loads(out)["history"]["offset"] == top
    [cmd] = JSON.decode_commands(b'{"id":4294967295,"subscribe":{"channel":"c","offset":18446744073709551615}}')
    assert cmd.id == 2**32 - 1 and cmd.subscribe is not None and cmd.subscribe.offset == top
