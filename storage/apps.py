"""The integrations' tables (migration 0004_integrations.sql): apps, slash commands,
incoming webhooks, response URLs and the event outbox — every SQL statement
gateway/integrations/ runs, and nothing else.

Like storage/chat.py, this module only reads and writes rows; the service decides who may
do what and where transactions begin. ``AppQueries`` wraps a connection the caller holds
(usually one of ``ChatStore.read()`` / ``write()``), so an outbox row joins the very
transaction of the chat write it reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

Row: TypeAlias = asyncpg.Record

APP_COLUMNS = """id, name, bot_user_id, commands_url, interactivity_url, events_url, events,
                 channels, click_policy, enabled, created_by, created_at"""


class AppQueries:
    """The statements, on one connection."""

    __slots__ = ("c",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.c = conn

    # ---- apps -------------------------------------------------------------------------

    async def create_app(self, *, app_id: str, name: str, bot_user_id: str, token_hash: bytes,
                         signing_secret_enc: bytes, commands_url: str, interactivity_url: str,
                         events_url: str, events: list[str], channels: list[str],
                         click_policy: str, created_by: str) -> Row | None:
        """A new integ_apps row (APP_COLUMNS); None when the name is taken."""
        try:
            return await self.c.fetchrow(
                f"""INSERT INTO integ_apps (id, name, bot_user_id, token_hash, signing_secret_enc,
                        commands_url, interactivity_url, events_url, events, channels,
                        click_policy, created_by)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                    RETURNING {APP_COLUMNS}""",  # noqa: S608 - constant column list
                app_id, name, bot_user_id, token_hash, signing_secret_enc, commands_url,
                interactivity_url, events_url, events, channels, click_policy, created_by)
        except asyncpg.UniqueViolationError:
            return None

    async def app(self, app_id: str) -> Row | None:
        """integ_apps (APP_COLUMNS) by id."""
        return await self.c.fetchrow(
            f"SELECT {APP_COLUMNS} FROM integ_apps WHERE id = $1", app_id)  # noqa: S608

    async def app_by_token(self, token_hash: bytes) -> Row | None:
        """integ_apps (APP_COLUMNS) whose bot token hashes to ``token_hash``."""
        return await self.c.fetchrow(
            f"SELECT {APP_COLUMNS} FROM integ_apps WHERE token_hash = $1", token_hash)  # noqa: S608

    async def app_by_bot(self, bot_user_id: str) -> Row | None:
        """integ_apps (APP_COLUMNS) of a bot user."""
        return await self.c.fetchrow(
            f"SELECT {APP_COLUMNS} FROM integ_apps WHERE bot_user_id = $1", bot_user_id)  # noqa: S608

    async def apps(self) -> list[Row]:
        """Every integ_apps row (APP_COLUMNS), by name."""
        return list(await self.c.fetch(
            f"SELECT {APP_COLUMNS} FROM integ_apps ORDER BY lower(name)"))  # noqa: S608

    async def signing_secret(self, app_id: str) -> bytes | None:
        """The encrypted signing secret of an app."""
        blob = await self.c.fetchval(
            "SELECT signing_secret_enc FROM integ_apps WHERE id = $1", app_id)
        return bytes(blob) if blob is not None else None

    async def update_app(self, app_id: str, fields: dict[str, Any]) -> Row | None:
        """Set the given columns (names from the service's fixed list); the updated row."""
        names = list(fields)
        sets = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))
        return await self.c.fetchrow(
            f"UPDATE integ_apps SET {sets} WHERE id = $1 RETURNING {APP_COLUMNS}",  # noqa: S608
            app_id, *fields.values())

    # ---- slash commands -----------------------------------------------------------------

    async def set_commands(self, app_id: str, commands: Sequence[tuple[str, str, str]]) -> list[str]:
        """Replace an app's commands with (command, description, usage hint); returns the
        commands another app already serves (nothing is written then)."""
        taken = await self.c.fetch(
            "SELECT command FROM integ_commands WHERE command = ANY($1::text[]) AND app_id <> $2",
            [c[0] for c in commands], app_id)
        if taken:
            return [r["command"] for r in taken]
        await self.c.execute("DELETE FROM integ_commands WHERE app_id = $1", app_id)
        await self.c.executemany(
            "INSERT INTO integ_commands (command, app_id, description, usage_hint) VALUES ($1, $2, $3, $4)",
            [(c, app_id, d, u) for c, d, u in commands])
        return []

    async def command(self, command: str) -> Row | None:
        """integ_commands joined with the app's enabled flag and commands_url."""
        return await self.c.fetchrow(
            """SELECT c.*, a.enabled, a.commands_url, a.bot_user_id, a.name AS app_name
               FROM integ_commands c JOIN integ_apps a ON a.id = c.app_id WHERE c.command = $1""",
            command)

    async def commands(self) -> list[Row]:
        """Every command of an enabled app: command, description, usage_hint, app_id."""
        return list(await self.c.fetch(
            """SELECT c.command, c.description, c.usage_hint, c.app_id FROM integ_commands c
               JOIN integ_apps a ON a.id = c.app_id WHERE a.enabled ORDER BY c.command"""))

    async def app_commands(self, app_id: str) -> list[Row]:
        """integ_commands of an app."""
        return list(await self.c.fetch(
            "SELECT * FROM integ_commands WHERE app_id = $1 ORDER BY command", app_id))

    # ---- incoming webhooks --------------------------------------------------------------

    async def create_hook(self, hook_id: str, app_id: str, channel_id: str, token_hash: bytes) -> Row:
        """A new integ_hooks row."""
        row = await self.c.fetchrow(
            """INSERT INTO integ_hooks (id, app_id, channel_id, token_hash) VALUES ($1, $2, $3, $4)
               RETURNING *""", hook_id, app_id, channel_id, token_hash)
        assert row is not None  # noqa: S101 - INSERT ... RETURNING without conflict clause
        return row

    async def hook(self, hook_id: str) -> Row | None:
        """integ_hooks with the app's ``enabled``, ``bot_user_id`` and ``app_name``."""
        return await self.c.fetchrow(
            """SELECT h.*, a.enabled, a.bot_user_id, a.name AS app_name
               FROM integ_hooks h JOIN integ_apps a ON a.id = h.app_id WHERE h.id = $1""", hook_id)

    async def hooks(self, app_id: str) -> list[Row]:
        """integ_hooks of an app (id, channel_id, created_at)."""
        return list(await self.c.fetch(
            "SELECT id, channel_id, created_at FROM integ_hooks WHERE app_id = $1 ORDER BY created_at",
            app_id))

    async def delete_hook(self, app_id: str, hook_id: str) -> bool:
        """Remove a webhook; False when the app has no such hook."""
        return bool(await self.c.fetchval(
            "DELETE FROM integ_hooks WHERE id = $1 AND app_id = $2 RETURNING true", hook_id, app_id))

    # ---- response URLs --------------------------------------------------------------------

    async def create_response_url(self, token_hash: bytes, *, app_id: str, channel_id: str,
                                  user_id: str, message_id: int | None, uses: int,
                                  expires_at: datetime) -> None:
        """A new integ_response_urls row."""
        await self.c.execute(
            """INSERT INTO integ_response_urls (token_hash, app_id, channel_id, user_id, message_id,
                                                uses_left, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            token_hash, app_id, channel_id, user_id, message_id, uses, expires_at)

    async def use_response_url(self, token_hash: bytes) -> tuple[str, Row | None]:
        """Spend one use: ("ok", row with the app's enabled/bot_user_id), ("expired" |
        "used_up" | "unknown", None)."""
        row = await self.c.fetchrow(
            """UPDATE integ_response_urls r SET uses_left = r.uses_left - 1
               FROM integ_apps a
               WHERE r.token_hash = $1 AND a.id = r.app_id AND r.uses_left > 0
                 AND r.expires_at > now()
               RETURNING r.*, a.enabled, a.bot_user_id""", token_hash)
        if row is not None:
            return "ok", row
        found = await self.c.fetchrow(
            "SELECT uses_left, expires_at > now() AS live FROM integ_response_urls WHERE token_hash = $1",
            token_hash)
        if found is None:
            return "unknown", None
        return ("used_up" if found["live"] else "expired"), None

    # ---- outbox ---------------------------------------------------------------------------

    async def enqueue(self, *, channel_id: str, event_type: str, event: str,
                      member_apps_only: bool = True, app_ids: Sequence[str] = (),
                      exclude_user: str = "") -> int:
        """One outbox row per enabled app subscribed to ``event_type`` with an events URL
        whose bot user is a member of the channel (or, with ``app_ids``, those apps), but
        the app whose bot is ``exclude_user`` (its own doing); ``event`` is the JSON of the
        Slack event. Returns the rows written."""
        # One INSERT ... SELECT: a send in a channel no app listens to costs one index probe.
        result = await self.c.execute(
            """INSERT INTO integ_outbox (app_id, channel_id, event)
               SELECT a.id, $1, $3::jsonb FROM integ_apps a
               WHERE a.enabled AND a.events_url <> '' AND $2 = ANY(a.events)
                 AND a.bot_user_id <> $6
                 AND (CASE WHEN $4 THEN EXISTS (
                          SELECT 1 FROM chat_members m WHERE m.channel_id = $1
                                                         AND m.user_id = a.bot_user_id)
                      ELSE a.id = ANY($5::text[]) END)""",
            channel_id, event_type, event, member_apps_only, list(app_ids), exclude_user)
        return int(result.split()[-1])

    async def due_heads(self, limit: int) -> list[Row]:
        """The oldest pending event of each (app, channel) whose turn has come and that no
        node holds leased: integ_outbox rows plus the app's events_url and ``enabled``."""
        # Only the head of each (app, channel) queue: a later event never overtakes an
        # earlier one of the same channel that is still being retried.
        return list(await self.c.fetch(
            """SELECT o.*, a.events_url, a.enabled FROM (
                   SELECT DISTINCT ON (app_id, channel_id) * FROM integ_outbox
                   WHERE state = 'pending' ORDER BY app_id, channel_id, id) o
               JOIN integ_apps a ON a.id = o.app_id
               WHERE o.next_at <= now() AND (o.leased_until IS NULL OR o.leased_until < now())
               ORDER BY o.id LIMIT $1""", limit))

    async def lease(self, event_id: int, seconds: float) -> bool:
        """Hold an event for delivery (other nodes skip it); False when another node has it."""
        return bool(await self.c.fetchval(
            """UPDATE integ_outbox SET leased_until = now() + make_interval(secs => $2)
               WHERE id = $1 AND state = 'pending'
                 AND (leased_until IS NULL OR leased_until < now()) RETURNING true""",
            event_id, seconds))

    async def delivered(self, event_id: int) -> None:
        """Mark an event delivered."""
        await self.c.execute(
            """UPDATE integ_outbox SET state = 'delivered', delivered_at = now(), leased_until = NULL,
                   attempts = attempts + 1 WHERE id = $1""", event_id)

    async def failed(self, event_id: int, *, error: str, retry_in: float, max_attempts: int) -> str:
        """Count a failed attempt: retried after ``retry_in`` seconds, or dead-lettered at
        ``max_attempts``; returns the new state."""
        state = await self.c.fetchval(
            """UPDATE integ_outbox SET attempts = attempts + 1, last_error = $2, leased_until = NULL,
                   next_at = now() + make_interval(secs => $3),
                   state = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END
               WHERE id = $1 RETURNING state""", event_id, error[:500], retry_in, max_attempts)
        return str(state)

    async def outbox(self, *, state: str, app_id: str | None, limit: int) -> list[Row]:
        """integ_outbox rows in a state (optionally of one app), newest first."""
        return list(await self.c.fetch(
            """SELECT id, app_id, channel_id, event, state, attempts, next_at, last_error, created_at,
                      delivered_at
               FROM integ_outbox WHERE state = $1 AND ($2::text IS NULL OR app_id = $2)
               ORDER BY id DESC LIMIT $3""", state, app_id, limit))

    async def retry_dead(self, app_id: str) -> int:
        """Put an app's dead-lettered events back in the queue; how many."""
        result = await self.c.execute(
            """UPDATE integ_outbox SET state = 'pending', attempts = 0, next_at = now()
               WHERE app_id = $1 AND state = 'dead'""", app_id)
        return int(result.split()[-1])


__all__ = ["APP_COLUMNS", "AppQueries", "Row"]
