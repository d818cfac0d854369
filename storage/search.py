"""Search over the chat tables (migration 0007_search.sql): every SQL statement of message,
channel and people search, and the batched backfill of the message search vectors.

The service (gateway/chat/search.py) parses the user's query and decides which channels the
searcher may read; this module turns those validated pieces into one parameterised
statement. The user's words only ever travel as parameters of ``plainto_tsquery`` /
``phraseto_tsquery`` (which never raise on any text), so no query reaches PostgreSQL as
SQL or tsquery syntax.

The pool may point at a read replica (``storage.search_dsn``). Its connections plan every
statement for its own parameters (``plan_cache_mode = force_custom_plan``): asyncpg
prepares statements, and PostgreSQL's generic plan for a prepared search cannot see how
many channels or which words it is given, which measured 6 to 30 times slower
(docs/search.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg

from storage.chat import ChatQueries, Row

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 5000
"""A search that has not answered in this long is cancelled (SearchTimeout)."""
COUNT_CAP = 1000
"""Totals are exact up to here; beyond, the answer says "more than 1000"."""
WALK_ABOVE_ESTIMATE = 5000
"""Above this many estimated matches, a newest-first walk finds a page fastest."""
WALK_BUDGET_MS = 100
"""A walk that has not filled its page by then is abandoned for the exact path."""
SHORT_WALK_ABOVE_ESTIMATE = 100
SHORT_WALK_BUDGET_MS = 30
"""Between 100 and WALK_ABOVE_ESTIMATE estimated matches the estimate is least reliable
(phrases are underestimated 4-10x): a short walk first, then the exact path."""
WALK_ROWS_PER_MS = 4000
"""Messages a newest-first walk reads per millisecond with the pages cached (measured 4,900-
5,900 at 2M and 10M messages on this machine's 2 cores; 1,000 when they must come from the
OS: docs/search.md). A walk expected to read more than its budget allows is not tried."""
SEARCH_WORK_MEM = "64MB"
"""work_mem of the search pool: the bitmap of a member of 50 channels' messages (434,000 rows
at 10M) stays exact; at 16 MB it turned lossy and the heap recheck read 6x the pages."""
PHRASE_UNDERESTIMATE = 4
"""The planner underestimates a phrase's matches 4-10x (docs/search.md)."""
SORT_ALL_BELOW_ESTIMATE = 20_000
"""After a walk ran out of time or was not tried (matches sparse), the exact path sorts every
readable match for the newest COUNT_CAP + 1 in one statement, unless the planner expects
more than this many (then it counts up to COUNT_CAP + 1 and stops)."""
ID_TIME_MARGIN = timedelta(minutes=10)
"""How far a send's created_at (its transaction's start) may precede its id's allocation."""

RANK_CANDIDATES = 1000
"""Relevance ranks the newest this-many matches: ranking every match of a common word
costs seconds (docs/search.md), and recent messages are what people look for."""
START_MARK, STOP_MARK = "\ue000", "\ue001"
"""Highlight markers: private-use characters, removed from the text before highlighting,
so the service can escape the message's own markup and then turn these into tags."""
LT_MARK = "\x01"
"""Stands for "<" in the text given to the parser (chat_search_text, migration 0007)."""

# (index name, CREATE statement without CONCURRENTLY / IF NOT EXISTS) of the indexes the
# migration builds on a small table and SearchIndexer builds concurrently on a big one.
SEARCH_INDEXES: tuple[tuple[str, str], ...] = (
    ("chat_messages_search_idx", "ON chat_messages USING gin (search_tsv)"),
    ("chat_messages_search_channel_idx", "ON chat_messages (channel_id, id)"),
    ("chat_messages_search_author_idx", "ON chat_messages (author_id, id)"),
    ("chat_messages_search_created_idx", "ON chat_messages (created_at)"),
)

_EN = "'sentchat_english'::regconfig"
_BITMAP_ONLY = "SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off"
_WALK_ONLY = ("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; "
              "SET LOCAL enable_indexscan = on")
