"""Search, the service layer: message search in Slack's query language, and finding
channels and people by name (docs/search.md).

It speaks domain: the query is parsed by the pure ``search_query`` module, the channels
the searcher may read are computed by the rule of ``channels.list`` (memberships, plus
public channels for non-guests) in the same snapshot as the search, and that set goes
*into* the statement (storage/search.py), so a page is never short because of hidden
hits and a removed member stops finding a channel's messages with the next search.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.chat import schema as s
from gateway.chat.errors import ChatError, bad_request
from gateway.chat.search_query import Query, QueryError, parse, resolve_dates
from storage.search import (
    LT_MARK,
    START_MARK,
    STOP_MARK,
    MessageSearch,
    SearchStore,
    SearchTimeout,
    TextTerm,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg

    from gateway.chat.service import Actor

SNIPPET_CHARS = 240
"""Without words to highlight (filters only), the snippet is the message's beginning."""
_CURSOR = re.compile(r"^(r|v)\.(\d{1,19})$")


def _timeout() -> ChatError:
    return ChatError("search_timeout", "the search took too long; narrow it with in:, from: "
                     "or a date", 503)


def snippet_html(snippet: str | None, text: str) -> str:
    """The snippet as HTML: the message's own markup escaped, matches in ``<mark>``."""
    if snippet is None:
        cut = text[:SNIPPET_CHARS]
        return html.escape(cut + ("…" if len(text) > SNIPPET_CHARS else ""), quote=False)
    escaped = html.escape(snippet, quote=False).replace(LT_MARK, "&lt;")
    return escaped.replace(START_MARK, "<mark>").replace(STOP_MARK, "</mark>")


def _cursor(value: str | None, sort: str) -> tuple[int | None, int]:
    """(before id, offset) from a cursor this search returned."""
    if value is None:
        return None, 0
    m = _CURSOR.match(value)
    if m is None or (m[1] == "r") != (sort == "recent"):
        raise bad_request("cursor: not a cursor of this search (pass next_cursor as returned, "
                          "with the same sort)")
    number = int(m[2])
    if m[1] == "r":
        return number, 0
    if number > 10_000:
        raise bad_request("cursor: relevance pages stop after 10,000 hits")
    return None, number


class SearchService:
    """``search.messages``, ``search.channels``, ``search.users`` over a SearchStore."""

    def __init__(self, store: SearchStore, to_message: Callable[..., s.Message],
                 to_channel: Callable[..., s.Channel]) -> None:
        self.store = store
        self._to_message = to_message
        self._to_channel = to_channel

    async def messages(self, actor: Actor, p: s.SearchMessages,
                       now: datetime | None = None) -> s.SearchMessagesResult:
        """A page of messages the caller may read that match the query."""
        try:
            query = parse(p.q)
        except QueryError as exc:
            raise bad_request(f"q: {exc}") from None
        try:
            tz = ZoneInfo(p.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise bad_request(f"tz: unknown time zone {p.tz!r} (use an IANA name such as "
                              "Europe/Paris, or UTC)") from None
        before_id, offset = _cursor(p.cursor, p.sort)
        start, end = resolve_dates(query.dates, now or datetime.now(UTC), tz)
        empty = s.SearchMessagesResult(hits=[], total=0, total_more=False)
        if start is not None and end is not None and start >= end:
            return empty
        async with self.store.snapshot() as conn:
            channels = await self._channels(conn, actor, query)
            if not channels:
                return empty
            search = MessageSearch(
                channel_ids=channels,
                terms=[TextTerm(t.kind, t.text, t.prefix) for t in query.terms],
                excluded=[TextTerm(t.kind, t.text) for t in query.excluded],
                author_ids=[actor.id if u == "me" else u for u in query.from_users],
                start=start, end=end,
                has_link="link" in query.has, has_code="code" in query.has,
                has_pin="pin" in query.has, has_reaction="reaction" in query.has,
                is_thread="thread" in query.is_, sort=p.sort, before_id=before_id,
                offset=offset, limit=p.limit)
            try:
                found = await self.store.messages(conn, search)
            except SearchTimeout:
                raise _timeout() from None
            refs = await self.store.channel_refs(conn, list({r["channel_id"] for r in found.rows}))
            names = await self.store.display_names(conn, list({r["author_id"] for r in found.rows}))
        hits = [s.SearchHit(
            message=self._to_message(r, found.reactions.get(r["id"])),
            channel=s.SearchChannelRef(**refs[r["channel_id"]]),
            author=s.SearchAuthor(id=r["author_id"], display_name=names.get(r["author_id"], "")),
            snippet=snippet_html(r["snippet"], r["text"])) for r in found.rows]
        next_cursor = None
        if found.has_more and hits:
            next_cursor = (f"v.{offset + len(hits)}" if found.ranked
                           else f"r.{hits[-1].message.id}")
        return s.SearchMessagesResult(hits=hits, total=found.total, total_more=found.total_more,
                                      next_cursor=next_cursor, total_estimated=found.estimated)

    async def _channels(self, conn: asyncpg.Connection, actor: Actor, query: Query) -> list[str]:
        """The channels to search: readable ones, narrowed to ``in:`` when given."""
        readable = await SearchStore.readable_channels(conn, actor.id, public=actor.role != "guest")
        if not (query.in_channels or query.in_dms):
            return readable
        wanted: set[str] = set()
        if query.in_channels:
            rows = await SearchStore.channels_named(conn, query.in_channels, readable)
            found = {r["name"] for r in rows} | {r["id"] for r in rows}
            for name in query.in_channels:
                if name not in found:
                    # The same answer for a missing channel and a private one: no leak.
                    raise bad_request(f"q: in:#{name}: no channel of that name that you can read")
            wanted.update(r["id"] for r in rows)
        if query.in_dms:
            others = [actor.id if u == "me" else u for u in query.in_dms]
            rows = await SearchStore.dms_with(conn, actor.id, others)
            found = {r["other"] for r in rows}
            for user in others:
                if user not in found:
                    raise bad_request(f"q: in:@{user}: you have no direct message with @{user}")
            wanted.update(r["id"] for r in rows)
        return sorted(wanted)

    async def channels(self, actor: Actor, p: s.SearchNames) -> s.SearchChannelsResult:
        """Public and private channels the caller may see, by name (private: members only)."""
        async with self.store.snapshot() as conn:
            try:
                rows = await self.store.channels(conn, actor.id, p.q, public=actor.role != "guest",
                                                 limit=p.limit)
            except SearchTimeout:
                raise _timeout() from None
        return s.SearchChannelsResult(channels=[self._to_channel(r, r["member_role"]) for r in rows])

    async def people(self, actor: Actor, p: s.SearchNames) -> s.SearchUsersResult:
        """People by id or display name."""
        async with self.store.snapshot() as conn:
            try:
                rows = await self.store.people(conn, p.q, limit=p.limit)
            except SearchTimeout:
                raise _timeout() from None
        return s.SearchUsersResult(users=[
            s.SearchUser(id=r["id"], display_name=r["display_name"], title=r["title"], role=r["role"])
            for r in rows])
