"""Incident war rooms and huddles (migration 0006_unfurl_incidents.sql): every SQL statement
gateway/integrations/rooms.py runs, and nothing else.

Like storage/apps.py, the queries wrap a connection the caller holds (one of
``ChatStore.read()`` / ``write()``), so they join the chat write's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeAlias

import asyncpg

Row: TypeAlias = asyncpg.Record


class RoomQueries:
    """The statements, on one connection."""

    __slots__ = ("c",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.c = conn

    # ---- incidents --------------------------------------------------------------------

    async def users_with_titles(self, titles: Sequence[str]) -> dict[str, list[str]]:
        """Org-chart title (lower case) -> ids of the users holding it (chat_users.title)."""
        rows = await self.c.fetch(
            """SELECT lower(title) AS title, array_agg(id ORDER BY id) AS ids FROM chat_users
               WHERE lower(title) = ANY($1::text[]) GROUP BY lower(title)""",
            [t.lower() for t in titles])
        return {r["title"]: list(r["ids"]) for r in rows}

    async def incident_by_ticket(self, ticket_id: str) -> Row | None:
        """integ_incidents of a ticket."""
        return await self.c.fetchrow("SELECT * FROM integ_incidents WHERE ticket_id = $1", ticket_id)

    async def incident(self, incident_id: str, *, lock: bool = False) -> Row | None:
        """integ_incidents; ``lock``: FOR UPDATE until the transaction ends."""
        sql = "SELECT * FROM integ_incidents WHERE id = $1"
        return await self.c.fetchrow(sql + " FOR UPDATE" if lock else sql, incident_id)

    async def create_incident(self, *, incident_id: str, ticket_id: str, title: str, priority: int,
                              channel_id: str, responders: list[str], summary_message_id: int,
                              app_id: str | None, created_by: str) -> Row | None:
        """A new integ_incidents row; None when the ticket has one already."""
        return await self.c.fetchrow(
            """INSERT INTO integ_incidents (id, ticket_id, title, priority, channel_id, responders,
                                            summary_message_id, app_id, created_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (ticket_id) DO NOTHING RETURNING *""",
            incident_id, ticket_id, title, priority, channel_id, responders, summary_message_id,
            app_id, created_by)

    async def resolve_incident(self, incident_id: str, by: str) -> Row:
        """Mark resolved now; the updated row (the caller holds it locked)."""
        row = await self.c.fetchrow(
            """UPDATE integ_incidents SET resolved_by = $2, resolved_at = now()
               WHERE id = $1 RETURNING *""", incident_id, by)
        assert row is not None  # noqa: S101 - locked by the caller
        return row

    # ---- huddles ----------------------------------------------------------------------

    async def live_huddle(self, channel_id: str) -> Row | None:
        """The channel's integ_huddles row that has not ended."""
        return await self.c.fetchrow(
            "SELECT * FROM integ_huddles WHERE channel_id = $1 AND ended_at IS NULL", channel_id)

    async def huddle(self, huddle_id: str, *, lock: bool = False) -> Row | None:
        """integ_huddles; ``lock``: FOR UPDATE until the transaction ends."""
        sql = "SELECT * FROM integ_huddles WHERE id = $1"
        return await self.c.fetchrow(sql + " FOR UPDATE" if lock else sql, huddle_id)

    async def create_huddle(self, huddle_id: str, channel_id: str, url: str, started_by: str) -> Row | None:
        """A new live huddle; None when the channel has one already (unique live index)."""
        try:
            return await self.c.fetchrow(
                """INSERT INTO integ_huddles (id, channel_id, url, started_by)
                   VALUES ($1, $2, $3, $4) RETURNING *""", huddle_id, channel_id, url, started_by)
        except asyncpg.UniqueViolationError:
            return None

    async def set_huddle_message(self, huddle_id: str, message_id: int) -> None:
        """The message with the huddle's Join button."""
        await self.c.execute("UPDATE integ_huddles SET message_id = $2 WHERE id = $1", huddle_id, message_id)

    async def end_huddle(self, huddle_id: str, by: str) -> Row:
        """Mark ended now; the updated row (the caller holds it locked)."""
        row = await self.c.fetchrow(
            "UPDATE integ_huddles SET ended_by = $2, ended_at = now() WHERE id = $1 RETURNING *",
            huddle_id, by)
        assert row is not None  # noqa: S101 - locked by the caller
        return row

    async def join_huddle(self, huddle_id: str, user: str, *, prev_text: str, prev_emoji: str,
                          prev_until: datetime | None) -> bool:
        """Add (or bring back) a participant with the status it had; False when it is in."""
        joined = await self.c.fetchval(
            """INSERT INTO integ_huddle_participants (huddle_id, user_id, prev_text, prev_emoji, prev_until)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (huddle_id, user_id) DO UPDATE SET
                   joined_at = now(), left_at = NULL, prev_text = EXCLUDED.prev_text,
                   prev_emoji = EXCLUDED.prev_emoji, prev_until = EXCLUDED.prev_until
                   WHERE integ_huddle_participants.left_at IS NOT NULL
               RETURNING true""", huddle_id, user, prev_text, prev_emoji, prev_until)
        return bool(joined)

    async def leave_huddle(self, huddle_id: str, users: Sequence[str] | None = None) -> list[Row]:
        """Mark these participants (None: every one still in) as gone; their rows
        (``user_id``, ``prev_*``) to restore their statuses."""
        return list(await self.c.fetch(
            """UPDATE integ_huddle_participants SET left_at = now()
               WHERE huddle_id = $1 AND left_at IS NULL AND ($2::text[] IS NULL OR user_id = ANY($2::text[]))
               RETURNING *""", huddle_id, list(users) if users is not None else None))

    async def huddle_people(self, huddle_id: str) -> tuple[list[str], int]:
        """Who is in the huddle now, and how many people took part in all."""
        rows = await self.c.fetch(
            "SELECT user_id, left_at FROM integ_huddle_participants WHERE huddle_id = $1 ORDER BY joined_at",
            huddle_id)
        return [r["user_id"] for r in rows if r["left_at"] is None], len(rows)


__all__ = ["RoomQueries", "Row"]