_ANY_PLAN = ("SET LOCAL enable_seqscan = on; SET LOCAL enable_indexscan = on; "
             "SET LOCAL enable_bitmapscan = on")
_SIMPLE = "'sentchat_simple'::regconfig"


class SearchTimeout(Exception):
    """The statement ran past STATEMENT_TIMEOUT_MS."""


@dataclass(frozen=True, slots=True)
class TextTerm:
    """A word or phrase to match; ``prefix`` also matches words it begins."""

    kind: Literal["word", "phrase"]
    text: str
    prefix: bool = False


@dataclass(slots=True)
class MessageSearch:
    """What to find. ``channel_ids`` is the complete set the searcher may read (and, with
    ``in:``, asked for): the statement never looks outside it."""

    channel_ids: Sequence[str]
    terms: Sequence[TextTerm] = ()
    excluded: Sequence[TextTerm] = ()
    author_ids: Sequence[str] = ()
    start: datetime | None = None
    end: datetime | None = None
    has_link: bool = False
    has_code: bool = False
    has_pin: bool = False
    has_reaction: bool = False
    is_thread: bool = False
    sort: Literal["recent", "relevance"] = "recent"
    before_id: int | None = None   # recent: the page starts below this id
    offset: int = 0                # relevance: ranks already shown
    limit: int = 20


@dataclass(slots=True)
class MessageHits:
    """A page of hits (chat_messages columns + ``snippet`` with START/STOP_MARK),
    their reactions, and the total (``total_more``: at least ``total``)."""

    rows: list[Row]
    reactions: dict[int, dict[str, list[str]]]
    total: int
    total_more: bool
    has_more: bool
    ranked: bool = False
    estimated: bool = False   # total is the planner's estimate (many matches)


class _Sql:
    """Positional parameters collected while building one statement."""

    def __init__(self) -> None:
        self.args: list[object] = []

    def p(self, value: object, cast: str = "") -> str:
        self.args.append(value)
        return f"${len(self.args)}{cast}"


def _tsquery(sql: _Sql, t: TextTerm) -> str:
    text = sql.p(t.text, "::text")
    if t.kind == "phrase":
        return f"(phraseto_tsquery({_EN}, {text}) || phraseto_tsquery({_SIMPLE}, {text}))"
    if t.prefix and t.text.isalnum():
        # Only letters and digits reach to_tsquery's syntax (checked here, not trusted).
        return f"(plainto_tsquery({_EN}, {text}) || to_tsquery({_SIMPLE}, {text} || ':*'))"
    return f"(plainto_tsquery({_EN}, {text}) || plainto_tsquery({_SIMPLE}, {text}))"


def _match(sql: _Sql, s: MessageSearch) -> str | None:
    """The tsquery expression of the search's words, None without words."""
    parts = [_tsquery(sql, t) for t in s.terms]
    parts += [f"!!{_tsquery(sql, t)}" for t in s.excluded]
    return " && ".join(parts) if parts else None


def _where(sql: _Sql, s: MessageSearch, tsq: str | None) -> list[str]:
    where = [f"m.channel_id = ANY({sql.p(list(s.channel_ids), '::text[]')})", "NOT m.deleted"]
    if tsq is not None:
        where.append(f"m.search_tsv @@ ({tsq})")
    if s.author_ids:
        where.append(f"m.author_id = ANY({sql.p(list(s.author_ids), '::text[]')})")
    if s.start is not None:
        where.append(f"m.created_at >= {sql.p(s.start, '::timestamptz')}")
    if s.end is not None:
        where.append(f"m.created_at < {sql.p(s.end, '::timestamptz')}")
    if s.has_link:
        where.append(r"m.text ~* '(https?|ftp)://|\mwww\.'")
    if s.has_code:
        where.append("strpos(m.text, '`') > 0")
    if s.has_pin:
        where.append("EXISTS (SELECT 1 FROM chat_pins p WHERE p.message_id = m.id)")
    if s.has_reaction:
        where.append("EXISTS (SELECT 1 FROM chat_reactions r WHERE r.message_id = m.id)")
    if s.is_thread:
        where.append("(m.thread_parent IS NOT NULL OR m.reply_count > 0)")
    return where


