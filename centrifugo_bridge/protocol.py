"""Wire types of the Centrifugo client protocol v2 (centrifugal/protocol client.proto).

Every message is a msgspec Struct whose field names are the proto field names, so the
JSON codec encodes/decodes them directly. Application payloads (`data`, `info`,
`conn_info`, `chan_info`) are `msgspec.Raw`: embedded JSON values in the JSON codec and
opaque bytes in the Protobuf codec. ``omit_defaults`` mirrors Go's ``omitempty``; fields
that Centrifugo always emits are declared without a default so they are always encoded.

Each Struct carries ``__proto__``: ``{field_name: (number, kind)}`` for the Protobuf codec.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Raw

__all__ = [
    "ClientInfo", "Command", "ConnectRequest", "ConnectResult", "Error", "FilterNode",
    "HistoryRequest", "HistoryResult", "Join", "Leave", "Message", "PingRequest", "PingResult",
    "PresenceRequest", "PresenceResult", "PresenceStatsRequest", "PresenceStatsResult",
    "Publication", "PublishRequest", "PublishResult", "Push", "RPCRequest", "RPCResult", "Raw",
    "RefreshRequest", "RefreshResult", "Reply", "SendRequest", "StreamPosition",
    "SubRefreshRequest", "SubRefreshResult", "Subscribe", "SubscribeRequest",
    "SubscribeResult", "Unsubscribe", "UnsubscribeRequest", "UnsubscribeResult",
    "Connect", "Disconnect", "Refresh", "EMPTY",
]

EMPTY = Raw()

# Proto unsigned integers: Go's decoder refuses a negative or too large value (a frame that
# does not decode: disconnect 3501), so the JSON decoder does too. Checked on decode only.
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, msgspec.Meta(ge=0)]  # msgspec cannot bound ints past int64: no upper check

# Kinds understood by the Protobuf codec. "msg:<Name>" / "rep:<Name>" / "map:<Name>"
# refer to other Structs in this module; "map:str" is map<string,string>.
Proto = dict[str, tuple[int, str]]


class _Wire(msgspec.Struct, omit_defaults=True):
    __proto__: ClassVar[Proto] = {}


class Error(_Wire):
    code: int
    message: str
    temporary: bool = False
    __proto__: ClassVar[Proto] = {"code": (1, "uint32"), "message": (2, "string"), "temporary": (3, "bool")}


class StreamPosition(_Wire):
    offset: U64 = 0
    epoch: str = ""
    __proto__: ClassVar[Proto] = {"offset": (1, "uint64"), "epoch": (2, "string")}


class ClientInfo(_Wire):
    # user and client are always emitted (no omitempty in client.pb.go).
    user: str
    client: str
    conn_info: Raw = EMPTY
    chan_info: Raw = EMPTY
    __proto__: ClassVar[Proto] = {
        "user": (1, "string"), "client": (2, "string"),
        "conn_info": (3, "bytes"), "chan_info": (4, "bytes"),
    }


class Publication(_Wire):
    data: Raw = EMPTY
    info: ClientInfo | None = None
    offset: int = 0
    tags: dict[str, str] = {}
    delta: bool = False
    time: int = 0
    channel: str = ""
    key: str = ""
    removed: bool = False
    score: int = 0
    epoch: str = ""
    version: int = 0
    __proto__: ClassVar[Proto] = {
        "data": (4, "bytes"), "info": (5, "msg:ClientInfo"), "offset": (6, "uint64"),
        "tags": (7, "map:str"), "delta": (8, "bool"), "time": (9, "int64"),
        "channel": (10, "string"), "key": (11, "string"), "removed": (12, "bool"),
        "score": (13, "sint64"), "epoch": (14, "string"), "version": (16, "uint64"),
    }


class FilterNode(_Wire):
    op: str = ""
    key: str = ""
    cmp: str = ""
    val: str = ""
    vals: list[str] = []
    nodes: list[FilterNode] = []
    __proto__: ClassVar[Proto] = {
        "op": (1, "string"), "key": (2, "string"), "cmp": (3, "string"), "val": (4, "string"),
        "vals": (5, "rep:string"), "nodes": (6, "rep:FilterNode"),
    }


# ---- requests -------------------------------------------------------------------------


class SubscribeRequest(_Wire):
    channel: str = ""
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: U64 = 0
    data: Raw = EMPTY
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    delta: str = ""
    tf: FilterNode | None = None
    flag: int = 0
    type: int = 0
    phase: int = 0
    cursor: str = ""
    limit: int = 0
    asc: bool = False
    __proto__: ClassVar[Proto] = {
        "channel": (1, "string"), "token": (2, "string"), "recover": (3, "bool"),
        "epoch": (6, "string"), "offset": (7, "uint64"), "data": (8, "bytes"),
        "positioned": (9, "bool"), "recoverable": (10, "bool"), "join_leave": (11, "bool"),
        "delta": (12, "string"), "tf": (13, "msg:FilterNode"), "flag": (14, "int64"),
        "type": (15, "int32"), "phase": (16, "int32"), "cursor": (17, "string"),
        "limit": (18, "int32"), "asc": (19, "bool"),
    }


class ConnectRequest(_Wire):
    token: str = ""
    data: Raw = EMPTY
    subs: dict[str, SubscribeRequest] = {}
    name: str = ""
    version: str = ""
    headers: dict[str, str] = {}
    flag: int = 0
    dict_: str = msgspec.field(default="", name="dict")
    profile: str = ""
    __proto__: ClassVar[Proto] = {
        "token": (1, "string"), "data": (2, "bytes"), "subs": (3, "map:SubscribeRequest"),
        "name": (4, "string"), "version": (5, "string"), "headers": (6, "map:str"),
        "flag": (7, "int64"), "dict_": (8, "string"), "profile": (9, "string"),
    }


class UnsubscribeRequest(_Wire):
    channel: str = ""
    __proto__: ClassVar[Proto] = {"channel": (1, "string")}


class PublishRequest(_Wire):
    channel: str = ""
    data: Raw = EMPTY
    type: int = 0
    key: str = ""
    removed: bool = False
    __proto__: ClassVar[Proto] = {
        "channel": (1, "string"), "data": (2, "bytes"), "type": (3, "int32"),
        "key": (4, "string"), "removed": (5, "bool"),
    }


class PresenceRequest(_Wire):
    channel: str = ""
    __proto__: ClassVar[Proto] = {"channel": (1, "string")}


class PresenceStatsRequest(_Wire):
    channel: str = ""
    __proto__: ClassVar[Proto] = {"channel": (1, "string")}


class HistoryRequest(_Wire):
    channel: str = ""
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False
    __proto__: ClassVar[Proto] = {
        "channel": (1, "string"), "limit": (7, "int32"),
        "since": (8, "msg:StreamPosition"), "reverse": (9, "bool"),
    }


class PingRequest(_Wire):
    pass


class RPCRequest(_Wire):
    data: Raw = EMPTY
    method: str = ""
    __proto__: ClassVar[Proto] = {"data": (1, "bytes"), "method": (2, "string")}


class SendRequest(_Wire):
    data: Raw = EMPTY
    __proto__: ClassVar[Proto] = {"data": (1, "bytes")}


class RefreshRequest(_Wire):
    token: str = ""
    __proto__: ClassVar[Proto] = {"token": (1, "string")}


class SubRefreshRequest(_Wire):
    channel: str = ""
    token: str = ""
    type: int = 0
    __proto__: ClassVar[Proto] = {"channel": (1, "string"), "token": (2, "string"), "type": (3, "int32")}


class Command(_Wire):
    id: U32 = 0
    connect: ConnectRequest | None = None
    subscribe: SubscribeRequest | None = None
    unsubscribe: UnsubscribeRequest | None = None
    publish: PublishRequest | None = None
    presence: PresenceRequest | None = None
    presence_stats: PresenceStatsRequest | None = None
    history: HistoryRequest | None = None
    ping: PingRequest | None = None
    send: SendRequest | None = None
    rpc: RPCRequest | None = None
    refresh: RefreshRequest | None = None
    sub_refresh: SubRefreshRequest | None = None
    __proto__: ClassVar[Proto] = {
        "id": (1, "uint32"), "connect": (4, "msg:ConnectRequest"),
        "subscribe": (5, "msg:SubscribeRequest"), "unsubscribe": (6, "msg:UnsubscribeRequest"),
        "publish": (7, "msg:PublishRequest"), "presence": (8, "msg:PresenceRequest"),
        "presence_stats": (9, "msg:PresenceStatsRequest"), "history": (10, "msg:HistoryRequest"),
        "ping": (11, "msg:PingRequest"), "send": (12, "msg:SendRequest"),
        "rpc": (13, "msg:RPCRequest"), "refresh": (14, "msg:RefreshRequest"),
        "sub_refresh": (15, "msg:SubRefreshRequest"),
    }


# ---- results --------------------------------------------------------------------------


class SubscribeResult(_Wire):
    expires: bool = False
    ttl: int = 0
    recoverable: bool = False
    epoch: str = ""
    publications: list[Publication] = []
    recovered: bool = False
    offset: int = 0
    positioned: bool = False
    data: Raw = EMPTY
    was_recovering: bool = False
    delta: bool = False
    __proto__: ClassVar[Proto] = {
        "expires": (1, "bool"), "ttl": (2, "uint32"), "recoverable": (3, "bool"),
        "epoch": (6, "string"), "publications": (7, "rep:Publication"),
        "recovered": (8, "bool"), "offset": (9, "uint64"), "positioned": (10, "bool"),
        "data": (11, "bytes"), "was_recovering": (12, "bool"), "delta": (13, "bool"),
    }


class ConnectResult(_Wire):
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: int = 0
    data: Raw = EMPTY
    subs: dict[str, SubscribeResult] = {}
    ping: int = 0
    pong: bool = False
    session: str = ""
    node: str = ""
    time: int = 0
    __proto__: ClassVar[Proto] = {
        "client": (1, "string"), "version": (2, "string"), "expires": (3, "bool"),
        "ttl": (4, "uint32"), "data": (5, "bytes"), "subs": (6, "map:SubscribeResult"),
        "ping": (7, "uint32"), "pong": (8, "bool"), "session": (9, "string"),
        "node": (10, "string"), "time": (11, "int64"),
    }


class UnsubscribeResult(_Wire):
    pass


class PublishResult(_Wire):
    pass


class PresenceResult(_Wire):
    presence: dict[str, ClientInfo]
    __proto__: ClassVar[Proto] = {"presence": (1, "map:ClientInfo")}


class PresenceStatsResult(_Wire):
    num_clients: int
    num_users: int
    __proto__: ClassVar[Proto] = {"num_clients": (1, "uint32"), "num_users": (2, "uint32")}


class HistoryResult(_Wire):
    publications: list[Publication]
    epoch: str
    offset: int
    __proto__: ClassVar[Proto] = {
        "publications": (1, "rep:Publication"), "epoch": (2, "string"), "offset": (3, "uint64"),
    }


class PingResult(_Wire):
    pass


class RPCResult(_Wire):
    data: Raw = EMPTY
    __proto__: ClassVar[Proto] = {"data": (1, "bytes")}


class RefreshResult(_Wire):
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: int = 0
    __proto__: ClassVar[Proto] = {
        "client": (1, "string"), "version": (2, "string"), "expires": (3, "bool"), "ttl": (4, "uint32"),
    }


class SubRefreshResult(_Wire):
    expires: bool = False
    ttl: int = 0
    __proto__: ClassVar[Proto] = {"expires": (1, "bool"), "ttl": (2, "uint32")}


# ---- pushes ---------------------------------------------------------------------------


class Join(_Wire):
    info: ClientInfo
    __proto__: ClassVar[Proto] = {"info": (1, "msg:ClientInfo")}


class Leave(_Wire):
    info: ClientInfo
    __proto__: ClassVar[Proto] = {"info": (1, "msg:ClientInfo")}


class Unsubscribe(_Wire):
    code: int
    reason: str
    __proto__: ClassVar[Proto] = {"code": (2, "uint32"), "reason": (3, "string")}


class Subscribe(_Wire):
    recoverable: bool = False
    epoch: str = ""
    offset: int = 0
    positioned: bool = False
    data: Raw = EMPTY
    __proto__: ClassVar[Proto] = {
        "recoverable": (1, "bool"), "epoch": (4, "string"), "offset": (5, "uint64"),
        "positioned": (6, "bool"), "data": (7, "bytes"),
    }


class Message(_Wire):
    data: Raw = EMPTY
    __proto__: ClassVar[Proto] = {"data": (1, "bytes")}


class Connect(_Wire):
    client: str = ""
    version: str = ""
    data: Raw = EMPTY
    subs: dict[str, SubscribeResult] = {}
    expires: bool = False
    ttl: int = 0
    ping: int = 0
    pong: bool = False
    __proto__: ClassVar[Proto] = {
        "client": (1, "string"), "version": (2, "string"), "data": (3, "bytes"),
        "subs": (4, "map:SubscribeResult"), "expires": (5, "bool"), "ttl": (6, "uint32"),
        "ping": (7, "uint32"), "pong": (8, "bool"),
    }


class Disconnect(_Wire):
    code: int
    reason: str
    __proto__: ClassVar[Proto] = {"code": (1, "uint32"), "reason": (2, "string")}


class Refresh(_Wire):
    expires: bool = False
    ttl: int = 0
    __proto__: ClassVar[Proto] = {"expires": (1, "bool"), "ttl": (2, "uint32")}


class Push(_Wire):
    channel: str = ""
    pub: Publication | None = None
    join: Join | None = None
    leave: Leave | None = None
    unsubscribe: Unsubscribe | None = None
    message: Message | None = None
    subscribe: Subscribe | None = None
    connect: Connect | None = None
    disconnect: Disconnect | None = None
    refresh: Refresh | None = None
    __proto__: ClassVar[Proto] = {
        "channel": (2, "string"), "pub": (4, "msg:Publication"), "join": (5, "msg:Join"),
        "leave": (6, "msg:Leave"), "unsubscribe": (7, "msg:Unsubscribe"),
        "message": (8, "msg:Message"), "subscribe": (9, "msg:Subscribe"),
        "connect": (10, "msg:Connect"), "disconnect": (11, "msg:Disconnect"),
        "refresh": (12, "msg:Refresh"),
    }


class Reply(_Wire):
    id: int = 0
    error: Error | None = None
    push: Push | None = None
    connect: ConnectResult | None = None
    subscribe: SubscribeResult | None = None
    unsubscribe: UnsubscribeResult | None = None
    publish: PublishResult | None = None
    presence: PresenceResult | None = None
    presence_stats: PresenceStatsResult | None = None
    history: HistoryResult | None = None
    ping: PingResult | None = None
    rpc: RPCResult | None = None
    refresh: RefreshResult | None = None
    sub_refresh: SubRefreshResult | None = None
    __proto__: ClassVar[Proto] = {
        "id": (1, "uint32"), "error": (2, "msg:Error"), "push": (4, "msg:Push"),
        "connect": (5, "msg:ConnectResult"), "subscribe": (6, "msg:SubscribeResult"),
        "unsubscribe": (7, "msg:UnsubscribeResult"), "publish": (8, "msg:PublishResult"),
        "presence": (9, "msg:PresenceResult"), "presence_stats": (10, "msg:PresenceStatsResult"),
        "history": (11, "msg:HistoryResult"), "ping": (12, "msg:PingResult"),
        "rpc": (13, "msg:RPCResult"), "refresh": (14, "msg:RefreshResult"),
        "sub_refresh": (15, "msg:SubRefreshResult"),
    }
