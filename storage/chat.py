"""The chat product's tables (migration 0002_chat.sql): every SQL statement the chat
service runs, and nothing else.

The service (gateway/chat/service.py) decides what may happen and in which transaction;
this module only knows how to read and write the rows. Transaction boundaries stay with
the service because its access checks run between the reads and the writes of one
transaction (a channel is locked, then the caller's role in it decides the write):
``ChatStore.read()`` gives a connection's queries, ``ChatStore.write()`` the same inside
a transaction that commits when the block ends.

Rows are returned as asyncpg records (mappings by column name, ``SELECT *`` of the table
named in the method's docstring unless it says otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from storage import audit

# asyncpg ships no type information, so a record is Any to the type checker; the alias still
# says what callers get.
Row: TypeAlias = asyncpg.Record
"""One row; columns by name."""


class NameTaken(Exception):
    """A public or private channel of this name exists already."""


_CHANNEL = "SELECT * FROM chat_channels WHERE id = $1"
_MESSAGE = "SELECT * FROM chat_messages WHERE id = $1"
_TIMELINE = "channel_id = $1 AND (thread_parent IS NULL OR also_to_channel)"
_NOTIFY_COLUMNS = """SELECT m.user_id, m.muted, st.dnd_until
                     FROM chat_members m LEFT JOIN chat_user_status st ON st.user_id = m.user_id"""


class ChatStore:
    """The chat tables on one PostgreSQL pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, pool_size: int) -> ChatStore:
        """A store on a new pool of up to ``pool_size`` connections (the schema is
        migrated by the node's storage start)."""
        return cls(await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size))

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[ChatQueries]:
        """Queries on one connection, each statement on its own (no transaction)."""
        async with self.pool.acquire() as conn:
            yield ChatQueries(conn)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[ChatQueries]:
        """Queries in one transaction: committed when the block ends, rolled back when it
        raises."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield ChatQueries(conn)


class ChatQueries:
    """The statements, on one connection (see ``ChatStore.read`` / ``write``)."""

    __slots__ = ("c",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.c = conn

    async def _time(self, sql: str, *args: Any) -> datetime | None:
        """The timestamp the statement returns; None when it returns no row."""
        at: datetime | None = await self.c.fetchval(sql, *args)
        return at

    # ---- audit ------------------------------------------------------------------------

    async def audit(self, *, actor: str, action: str, target: str, before: Any = None,
                    after: Any = None) -> int:
        """Append the audit record of this transaction's write (storage/audit.py: call it
        last, inside ``write()``); returns its id."""
        return await audit.append(self.c, actor=actor, action=action, target=target,
                                  before=before, after=after)

    # ---- users ------------------------------------------------------------------------

    async def user_seen(self, user: str, *, display_name: str, title: str, manager: str,
                        email_enc: bytes | None, role: str) -> str:
        """Create the user on first sight, fill its empty profile fields from these;
        returns its workspace role (the stored one if it existed)."""
        row = await self.c.fetchrow(
            """
            INSERT INTO chat_users (id, display_name, title, manager, email_enc, role)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (id) DO UPDATE SET
                display_name = CASE WHEN chat_users.display_name = '' THEN EXCLUDED.display_name
                                    ELSE chat_users.display_name END,
                title = CASE WHEN chat_users.title = '' THEN EXCLUDED.title ELSE chat_users.title END,
                manager = CASE WHEN chat_users.manager = '' THEN EXCLUDED.manager ELSE chat_users.manager END,
                email_enc = COALESCE(chat_users.email_enc, EXCLUDED.email_enc)
            RETURNING role
            """, user, display_name, title, manager, email_enc, role)
        assert row is not None  # noqa: S101 - INSERT ... ON CONFLICT DO UPDATE returns a row
        return str(row["role"])

    async def user_roles(self, ids: Iterable[str]) -> dict[str, str]:
        """Workspace role of each of ``ids`` that exists."""
        rows = await self.c.fetch("SELECT id, role FROM chat_users WHERE id = ANY($1::text[])",
                                  sorted(set(ids)))
        return {r["id"]: r["role"] for r in rows}

    async def user_with_status(self, user: str) -> Row | None:
        """chat_users joined with its chat_user_status columns (NULL when never set)."""
        return await self.c.fetchrow(
            """SELECT u.*, st.away, st.dnd_until, st.status_text, st.status_emoji, st.status_until
               FROM chat_users u LEFT JOIN chat_user_status st ON st.user_id = u.id
               WHERE u.id = $1""", user)

    async def user_fields(self, user: str) -> Row | None:
        """display_name, title, manager, role of chat_users."""
        return await self.c.fetchrow(
            "SELECT display_name, title, manager, role FROM chat_users WHERE id = $1", user)

    async def upsert_user(self, user: str, *, display_name: str | None, title: str | None,
                          manager: str | None, role: str | None, email_enc: bytes | None) -> None:
        """Create or update a user's fields; None leaves a field as it is (or default)."""
        await self.c.execute(
            """INSERT INTO chat_users (id, display_name, title, manager, role, email_enc)
               VALUES ($1, coalesce($2, ''), coalesce($3, ''), coalesce($4, ''), coalesce($5, 'member'), $6)
               ON CONFLICT (id) DO UPDATE SET
                   display_name = coalesce($2, chat_users.display_name),
                   title = coalesce($3, chat_users.title),
                   manager = coalesce($4, chat_users.manager),
                   role = coalesce($5, chat_users.role),
                   email_enc = coalesce($6, chat_users.email_enc),
                   updated_at = now()""",
            user, display_name, title, manager, role, email_enc)

    async def status(self, user: str) -> Row | None:
        """chat_user_status."""
        return await self.c.fetchrow("SELECT * FROM chat_user_status WHERE user_id = $1", user)

    async def set_status(self, user: str, *, away: bool | None, dnd_until: datetime | None,
                         text: str | None, emoji: str | None, until: datetime | None,
                         set_dnd: bool, set_until: bool) -> None:
        """Update the given status fields (None: unchanged); ``dnd_until`` / ``until`` are
        written only when ``set_dnd`` / ``set_until`` (so None can clear them)."""
        await self.c.execute(
            """INSERT INTO chat_user_status (user_id, away, dnd_until, status_text, status_emoji,
                                             status_until)
               VALUES ($1, coalesce($2, false), $3, coalesce($4, ''), coalesce($5, ''), $6)
               ON CONFLICT (user_id) DO UPDATE SET
                   away = coalesce($2, chat_user_status.away),
                   dnd_until = CASE WHEN $7 THEN $3 ELSE chat_user_status.dnd_until END,
                   status_text = coalesce($4, chat_user_status.status_text),
                   status_emoji = coalesce($5, chat_user_status.status_emoji),
                   status_until = CASE WHEN $8 THEN $6 ELSE chat_user_status.status_until END,
                   updated_at = now()""",
            user, away, dnd_until, text, emoji, until, set_dnd, set_until)

    # ---- channels and members -----------------------------------------------------------

    async def channel(self, channel_id: str, *, lock: bool = False) -> Row | None:
        """chat_channels; ``lock``: FOR UPDATE, until the transaction ends."""
        return await self.c.fetchrow(_CHANNEL + " FOR UPDATE" if lock else _CHANNEL, channel_id)

    async def member_role(self, channel_id: str, user: str) -> str | None:
        """The user's role in the channel, None when not a member."""
        role: str | None = await self.c.fetchval(
            "SELECT role FROM chat_members WHERE channel_id = $1 AND user_id = $2", channel_id, user)
        return role

    async def channels_of(self, user: str, *, public: bool, include_archived: bool) -> list[Row]:
        """chat_channels the user is in (and, with ``public``, every public one), plus
        ``member_role`` (NULL when not a member) and ``muted``."""
        return list(await self.c.fetch(
            """SELECT ch.*, m.role AS member_role, coalesce(m.muted, false) AS muted
               FROM chat_channels ch
               LEFT JOIN chat_members m ON m.channel_id = ch.id AND m.user_id = $1
               WHERE (m.user_id IS NOT NULL OR ($2 AND ch.kind = 'public'))
                 AND ($3 OR NOT ch.archived)
               ORDER BY ch.kind, ch.name, ch.id""", user, public, include_archived))

    async def members_of(self, channel_ids: Sequence[str]) -> dict[str, list[str]]:
        """The member ids of each channel, sorted (one query for all)."""
        if not channel_ids:
            return {}
        rows = await self.c.fetch(
            """SELECT channel_id, array_agg(user_id ORDER BY user_id) AS users FROM chat_members
               WHERE channel_id = ANY($1::text[]) GROUP BY channel_id""", list(channel_ids))
        return {r["channel_id"]: list(r["users"]) for r in rows}

    async def is_muted(self, channel_id: str, user: str) -> bool:
        """Whether ``user`` muted the channel (False when not a member)."""
        return bool(await self.c.fetchval(
            "SELECT muted FROM chat_members WHERE channel_id = $1 AND user_id = $2", channel_id, user))

    async def members_page(self, channel_id: str, after: str, limit: int) -> list[Row]:
        """Members by user id after ``after``: user_id, role, joined_at, display_name."""
        return list(await self.c.fetch(
            """SELECT m.user_id, m.role, m.joined_at, coalesce(u.display_name, '') AS display_name
               FROM chat_members m LEFT JOIN chat_users u ON u.id = m.user_id
               WHERE m.channel_id = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT $3""",
            channel_id, after, limit))

    async def search_users(self, pattern: str, *, after: tuple[str, str], limit: int,
                           sharing_with: str | None) -> list[Row]:
        """Users whose lower-cased name or id matches the LIKE ``pattern``, ordered by
        (lower name, id) after ``after``: id, display_name, title, k (the lower name).
        With ``sharing_with``: only that user and those sharing a channel with it."""
        return list(await self.c.fetch(
            """SELECT u.id, u.display_name, u.title, lower(u.display_name) AS k FROM chat_users u
               WHERE (lower(u.display_name) LIKE $1 OR lower(u.id) LIKE $1)
                 AND (lower(u.display_name), u.id) > ($2, $3)
                 AND ($5::text IS NULL OR u.id = $5 OR EXISTS (
                     SELECT 1 FROM chat_members mine JOIN chat_members theirs
                       ON theirs.channel_id = mine.channel_id
                     WHERE mine.user_id = $5 AND theirs.user_id = u.id))
               ORDER BY lower(u.display_name), u.id LIMIT $4""",
            pattern, after[0], after[1], limit, sharing_with))

    async def create_channel(self, channel_id: str, *, kind: str, name: str, topic: str,
                             created_by: str) -> Row:
        """A new public or private channel (chat_channels); NameTaken when the name is."""
        try:
            row = await self.c.fetchrow(
                """INSERT INTO chat_channels (id, kind, name, topic, created_by)
                   VALUES ($1, $2, $3, $4, $5) RETURNING *""",
                channel_id, kind, name, topic, created_by)
        except asyncpg.UniqueViolationError:
            raise NameTaken(name) from None
        assert row is not None  # noqa: S101 - INSERT ... RETURNING without conflict clause
        return row

    async def create_dm(self, channel_id: str, *, kind: str, created_by: str) -> Row | None:
        """A new DM / group DM channel (chat_channels); None when it exists already."""
        return await self.c.fetchrow(
            """INSERT INTO chat_channels (id, kind, created_by) VALUES ($1, $2, $3)
               ON CONFLICT (id) DO NOTHING RETURNING *""", channel_id, kind, created_by)

    async def insert_members(self, channel_id: str, members: Sequence[tuple[str, str]]) -> None:
        """Add (user, role) members to a channel none of them is in."""
        await self.c.executemany(
            "INSERT INTO chat_members (channel_id, user_id, role) VALUES ($1, $2, $3)",
            [(channel_id, user, role) for user, role in members])

    async def join(self, channel_id: str, users: Sequence[str]) -> list[Row]:
        """Add users as members; those already in are skipped. Returns ``user_id`` and
        ``joined_at`` of those added."""
        return list(await self.c.fetch(
            """INSERT INTO chat_members (channel_id, user_id)
               SELECT $1, u FROM unnest($2::text[]) AS u
               ON CONFLICT DO NOTHING RETURNING user_id, joined_at""", channel_id, list(users)))

    async def remove_member(self, channel_id: str, user: str) -> datetime | None:
        """Remove a member; when it joined, None when it was not a member."""
        return await self._time(
            "DELETE FROM chat_members WHERE channel_id = $1 AND user_id = $2 RETURNING joined_at",
            channel_id, user)

    async def archive(self, channel_id: str) -> Row:
        """Mark the channel archived; the updated chat_channels row."""
        row = await self.c.fetchrow(
            "UPDATE chat_channels SET archived = true WHERE id = $1 RETURNING *", channel_id)
        assert row is not None  # noqa: S101 - the caller holds the row locked
        return row

    async def set_topic(self, channel_id: str, topic: str | None) -> Row:
        """Set the topic; the updated chat_channels row."""
        row = await self.c.fetchrow(
            "UPDATE chat_channels SET topic = $2 WHERE id = $1 RETURNING *", channel_id, topic)
        assert row is not None  # noqa: S101 - the caller holds the row locked
        return row

    async def set_muted(self, channel_id: str, user: str, muted: bool) -> bool:
        """Mute or unmute for a member; False when the user is not one."""
        return bool(await self.c.fetchval(
            """UPDATE chat_members SET muted = $3 WHERE channel_id = $1 AND user_id = $2
               RETURNING true""", channel_id, user, muted))

    async def mark_read(self, channel_id: str, user: str, message_id: int) -> bool:
        """Move a member's read marker; False when the user is not one."""
        return bool(await self.c.fetchval(
            """UPDATE chat_members SET last_read_id = $3 WHERE channel_id = $1 AND user_id = $2
               RETURNING true""", channel_id, user, message_id))

    async def previewed_public_channels(self, user: str) -> list[str]:
        """Ids of the public channels the user is not a member of."""
        rows = await self.c.fetch(
            """SELECT ch.id FROM chat_channels ch WHERE ch.kind = 'public' AND NOT EXISTS (
                   SELECT 1 FROM chat_members m WHERE m.channel_id = ch.id AND m.user_id = $1)""",
            user)
        return [r["id"] for r in rows]

    async def notify_candidates(self, channel_id: str, *, exclude: str) -> list[Row]:
        """``user_id``, ``muted``, ``dnd_until`` of the channel's members but ``exclude``."""
        return list(await self.c.fetch(
            _NOTIFY_COLUMNS + " WHERE m.channel_id = $1 AND m.user_id <> $2", channel_id, exclude))

    async def notify_candidates_among(self, channel_id: str, users: Sequence[str]) -> list[Row]:
        """The same, for those of ``users`` who are members."""
        return list(await self.c.fetch(
            _NOTIFY_COLUMNS + " WHERE m.channel_id = $1 AND m.user_id = ANY($2::text[])",
            channel_id, list(users)))

    async def unread(self, user: str, cap: int) -> list[Row]:
        """Per channel the user is in: ``channel_id``, ``last_read_id``, and ``unread`` /
        ``mentions`` counted up to ``cap`` (others' timeline messages, not deleted)."""
        # Counted up to a cap per channel: a member far behind in a channel of millions must
        # not cost a scan of millions.
        return list(await self.c.fetch(
            """SELECT m.channel_id, m.last_read_id, u.unread, u.mentions
               FROM chat_members m
               CROSS JOIN LATERAL (
                   SELECT count(*) AS unread,
                          count(*) FILTER (WHERE x.mentions && ARRAY[$1, '@channel', '@here']) AS mentions
                   FROM (SELECT mentions FROM chat_messages
                         WHERE channel_id = m.channel_id AND id > m.last_read_id
                           AND (thread_parent IS NULL OR also_to_channel)
                           AND NOT deleted AND author_id <> $1
                         ORDER BY id LIMIT $2) x) u
               WHERE m.user_id = $1 ORDER BY m.channel_id""", user, cap))

    # ---- messages ---------------------------------------------------------------------

    async def message(self, message_id: int, *, lock: bool = False) -> Row | None:
        """chat_messages; ``lock``: FOR UPDATE, until the transaction ends."""
        return await self.c.fetchrow(_MESSAGE + " FOR UPDATE" if lock else _MESSAGE, message_id)

    async def messages(self, ids: Sequence[int]) -> list[Row]:
        """chat_messages of these ids, by id."""
        return list(await self.c.fetch(
            "SELECT * FROM chat_messages WHERE id = ANY($1::bigint[]) ORDER BY id", list(ids)))

    async def message_by_client_id(self, author: str, client_msg_id: str | None) -> Row | None:
        """chat_messages: the author's message sent with this client_msg_id."""
        return await self.c.fetchrow(
            "SELECT * FROM chat_messages WHERE author_id = $1 AND client_msg_id = $2",
            author, client_msg_id)

    async def insert_message(self, *, channel_id: str, author: str, client_msg_id: str | None,
                             text: str, rendered: str, thread_parent: int | None,
                             also_to_channel: bool, mentions: list[str], blocks: str | None = None,
                             app_id: str | None = None, bot_profile: str | None = None) -> Row | None:
        """A new chat_messages row; None when the author already sent ``client_msg_id``.
        ``blocks`` / ``bot_profile`` (JSON) and ``app_id``: what an app posted (0004)."""
        return await self.c.fetchrow(
            """INSERT INTO chat_messages (channel_id, author_id, client_msg_id, text, rendered,
                                          thread_parent, also_to_channel, mentions, blocks,
                                          app_id, bot_profile)
               VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9::jsonb, $10, $11::jsonb)
               ON CONFLICT (author_id, client_msg_id) WHERE client_msg_id IS NOT NULL DO NOTHING
               RETURNING *""",
            channel_id, author, client_msg_id, text, rendered, thread_parent, also_to_channel,
            mentions, blocks, app_id, bot_profile)

    async def count_reply(self, parent_id: int, author: str, at: datetime) -> Row:
        """One more reply by ``author`` at ``at`` in the thread; the updated parent row."""
        row = await self.c.fetchrow(
            """UPDATE chat_messages SET reply_count = reply_count + 1,
                   reply_users = CASE WHEN $2 = ANY(reply_users) THEN reply_users
                                      ELSE reply_users || $2 END,
                   last_reply_at = $3
               WHERE id = $1 RETURNING *""", parent_id, author, at)
        assert row is not None  # noqa: S101 - the caller holds the parent locked
        return row

    async def follow(self, pairs: Sequence[tuple[int, str]]) -> None:
        """(thread message id, user): follow; following already is fine."""
        await self.c.executemany(
            "INSERT INTO chat_thread_follows VALUES ($1, $2) ON CONFLICT DO NOTHING", list(pairs))

    async def unfollow(self, message_id: int, user: str) -> None:
        """Stop following a thread."""
        await self.c.execute(
            "DELETE FROM chat_thread_follows WHERE message_id = $1 AND user_id = $2", message_id, user)

    async def followers(self, message_id: int) -> set[str]:
        """Who follows the thread."""
        rows = await self.c.fetch(
            "SELECT user_id FROM chat_thread_follows WHERE message_id = $1", message_id)
        return {r["user_id"] for r in rows}

    async def set_last_message(self, channel_id: str, message_id: int) -> None:
        """The channel's newest timeline message."""
        await self.c.execute("UPDATE chat_channels SET last_message_id = $2 WHERE id = $1",
                             channel_id, message_id)

    async def read_up_to(self, channel_id: str, user: str, message_id: int) -> None:
        """Move a member's read marker forward to ``message_id`` (never back)."""
        await self.c.execute(
            """UPDATE chat_members SET last_read_id = greatest(last_read_id, $3)
               WHERE channel_id = $1 AND user_id = $2""", channel_id, user, message_id)

    async def keep_version(self, row: Row, editor: str) -> None:
        """Save a message's current version before it changes."""
        await self.c.execute(
            """INSERT INTO chat_message_versions (message_id, version, text, rendered, editor_id)
               VALUES ($1, $2, $3, $4, $5)""",
            row["id"], row["version"], row["text"], row["rendered"], editor)

    async def edit_message(self, message_id: int, *, text: str, rendered: str,
                           mentions: list[str], blocks: str | None = None,
                           set_blocks: bool = False) -> Row:
        """New text (and, with ``set_blocks``, new blocks JSON), next version; the updated row."""
        row = await self.c.fetchrow(
            """UPDATE chat_messages SET text = $2, rendered = $3::jsonb, mentions = $4,
                   blocks = CASE WHEN $6 THEN $5::jsonb ELSE blocks END,
                   previews = CASE WHEN text = $2 THEN previews END,
                   version = version + 1, edited_at = now()
               WHERE id = $1 RETURNING *""", message_id, text, rendered, mentions, blocks, set_blocks)
        assert row is not None  # noqa: S101 - the caller holds the row locked
        return row

    async def delete_message(self, message_id: int) -> Row:
        """Blank the message, mark it deleted, next version; the updated row."""
        row = await self.c.fetchrow(
            """UPDATE chat_messages SET text = '', rendered = '[]', blocks = NULL, previews = NULL, deleted = true,
                   version = version + 1, edited_at = now()
               WHERE id = $1 RETURNING *""", message_id)
        assert row is not None  # noqa: S101 - the caller holds the row locked
        return row

    async def set_previews(self, message_id: int, version: int, previews: str) -> Row | None:
        """Attach link previews (JSON, 0005) to this version of a live message; the updated
        row, None when the message changed version or was deleted meanwhile."""
        return await self.c.fetchrow(
            """UPDATE chat_messages SET previews = $3::jsonb
               WHERE id = $1 AND version = $2 AND NOT deleted RETURNING *""",
            message_id, version, previews)

    async def versions(self, message_id: int) -> list[Row]:
        """chat_message_versions of a message, oldest first."""
        return list(await self.c.fetch(
            "SELECT * FROM chat_message_versions WHERE message_id = $1 ORDER BY version", message_id))

    async def timeline_after(self, channel_id: str, after: int, limit: int) -> list[Row]:
        """Up to ``limit`` timeline messages (no thread-only replies) after ``after``,
        ascending."""
        return list(await self.c.fetch(
            f"SELECT * FROM chat_messages WHERE {_TIMELINE} AND id > $2 "  # noqa: S608 - constant
            "ORDER BY id LIMIT $3", channel_id, after, limit))

    async def timeline_before(self, channel_id: str, before: int, limit: int) -> list[Row]:
        """Up to ``limit`` timeline messages before ``before``, newest first."""
        return list(await self.c.fetch(
            f"SELECT * FROM chat_messages WHERE {_TIMELINE} AND id < $2 "  # noqa: S608 - constant
            "ORDER BY id DESC LIMIT $3", channel_id, before, limit))

    async def replies(self, parent_id: int, after: int, limit: int) -> list[Row]:
        """Up to ``limit`` replies in the thread after ``after``, ascending."""
        return list(await self.c.fetch(
            """SELECT * FROM chat_messages WHERE thread_parent = $1 AND id > $2
               ORDER BY id LIMIT $3""", parent_id, after, limit))

    async def reactions(self, ids: Sequence[int]) -> dict[int, dict[str, list[str]]]:
        """message id -> emoji -> users, in reaction order."""
        if not ids:
            return {}
        rows = await self.c.fetch(
            """SELECT message_id, emoji, array_agg(user_id ORDER BY created_at, user_id) AS users
               FROM chat_reactions WHERE message_id = ANY($1::bigint[])
               GROUP BY message_id, emoji ORDER BY message_id, min(created_at), emoji""", list(ids))
        out: dict[int, dict[str, list[str]]] = {}
        for r in rows:
            out.setdefault(r["message_id"], {})[r["emoji"]] = list(r["users"])
        return out

    async def add_reaction(self, message_id: int, user: str, emoji: str) -> datetime | None:
        """When the reaction was added; None when it existed already."""
        return await self._time(
            """INSERT INTO chat_reactions (message_id, user_id, emoji) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING RETURNING created_at""", message_id, user, emoji)

    async def remove_reaction(self, message_id: int, user: str, emoji: str) -> datetime | None:
        """When the removed reaction had been added; None when there was none."""
        return await self._time(
            """DELETE FROM chat_reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3
               RETURNING created_at""", message_id, user, emoji)

    async def pin(self, channel_id: str, message_id: int, by: str) -> datetime | None:
        """When the message was pinned; None when it was pinned already."""
        return await self._time(
            """INSERT INTO chat_pins (channel_id, message_id, pinned_by) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING RETURNING pinned_at""", channel_id, message_id, by)

    async def unpin(self, channel_id: str, message_id: int) -> datetime | None:
        """When the removed pin had been made; None when the message was not pinned."""
        return await self._time(
            "DELETE FROM chat_pins WHERE channel_id = $1 AND message_id = $2 RETURNING pinned_at",
            channel_id, message_id)

    async def pinned(self, channel_id: str) -> list[Row]:
        """chat_messages pinned in the channel, in pin order."""
        return list(await self.c.fetch(
            """SELECT m.* FROM chat_pins p JOIN chat_messages m ON m.id = p.message_id
               WHERE p.channel_id = $1 ORDER BY p.pinned_at, m.id""", channel_id))


__all__ = ["ChatQueries", "ChatStore", "NameTaken", "Row"]