_COLUMNS = """m.id, m.channel_id, m.author_id, m.client_msg_id, m.text, m.rendered, m.mentions,
              m.thread_parent, m.also_to_channel, m.reply_count, m.reply_users, m.last_reply_at,
              m.version, m.edited_at, m.deleted, m.created_at"""


class SearchStore:
    """Search statements on their own pool (the primary, or a read replica)."""

    def __init__(self, pool: asyncpg.Pool, *, trigram: bool, unaccent: bool) -> None:
        self.pool = pool
        self.trigram = trigram
        self.unaccent = unaccent

    @classmethod
    async def open(cls, dsn: str, pool_size: int) -> SearchStore:
        """A store on a new pool; notes whether pg_trgm and unaccent are installed."""
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=pool_size,
            # No parallel workers: on a few cores shared by concurrent searches their start
            # costs more than the walks they would split (measured 145 ms -> 29 ms).
            server_settings={"plan_cache_mode": "force_custom_plan", "work_mem": SEARCH_WORK_MEM,
                             "max_parallel_workers_per_gather": "0",
                             "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                             "default_transaction_read_only": "on"})
        async with pool.acquire() as conn:
            found = {r["extname"] for r in await conn.fetch(
                "SELECT extname FROM pg_extension WHERE extname IN ('pg_trgm', 'unaccent')")}
            ready = await conn.fetchval(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = ANY($1::text[]) AND i.indisvalid",
                [name for name, _ in SEARCH_INDEXES])
        if ready < len(SEARCH_INDEXES):
            log.warning("search indexes are not built yet: run `sentchat migrate` "
                        "(searches scan the table until then)")
        return cls(pool, trigram="pg_trgm" in found, unaccent="unaccent" in found)

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        """One read-only REPEATABLE READ transaction: the access check and the search see
        the same membership."""
        async with self.pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            yield conn

    # ---- access ----------------------------------------------------------------------

    @staticmethod
    async def readable_channels(conn: asyncpg.Connection, user: str, *, public: bool) -> list[str]:
        """Channel ids the user may read: its memberships, and with ``public`` every public
        channel (the rule of ``channels.list`` / rbac.can_see)."""
        rows = await conn.fetch(
            """SELECT channel_id AS id FROM chat_members WHERE user_id = $1
               UNION
               SELECT id FROM chat_channels WHERE $2 AND kind = 'public'""", user, public)
        return [r["id"] for r in rows]

    @staticmethod
    async def channels_named(conn: asyncpg.Connection, names: Sequence[str],
                             among: Sequence[str]) -> list[Row]:
        """(id, name) of the channels among ``among`` whose name (any case) or id is listed."""
        return list(await conn.fetch(
            """SELECT id, lower(name) AS name FROM chat_channels
               WHERE id = ANY($2::text[]) AND (lower(name) = ANY($1::text[]) OR id = ANY($1::text[]))""",
            list(names), list(among)))

    @staticmethod
    async def dms_with(conn: asyncpg.Connection, user: str, others: Sequence[str]) -> list[Row]:
        """(id, other) of the two-person DMs between ``user`` and each of ``others``."""
        return list(await conn.fetch(
            """SELECT c.id, o.user_id AS other FROM chat_channels c
               JOIN chat_members me ON me.channel_id = c.id AND me.user_id = $1
               JOIN chat_members o ON o.channel_id = c.id AND o.user_id = ANY($2::text[])
               WHERE c.kind = 'dm' AND (o.user_id <> $1 OR NOT EXISTS (
                   SELECT 1 FROM chat_members x WHERE x.channel_id = c.id AND x.user_id <> $1))""",
            user, list(others)))

    @staticmethod
    async def channel_refs(conn: asyncpg.Connection, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """{id: {id, kind, name}} of these channels."""
        rows = await conn.fetch("SELECT id, kind, name FROM chat_channels WHERE id = ANY($1::text[])",
                                list(ids))
        return {r["id"]: dict(r) for r in rows}

    @staticmethod
    async def display_names(conn: asyncpg.Connection, ids: Sequence[str]) -> dict[str, str]:
        """{user id: display name} of these users."""
        rows = await conn.fetch("SELECT id, display_name FROM chat_users WHERE id = ANY($1::text[])",
                                list(ids))
        return {r["id"]: r["display_name"] for r in rows}

    # ---- messages --------------------------------------------------------------------

    async def messages(self, conn: asyncpg.Connection, s: MessageSearch) -> MessageHits:
        """A page of matching messages, newest first or by rank, with highlighted snippets;
        raises SearchTimeout."""
        if not s.channel_ids:
            return MessageHits([], {}, 0, False, False)
        try:
            return await self._messages(conn, s)
        except asyncpg.QueryCanceledError:
            raise SearchTimeout from None

    async def _messages(self, conn: asyncpg.Connection, s: MessageSearch) -> MessageHits:
        sql = _Sql()
        tsq = _match(sql, s)
        where = _where(sql, s, tsq)
        id_range: tuple[int | None, int | None] = (None, None)
        if s.start is not None or s.end is not None:
            bounds, id_range = await self._id_bounds(conn, sql, s)
            where += bounds
        ranked = s.sort == "relevance" and bool(s.terms)
        conditions = " AND ".join(where)
        count_sql = f"SELECT count(*) FROM (SELECT 1 FROM chat_messages m WHERE {conditions} LIMIT {COUNT_CAP + 1}) AS c"  # noqa: S608
        ids_sql = f"SELECT m.id FROM chat_messages m WHERE {conditions} LIMIT {COUNT_CAP + 1}"  # noqa: S608
        newest_sql = f"{ids_sql.removesuffix(f' LIMIT {COUNT_CAP + 1}')} ORDER BY m.id DESC LIMIT {COUNT_CAP + 1}"
        count_args = list(sql.args)
        if ranked:
            # Two stages: the newest RANK_CANDIDATES matches, then ranked among themselves.
            page = (
                f"""SELECT id FROM (
                            SELECT m.id, ts_rank_cd(m.search_tsv, ({tsq})) AS rank
                            FROM (SELECT m.id, m.search_tsv FROM chat_messages m
                                  WHERE {' AND '.join(where)}
                                  ORDER BY m.id DESC LIMIT {RANK_CANDIDATES}) AS m) AS ranked
                        ORDER BY rank DESC, id DESC
                        OFFSET {sql.p(s.offset, '::int')} LIMIT {sql.p(s.limit + 1, '::int')}""")  # noqa: S608
        else:
            if s.before_id is not None:
                where.append(f"m.id < {sql.p(s.before_id, '::bigint')}")
            page = (
                f"""SELECT m.id FROM chat_messages m WHERE {' AND '.join(where)}
                        ORDER BY m.id DESC LIMIT {sql.p(s.limit + 1, '::int')}""")  # noqa: S608
        # The plan is chosen per query (measured at 10M messages: no one plan serves all).
        # - Matches expected (the planner's estimate): first walk ids newest first, where a
        #   page fills fast when matches are many; the total is then an estimate. The walk
        #   has a time budget (longer when many are expected; none for a handful), because
        #   estimates fail both ways: an absent word looks frequent, a phrase of frequent
        #   words looks 4-10x rarer than it is. A walk reads every message of the id range,
        #   readable or not, so one that would read more than its budget allows even if the
        #   estimate is right (matches sparse among the messages: a member of few channels,
        #   a prefix of a rarer word) is not tried.
        # - Otherwise, or when the walk ran out of time: the exact path, on bitmap scans
        #   only (a GIN bitmap of the words; the planner, misjudging a rare or absent word as
        #   frequent, would otherwise scan the table hoping for an early stop). One
        #   statement fetches the matches' ids: the newest COUNT_CAP + 1 when they are
        #   sparse (it visits every readable match to sort them), else any COUNT_CAP + 1 (it
        #   stops there). When that is all of them it is the total and the page at once
        #   (each bitmap statement builds the searcher's channel bitmap again: 430,000 rows
        #   for a member of 50 channels at 10M messages); many after all: a walk for the
        #   page, with a budget, then the bitmap sorted.
        ids: list[int] | None = None
        total = 0
        estimated = False
        if tsq is not None:
            estimate = await self._estimate(conn, conditions, count_args)
            budget = (WALK_BUDGET_MS if estimate > WALK_ABOVE_ESTIMATE
                      else SHORT_WALK_BUDGET_MS if estimate > SHORT_WALK_ABOVE_ESTIMATE else 0)
            # How many messages a walk would read to fill the page, if the estimate is
            # right (phrases: at least PHRASE_UNDERESTIMATE times more matches): a walk
            # reads every message of the id range, readable or not, newest first.
            expected = estimate * (PHRASE_UNDERESTIMATE if any(
                t.kind == "phrase" for t in s.terms) else 1)
            walk_rows = (s.limit + 1) * await self._span(conn, id_range) / max(expected, 1)
            sparse = not ranked and walk_rows > (budget or WALK_BUDGET_MS) * WALK_ROWS_PER_MS
            if sparse:
                budget = 0  # it would run out of time: the exact path directly
            if budget:
                ids = await self._walk(conn, page, sql.args, budget)
                if ids is not None and (len(ids) > s.limit or s.before_id is not None or s.offset):
                    # A full page came fast: there are many; the estimate can only be low.
                    total, estimated = max(estimate, len(ids)), True
                elif ids is not None:
                    total = len(ids)  # the whole result fits the page: exact
            if ids is None:
                await conn.execute(_BITMAP_ONLY)
                if ranked:
                    total = await conn.fetchval(count_sql, *count_args)
                else:
                    # The matches' ids themselves, so that the count is also the page, in
                    # one statement. After a walk ran out of time the matches are sparse
                    # among the messages: the newest COUNT_CAP + 1 (the bitmap visits every
                    # readable match to sort them); otherwise any COUNT_CAP + 1 (it stops
                    # there), all of them when there are no more.
                    sparse = (sparse or bool(budget)) \
                        and expected <= SORT_ALL_BELOW_ESTIMATE
                    found = sorted((r["id"] for r in await conn.fetch(
                        newest_sql if sparse else ids_sql, *count_args)), reverse=True)
                    total = len(found)
                    below = [i for i in found if s.before_id is None or i < s.before_id]
                    if total <= COUNT_CAP or (sparse and len(below) > s.limit):
                        ids = below[:s.limit + 1]
                if ids is None and total > COUNT_CAP and not budget and not sparse:
                    # Many, though few were expected: a walk finds a page fastest unless
                    # they are sparse among the messages (then the bitmap below).
                    ids = await self._walk(conn, page, sql.args, WALK_BUDGET_MS)
                if ids is None:
                    await conn.execute(_BITMAP_ONLY)
                    ids = [r["id"] for r in await conn.fetch(page, *sql.args)]
                await conn.execute(_ANY_PLAN)
        else:
            total = await conn.fetchval(count_sql, *count_args)
            ids = [r["id"] for r in await conn.fetch(page, *sql.args)]
        has_more = len(ids) > s.limit
        ids = ids[:s.limit]
        rows: list[Row] = []
        if ids:
            # Headlines re-parse the text: only for the page's rows (a statement of its own,
            # whose parameters are only the words and the ids).
            hl = _Sql()
            hl_tsq = _match(hl, s)
            headline = "NULL::text"
            if hl_tsq is not None:
                options = (f"StartSel={START_MARK}, StopSel={STOP_MARK}, MaxWords=35, MinWords=15, "
                           "ShortWord=2, MaxFragments=2, FragmentDelimiter=\" … \"")
                clean = (f"chat_search_text(replace(replace(replace(m.text, '{START_MARK}', ''), "
                         f"'{STOP_MARK}', ''), '{LT_MARK}', ''))")
                headline = f"ts_headline({_EN}, {clean}, ({hl_tsq}), {hl.p(options, '::text')})"
            ids_param = hl.p(ids, "::bigint[]")
            rows = list(await conn.fetch(
                f"""SELECT {_COLUMNS}, {headline} AS snippet
                    FROM chat_messages m, (SELECT {ids_param} AS ids) AS page
                    WHERE m.id = ANY(page.ids) ORDER BY array_position(page.ids, m.id)""",  # noqa: S608
                *hl.args))
        reactions = await ChatQueries(conn).reactions(ids) if ids else {}
        if estimated:
            return MessageHits(rows, reactions, total, True, has_more, ranked, estimated=True)
        return MessageHits(rows, reactions, min(total, COUNT_CAP), total > COUNT_CAP,
                           has_more, ranked)

    @staticmethod
    async def _walk(conn: asyncpg.Connection, page: str, args: list[object],
                    budget_ms: int) -> list[int] | None:
        """The page's ids by a newest-first walk, None when it ran past ``budget_ms``."""
        ids: list[int] | None
        try:
            async with conn.transaction():  # a savepoint: a cancelled walk is undone
                await conn.execute(f"SET LOCAL statement_timeout = {budget_ms}; {_WALK_ONLY}")
                ids = [r["id"] for r in await conn.fetch(page, *args)]
        except asyncpg.QueryCanceledError:
            ids = None
        await conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}; {_ANY_PLAN}")
        return ids

    @staticmethod
    async def _span(conn: asyncpg.Connection, id_range: tuple[int | None, int | None]) -> float:
        """About how many messages lie in the id range (ids come from one sequence, so the
        highest id bounds the count where the table was never analyzed)."""
        rows = float(await conn.fetchval(
            "SELECT reltuples FROM pg_class WHERE oid = 'chat_messages'::regclass"))
        low, high = id_range
        if rows < 0 or low is not None or high is not None:
            top = high if high is not None else await conn.fetchval(
                "SELECT coalesce(max(id), 0) FROM chat_messages")
            span = max(top - (low or 0) + 1, 0)
            rows = span if rows < 0 else min(rows, span)
        return rows

    @staticmethod
    async def _estimate(conn: asyncpg.Connection, conditions: str, args: list[object]) -> int:
        """The planner's estimate of the matches (planning only, nothing runs)."""
        plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) SELECT 1 FROM chat_messages m WHERE {conditions}", *args)  # noqa: S608
        return int(json.loads(plan)[0]["Plan"]["Plan Rows"])

    @staticmethod
    async def _id_bounds(conn: asyncpg.Connection, sql: _Sql,
                         s: MessageSearch) -> tuple[list[str], tuple[int | None, int | None]]:
        """Id bounds equivalent to the date bounds, so a newest-first walk starts inside the
        dates instead of at today. Ids grow with time except across sends in flight
        together; the margin covers sends whose transaction took up to ID_TIME_MARGIN, and
        the created_at conditions stay, so the bounds only narrow the walk."""
        out = []
        low = high = None
        if s.start is not None:
            low = await conn.fetchval(
                "SELECT id FROM chat_messages WHERE created_at >= $1::timestamptz - $2::interval "
                "ORDER BY created_at LIMIT 1", s.start, ID_TIME_MARGIN)
            out.append(f"m.id >= {sql.p(low if low is not None else 2**62, '::bigint')}")
        if s.end is not None:
            high = await conn.fetchval(
                "SELECT id FROM chat_messages WHERE created_at < $1::timestamptz + $2::interval "
                "ORDER BY created_at DESC LIMIT 1", s.end, ID_TIME_MARGIN)
            out.append(f"m.id <= {sql.p(high if high is not None else 0, '::bigint')}")
        return out, (low, high)

    # ---- channels and people ---------------------------------------------------------

    async def channels(self, conn: asyncpg.Connection, user: str, text: str, *, public: bool,
                       limit: int) -> list[Row]:
        """Public/private channels the user may see whose name contains ``text`` (or, with
        pg_trgm, resembles it), prefix matches first; chat_channels + ``member_role``."""
        needle = text.lower()
        like = "%" + _like_escape(needle) + "%"
        similar = "similarity(lower(ch.name), $2) > 0.3" if self.trigram else "false"
        score = "similarity(lower(ch.name), $2)" if self.trigram else "0"
        try:
            return list(await conn.fetch(
                f"""SELECT ch.*, m.role AS member_role FROM chat_channels ch
                    LEFT JOIN chat_members m ON m.channel_id = ch.id AND m.user_id = $1
                    WHERE ch.kind IN ('public', 'private')
                      AND (m.user_id IS NOT NULL OR ($4 AND ch.kind = 'public'))
                      AND (lower(ch.name) LIKE $3 OR {similar})
                    ORDER BY starts_with(lower(ch.name), $2) DESC, {score} DESC, ch.name
                    LIMIT $5""",  # noqa: S608 - constants and $n only
                user, needle, like, public, limit))
        except asyncpg.QueryCanceledError:
            raise SearchTimeout from None

    async def people(self, conn: asyncpg.Connection, text: str, *, limit: int) -> list[Row]:
        """chat_users whose id or display name contains ``text`` (or resembles it, with
        pg_trgm), prefix matches first."""
        needle = text.lower()
        like = "%" + _like_escape(needle) + "%"
        doc = "(lower(u.id) || ' ' || lower(u.display_name))"
        similar = f"word_similarity($1, {doc}) > 0.5" if self.trigram else "false"
        score = f"word_similarity($1, {doc})" if self.trigram else "0"
        try:
            return list(await conn.fetch(
                f"""SELECT u.id, u.display_name, u.title, u.role FROM chat_users u
                    WHERE {doc} LIKE $2 OR {similar}
                    ORDER BY (starts_with(lower(u.id), $1) OR starts_with(lower(u.display_name), $1)) DESC,
                             {score} DESC, u.id
                    LIMIT $3""",  # noqa: S608 - constants and $n only
                needle, like, limit))
        except asyncpg.QueryCanceledError:
            raise SearchTimeout from None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# ---- backfill ------------------------------------------------------------------------

