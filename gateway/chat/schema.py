"""Wire types of the chat API: request parameters (validated: sizes, patterns, types) and
result objects, shared by the RPC and HTTP bindings and by the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from gateway.chat.ids import USER_ID_MAX, USER_ID_PATTERN

# ---- constrained scalars ------------------------------------------------------------

UserId = Annotated[str, Meta(min_length=1, max_length=USER_ID_MAX, pattern=USER_ID_PATTERN)]
ChannelId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
ChannelName = Annotated[str, Meta(min_length=1, max_length=80, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
MessageId = Annotated[int, Meta(ge=1, le=2**62)]
Text = Annotated[str, Meta(min_length=1, max_length=40_000)]
Topic = Annotated[str, Meta(max_length=250)]
Emoji = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[^\s]+$")]
ClientMsgId = Annotated[str, Meta(min_length=1, max_length=64)]
PageLimit = Annotated[int, Meta(ge=1, le=200)]
ShortText = Annotated[str, Meta(max_length=100)]
# 9999-12-31T23:59:59Z: the last second Python's datetime (and so every time field of the
# chat) can represent; beyond it a status write failed deep in the code as a 500.
MAX_UNIX_TIME = 253_402_300_799
UnixTime = Annotated[int, Meta(ge=0, le=MAX_UNIX_TIME)]


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request: unknown fields are an error, not silently ignored."""


class NoParams(Params):
    pass


class ChannelsList(Params):
    include_archived: bool = False
    joined_only: bool = False


class ChannelsCreate(Params):
    name: ChannelName
    private: bool = False
    topic: Topic = ""
    members: Annotated[list[UserId], Meta(max_length=100)] = []


class ChannelRef(Params):
    channel_id: ChannelId


class ChannelsInvite(Params):
    channel_id: ChannelId
    user_ids: Annotated[list[UserId], Meta(min_length=1, max_length=100)]


class ChannelsKick(Params):
    channel_id: ChannelId
    user_id: UserId


class ChannelsSetTopic(Params):
    channel_id: ChannelId
    topic: Topic


class DmOpen(Params):
    # The caller plus 1..7 others: a DM (2 people) or a group DM (up to 8).
    user_ids: Annotated[list[UserId], Meta(min_length=1, max_length=7)]


class MessagesSend(Params):
    channel_id: ChannelId
    text: Text
    client_msg_id: ClientMsgId | None = None
    thread_parent: MessageId | None = None
    also_to_channel: bool = False


class MessagesEdit(Params):
    message_id: MessageId
    text: Text


class MessageRef(Params):
    message_id: MessageId


class MessagesList(Params):
    channel_id: ChannelId
    before: MessageId | None = None
    after: MessageId | None = None
    limit: PageLimit = 50


class ThreadsReplies(Params):
    message_id: MessageId
    after: MessageId | None = None
    limit: PageLimit = 100


class ThreadsFollow(Params):
    message_id: MessageId
    follow: bool = True


class Reaction(Params):
    message_id: MessageId
    emoji: Emoji


class PinRef(Params):
    message_id: MessageId


class ReadMark(Params):
    channel_id: ChannelId
    message_id: Annotated[int, Meta(ge=0, le=2**62)]


class SetStatus(Params):
    """Fields left out stay as they are. ``*_until`` are Unix seconds (0 clears). A new
    ``text`` without ``until`` is a new status without an expiry: the previous status's
    ``until`` (perhaps already past, which would hide the new text) does not carry over."""

    away: bool | None = None
    dnd_until: UnixTime | None = None
    text: ShortText | None = None
    emoji: Annotated[str, Meta(max_length=64)] | None = None
    until: UnixTime | None = None
    # Only through the HTTP API with the API key (another app setting someone's status).
    user_id: UserId | None = None


class UserRef(Params):
    user_id: UserId


class SetMuted(Params):
    channel_id: ChannelId
    muted: bool


