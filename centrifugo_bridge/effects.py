"""Effects: what a client session asks its node to do, and what it expects back.

Session handlers are generators that ``yield`` an effect and receive its result (or have
the effect's exception thrown into them). The gateway performs effects against the hub,
broker and storage; unit tests perform them with plain Python values.
"""

from __future__ import annotations

import msgspec

from centrifugo_bridge.channels import ChannelOptions
from centrifugo_bridge.protocol import ClientInfo, Publication, StreamPosition


class Effect(msgspec.Struct, frozen=True):
    """Base class of every effect."""


class VerifyConnectionToken(Effect, frozen=True):
    """-> verified claims ``dict``; raises tokens.TokenExpired / tokens.InvalidToken."""

    token: str


class VerifySubscriptionToken(Effect, frozen=True):
    """-> verified claims ``dict``; raises tokens.TokenExpired / tokens.InvalidToken."""

    token: str


class Register(Effect, frozen=True):
    """A connection authenticated: index it by user for the server API. -> None"""

    user: str
    client: str


class SubscribeChannel(Effect, frozen=True):
    """Start delivering ``channel`` to this connection.

    -> ``StreamState`` (epoch, top offset, and — when ``since`` is set — the publications
    after ``since.offset``, at most ``recovery_limit + 1`` of them so the session can tell
    a gap that is too large). Presence and join are the node's job when the options ask.
    """

    channel: str
    info: ClientInfo
    options: ChannelOptions
    push_join_leave: bool
    since: StreamPosition | None = None
    recovery_limit: int = 0
    cache_recovery: bool = False


class StreamState(msgspec.Struct, frozen=True):
    epoch: str = ""
    offset: int = 0
    publications: list[Publication] = []


class UnsubscribeChannel(Effect, frozen=True):
    """Stop delivering ``channel``; the node removes presence and emits leave. -> None"""

    channel: str
    info: ClientInfo
    options: ChannelOptions


class PublishToChannel(Effect, frozen=True):
    """-> StreamPosition of the new publication (offset 0 / epoch "" without history)."""

    channel: str
    data: bytes
    info: ClientInfo | None
    options: ChannelOptions


class ReadPresence(Effect, frozen=True):
    """-> dict[str, ClientInfo]"""

    channel: str


class ReadPresenceStats(Effect, frozen=True):
    """-> tuple[int, int] (clients, users)"""

    channel: str


class ReadHistory(Effect, frozen=True):
    """-> StreamState with publications filtered by ``since``/``limit``/``reverse``.

    ``limit`` < 0 means all retained; 0 means none. Raises ClientError 112 when
    ``since.epoch`` does not match the stream's epoch.
    """

    channel: str
    limit: int
    since: StreamPosition | None
    reverse: bool


class CheckAccess(Effect, frozen=True):
    """Ask the namespace's access-control provider whether ``user`` may ``action``
    (``subscribe``, ``history`` or ``presence``) ``channel``. Result: bool."""

    provider: str
    channel: str
    user: str
    action: str


class CallRPC(Effect, frozen=True):
    """-> bytes (JSON or binary reply data); raises ClientError 104 for unknown methods."""

    method: str
    data: bytes
    user: str
    client: str


class SendMessage(Effect, frozen=True):
    """Asynchronous client message (no reply). Raises DisconnectError 3508 without a handler."""

    data: bytes
    user: str
    client: str