BACKFILL_BATCH = 5000
"""Rows per backfill transaction: short enough that a send waits on no lock for long."""

Progress = Callable[[str], Awaitable[None] | None]


class SearchIndexer:
    """Fill the search vectors of rows written before migration 0007, newest first, in
    batches of BACKFILL_BATCH rows (each its own transaction: writers are never blocked
    for longer than one batch's row locks), then build the search indexes CONCURRENTLY.
    Idempotent and resumable: run it again after an interruption."""

    def __init__(self, conn: asyncpg.Connection, progress: Progress | None = None) -> None:
        self.conn = conn
        self.progress = progress

    async def _say(self, line: str) -> None:
        log.info("%s", line)
        if self.progress is not None:
            result = self.progress(line)
            if result is not None:
                await result

    async def missing_indexes(self) -> list[str]:
        """Search indexes not built (or left invalid by an interrupted build)."""
        rows = await self.conn.fetch(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = ANY($1::text[]) AND i.indisvalid", [n for n, _ in SEARCH_INDEXES])
        built = {r["relname"] for r in rows}
        return [n for n, _ in SEARCH_INDEXES if n not in built]

    async def set_language(self, language: str, batch: int = BACKFILL_BATCH) -> int:
        """Make ``sentchat_english`` (the stemming configuration; named before the language
        was a setting) stem in ``language`` and re-index every message in batches, newest
        first; returns the rows re-indexed (0 when it already stems in ``language``).
        One process does it at a time (an advisory lock); the others see it done.
        ValueError when PostgreSQL has no Snowball stemmer for ``language``."""
        stemmer = f"{language}_stem"
        if not re.fullmatch(r"[a-z]{2,32}", language) or not await self.conn.fetchval(
                "SELECT 1 FROM pg_ts_dict WHERE dictname = $1", stemmer):
            known = await self.conn.fetch(
                "SELECT replace(dictname, '_stem', '') AS l FROM pg_ts_dict "
                "WHERE dictname LIKE '%\\_stem' ORDER BY 1")
            raise ValueError(f"no stemmer for {language!r}; PostgreSQL has: "
                             + ", ".join(r["l"] for r in known))
        await self.conn.execute("SELECT pg_advisory_lock(hashtext('sentchat.search_language'))")
        try:
            current = await self.conn.fetch(
                """SELECT DISTINCT d.dictname FROM pg_ts_config_map m
                   JOIN pg_ts_config c ON c.oid = m.mapcfg JOIN pg_ts_dict d ON d.oid = m.mapdict
                   WHERE c.cfgname = 'sentchat_english' AND d.dictname LIKE '%\\_stem'""")
            olds = [r["dictname"] for r in current if r["dictname"] != stemmer]
            if not olds:
                return 0
            for old in olds:
                if not re.fullmatch(r"[a-z]+_stem", old):
                    continue  # not one of PostgreSQL's stemmers: never put into DDL
                # Every token type that stemmed with the old language now stems with the new
                # (DDL takes no parameters: both names were checked against pg_ts_dict).
                await self.conn.execute(
                    f"ALTER TEXT SEARCH CONFIGURATION sentchat_english "
                    f"ALTER MAPPING REPLACE {old} WITH {stemmer}")
            await self._say(f"search language: {', '.join(olds)} -> {stemmer}; re-indexing")
            top = await self.conn.fetchval("SELECT coalesce(max(id), 0) FROM chat_messages")
            refilled, high = 0, top + 1
            while high > 1:
                low = max(1, high - batch)
                async with self.conn.transaction():
                    status = await self.conn.execute(
                        """UPDATE chat_messages SET search_tsv = chat_search_vector(text)
                           WHERE id >= $1 AND id < $2 AND NOT deleted""", low, high)
                refilled += int(status.split()[-1])
                high = low
            await self._say(f"search language: {refilled} messages re-indexed in {language}")
            return refilled
        finally:
            await self.conn.execute("SELECT pg_advisory_unlock(hashtext('sentchat.search_language'))")

    async def run(self, batch: int = BACKFILL_BATCH) -> int:
        """Backfill and index; returns the number of rows whose vector was filled."""
        has_column = await self.conn.fetchval(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'chat_messages' AND column_name = 'search_tsv'")
        if not has_column:
            return 0  # migration 0007 not applied: nothing to do
        pending = await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM chat_messages WHERE search_tsv IS NULL AND NOT deleted)")
        top = await self.conn.fetchval("SELECT coalesce(max(id), 0) FROM chat_messages") if pending else 0
        filled = 0
        high = top + 1
        started = time.monotonic()
        last_report = 0.0
        while high > 1:
            low = max(1, high - batch)
            async with self.conn.transaction():
                status = await self.conn.execute(
                    """UPDATE chat_messages SET search_tsv = chat_search_vector(text)
                       WHERE id >= $1 AND id < $2 AND search_tsv IS NULL AND NOT deleted""",
                    low, high)
            filled += int(status.split()[-1])
            high = low
            now = time.monotonic()
            if now - last_report >= 2 or high <= 1:
                last_report = now
                done = (top + 1 - high) / max(top, 1)
                await self._say(f"search backfill: {done:6.1%} of ids ({filled} rows filled, "
                                f"{now - started:.0f} s)")
        for name, definition in SEARCH_INDEXES:
            if name not in await self.missing_indexes():
                continue
            await self.conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            await self._say(f"search index: building {name} (concurrently)")
            began = time.monotonic()
            await self.conn.execute(f"CREATE INDEX CONCURRENTLY {name} {definition}")
            await self._say(f"search index: {name} built in {time.monotonic() - began:.1f} s")
        return filled
