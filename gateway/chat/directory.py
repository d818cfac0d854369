"""What the web client needs beyond the original operations (issue 13): the caller's own
profile, one channel, a channel's member list, the user directory. Each is an operation of
the shared table (binding.OPS), so it is both an RPC method and a /v1 route."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Annotated

import msgspec
from msgspec import Meta

from gateway.chat import schema as s
from gateway.chat.errors import bad_request

if TYPE_CHECKING:
    from gateway.chat.binding import Op
    from gateway.chat.service import Actor, ChatService

Cursor = Annotated[str, Meta(min_length=1, max_length=400)]


class ChannelMembers(s.Params):
    channel_id: s.ChannelId
    cursor: Cursor | None = None
    limit: s.PageLimit = 100


class UsersSearch(s.Params):
    # Matches the start of the display name or of the user id, ignoring case.
    prefix: Annotated[str, Meta(max_length=64)] = ""
    cursor: Cursor | None = None
    limit: s.PageLimit = 50


class MemberInfo(msgspec.Struct):
    user_id: str
    role: str
    display_name: str
    joined_at: float


class MembersPage(msgspec.Struct):
    members: list[MemberInfo]
    # Pass as ``cursor`` for the next page; null on the last one.
    next: str | None = None


class UserBrief(msgspec.Struct):
    id: str
    display_name: str
    title: str


class UsersPage(msgspec.Struct):
    users: list[UserBrief]
    next: str | None = None


def ops(make: type[Op]) -> tuple[Op, ...]:
    """The operations, built with binding's ``Op`` (passed in: binding imports this module)."""
    return (
        make("users.me", s.NoParams, s.UserResult, "GET", "/v1/me", "The caller's own profile and status"),
        make("channels.get", s.ChannelRef, s.ChannelResult, "GET", "/v1/channels/{channel_id}",
           "One channel the caller can see"),
        make("channels.members", ChannelMembers, MembersPage, "GET", "/v1/channels/{channel_id}/members",
           "Members of a channel the caller can see, by user id, paged"),
        make("users.search", UsersSearch, UsersPage, "GET", "/v1/users",
           "The user directory: name or id prefix, paged by name (guests: people sharing a channel)"),
    )


def _pack(*parts: str) -> str:
    return base64.urlsafe_b64encode("\x00".join(parts).encode()).decode().rstrip("=")


def _unpack(cursor: str, n: int) -> list[str]:
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        parts = raw.decode().split("\x00")
    except (binascii.Error, UnicodeDecodeError):
        raise bad_request("cursor is not one this API returned") from None
    if len(parts) != n:
        raise bad_request("cursor is not one this API returned")
    return parts


def _like_prefix(text: str) -> str:
    """``text`` as a LIKE prefix pattern, its own wildcards taken literally."""
    return text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# The operations, called by ChatService's methods of the same names (the SQL is
# storage/chat.py's).

async def users_me(service: ChatService, actor: Actor, p: s.NoParams) -> s.UserResult:
    return s.UserResult(user=await service._user(actor.id, actor))


async def channels_get(service: ChatService, actor: Actor, p: s.ChannelRef) -> s.ChannelResult:
    async with service.db.read() as q:
        ch, role = await service._visible(q, actor, p.channel_id)
        muted = await q.is_muted(p.channel_id, actor.id)
        members = None
        if ch["kind"] in ("dm", "group_dm"):
            members = (await q.members_of([p.channel_id])).get(p.channel_id, [])
    return s.ChannelResult(service._to_channel(ch, role, muted, members))


async def channels_members(service: ChatService, actor: Actor, p: ChannelMembers) -> MembersPage:
    after = _unpack(p.cursor, 1)[0] if p.cursor else ""
    async with service.db.read() as q:
        await service._visible(q, actor, p.channel_id)
        rows = await q.members_page(p.channel_id, after, p.limit + 1)
    more = len(rows) > p.limit
    rows = rows[: p.limit]
    return MembersPage(
        members=[MemberInfo(user_id=r["user_id"], role=r["role"], display_name=r["display_name"],
                            joined_at=r["joined_at"].timestamp()) for r in rows],
        next=_pack(rows[-1]["user_id"]) if more else None)


async def users_search(service: ChatService, actor: Actor, p: UsersSearch) -> UsersPage:
    name, uid = _unpack(p.cursor, 2) if p.cursor else ("", "")
    async with service.db.read() as q:
        # A guest sees only the people it shares a channel with (and itself).
        rows = await q.search_users(_like_prefix(p.prefix), after=(name, uid), limit=p.limit + 1,
                                    sharing_with=actor.id if actor.role == "guest" else None)
    more = len(rows) > p.limit
    rows = rows[: p.limit]
    last = rows[-1] if rows else None
    return UsersPage(
        users=[UserBrief(id=r["id"], display_name=r["display_name"], title=r["title"]) for r in rows],
        next=_pack(last["k"], last["id"]) if more and last is not None else None)