class AdminUserUpsert(Params):
    """Org-chart fields supplied by another application (HTTP API key only)."""

    user_id: UserId
    display_name: Annotated[str, Meta(max_length=200)] | None = None
    email: Annotated[str, Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    title: Annotated[str, Meta(max_length=200)] | None = None
    manager: UserId | None = None
    role: Literal["owner", "admin", "member", "guest"] | None = None


# ---- results ------------------------------------------------------------------------


class Snippet(msgspec.Struct):
    lang: str
    requested: str
    code: str
    html: str


class Message(msgspec.Struct):
    id: int
    channel_id: str
    author_id: str
    text: str
    rendered: list[Snippet]
    version: int
    deleted: bool
    created_at: float
    edited_at: float | None = None
    client_msg_id: str | None = None
    thread_parent: int | None = None
    also_to_channel: bool = False
    reply_count: int = 0
    reply_users: list[str] = []
    last_reply_at: float | None = None
    reactions: dict[str, list[str]] = {}
    # Posted by an app (gateway/integrations): its Block Kit blocks, the app, and how it
    # shows (a webhook's username / icon); None for people's messages.
    blocks: list[dict[str, Any]] | None = None
    app_id: str | None = None
    bot_profile: dict[str, str] | None = None
    # Link previews attached after the send (gateway/integrations/unfurl.py): link, chart
    # or file cards; None until (unless) one was made.
    previews: list[dict[str, Any]] | None = None


class MessageVersion(msgspec.Struct):
    version: int
    text: str
    editor_id: str
    replaced_at: float


class Channel(msgspec.Struct):
    id: str
    kind: str
    name: str
    topic: str
    archived: bool
    created_by: str
    created_at: float
    member: bool
    member_role: str | None = None
    muted: bool = False
    members: list[str] | None = None
    subscription: str = ""


class Position(msgspec.Struct):
    """Where the channel's real-time stream stood before the read: subscribe with
    recovery from here to get every event the page may not include."""

    offset: int
    epoch: str


class MessagePage(msgspec.Struct):
    messages: list[Message]
    has_more: bool
    position: Position | None = None


class Status(msgspec.Struct):
    online: bool
    away: bool
    dnd: bool
    dnd_until: float | None
    text: str
    emoji: str
    until: float | None


class User(msgspec.Struct):
    id: str
    display_name: str
    title: str
    manager: str
    role: str
    status: Status
    email: str | None = None


class UnreadCount(msgspec.Struct):
    channel_id: str
    unread: int
    mentions: int
    last_read_id: int
    # More unread than the counts say (they stop at 1,000: "1000+").
    more: bool = False


class ChannelResult(msgspec.Struct):
    channel: Channel


class ChannelsResult(msgspec.Struct):
    channels: list[Channel]


class MessageResult(msgspec.Struct):
    message: Message
    # False when a retry (same client_msg_id) found the message already sent.
    created: bool = True


class VersionsResult(msgspec.Struct):
    message: Message
    versions: list[MessageVersion]


class PinsResult(msgspec.Struct):
    messages: list[Message]


class UnreadResult(msgspec.Struct):
    channels: list[UnreadCount]


class UserResult(msgspec.Struct):
    user: User


class Ok(msgspec.Struct):
    ok: bool = True


# ---- search (gateway/chat/search.py, docs/search.md) ----------------------------------

SearchText = Annotated[str, Meta(max_length=1000, description=(
    "the query in Slack's language: words, \"phrases\", -excluded, from:@user, in:#channel, "
    "in:@user, before:/after:/on:/during: dates, has:link|code|pin|reaction, is:thread"))]
NameQuery = Annotated[str, Meta(min_length=1, max_length=100)]


class SearchMessages(Params):
    q: SearchText
    sort: Literal["recent", "relevance"] = "recent"
    cursor: Annotated[str, Meta(max_length=100)] | None = None
    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    # Dates in the query (on:2024-05-01, today...) are days in this IANA time zone.
    tz: Annotated[str, Meta(min_length=1, max_length=64)] = "UTC"


class SearchNames(Params):
    q: NameQuery
    limit: Annotated[int, Meta(ge=1, le=50)] = 20


class SearchChannelRef(msgspec.Struct):
    id: str
    kind: str
    name: str


class SearchAuthor(msgspec.Struct):
    id: str
    display_name: str


class SearchHit(msgspec.Struct):
    message: Message
    channel: SearchChannelRef
    author: SearchAuthor
    # The matching passage, HTML-escaped, matches wrapped in <mark>...</mark>.
    snippet: str


class SearchMessagesResult(msgspec.Struct):
    hits: list[SearchHit]
    # Matches the searcher may read; with total_more, "more than total" (counting stops).
    total: int
    total_more: bool
    next_cursor: str | None = None
    # True when total is an estimate (many matches: counting them all costs too much).
    total_estimated: bool = False


class SearchChannelsResult(msgspec.Struct):
    channels: list[Channel]


class SearchUser(msgspec.Struct):
    id: str
    display_name: str
    title: str
    role: str


class SearchUsersResult(msgspec.Struct):
    users: list[SearchUser]
