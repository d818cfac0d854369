"""Request shapes of Centrifugo's server HTTP API (`POST /api/<method>`).

Field names follow Centrifugo v6 (internal/apiproto/api.proto). Payloads (`data`, `info`)
are embedded JSON (`msgspec.Raw`), with `b64data`/`b64info` for binary. Unknown fields are
ignored, as Go's decoder does.
"""

from __future__ import annotations

import base64
import binascii

import msgspec
from msgspec import Raw

from centrifugo_bridge import codes
from centrifugo_bridge.protocol import EMPTY, StreamPosition

__all__ = [
    "BatchRequest", "BroadcastRequest", "ChannelsRequest", "DisconnectRequest",
    "HistoryRemoveRequest", "HistoryRequest", "InfoRequest", "PresenceRequest",
    "PresenceStatsRequest", "PublishRequest", "RefreshRequest", "SubscribeRequest",
    "UnsubscribeRequest", "REQUESTS", "payload",
]



class _Req(msgspec.Struct):
    pass


class PublishRequest(_Req):
    channel: str = ""
    data: Raw = EMPTY
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = {}
    idempotency_key: str = ""
    delta: bool = False


class BroadcastRequest(_Req):
    channels: list[str] = []
    data: Raw = EMPTY
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = {}
    idempotency_key: str = ""
    delta: bool = False


class BoolValue(msgspec.Struct):
    value: bool = False


class SubscribeOptionOverride(msgspec.Struct):
    presence: BoolValue | None = None
    join_leave: BoolValue | None = None
    force_recovery: BoolValue | None = None
    force_positioning: BoolValue | None = None
    force_push_join_leave: BoolValue | None = None


class SubscribeRequest(_Req):
    user: str = ""
    channel: str = ""
    info: Raw = EMPTY
    b64info: str = ""
    client: str = ""
    session: str = ""
    data: Raw = EMPTY
    b64data: str = ""
    recover_since: StreamPosition | None = None
    override: SubscribeOptionOverride | None = None
    expire_at: int = 0


class UnsubscribeRequest(_Req):
    user: str = ""
    channel: str = ""
    client: str = ""
    session: str = ""


class DisconnectSpec(msgspec.Struct):
    code: int = 0
    reason: str = ""


class DisconnectRequest(_Req):
    user: str = ""
    client: str = ""
    session: str = ""
    whitelist: list[str] = []
    disconnect: DisconnectSpec | None = None


class RefreshRequest(_Req):
    user: str = ""
    client: str = ""
    session: str = ""
    expired: bool = False
    expire_at: int = 0
    info: Raw = EMPTY
    b64info: str = ""


class PresenceRequest(_Req):
    channel: str = ""


class PresenceStatsRequest(_Req):
    channel: str = ""


class HistoryRequest(_Req):
    channel: str = ""
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False


class HistoryRemoveRequest(_Req):
    channel: str = ""


class ChannelsRequest(_Req):
    pattern: str = ""


class InfoRequest(_Req):
    pass


class BatchRequest(_Req):
    commands: list[dict[str, Raw]] = []
    parallel: bool = False


REQUESTS: dict[str, type[_Req]] = {
    "publish": PublishRequest, "broadcast": BroadcastRequest, "subscribe": SubscribeRequest,
    "unsubscribe": UnsubscribeRequest, "disconnect": DisconnectRequest,
    "refresh": RefreshRequest, "presence": PresenceRequest,
    "presence_stats": PresenceStatsRequest, "history": HistoryRequest,
    "history_remove": HistoryRemoveRequest, "channels": ChannelsRequest, "info": InfoRequest,
    "batch": BatchRequest,
}


def payload(raw: Raw, b64: str) -> bytes:
    """Bytes of a `data`/`info` field: embedded JSON, else base64 (107 when undecodable).

    Raw newlines are removed: they can only be JSON whitespace, and a newline is the frame
    delimiter of the JSON client protocol.
    """
    if b64:
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise codes.error(codes.BAD_REQUEST) from None
    data = bytes(raw)
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r", b"").replace(b"\n", b"")
    return data
