"""Local accounts: invitations, password hashes, refresh tokens (migration 0005_accounts.sql).

Secrets are never stored as given: invitation and refresh tokens as SHA-256 (they are
random 256-bit values, so a plain hash is enough), passwords as argon2id hashes made by
the caller (gateway/chat/accounts.py), e-mail addresses as a keyed HMAC for lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import asyncpg

from storage import audit


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def email_index(key: bytes, email: str) -> str:
    """The lookup key of an e-mail address (case-insensitive)."""
    return hmac.new(key, email.strip().lower().encode(), hashlib.sha256).hexdigest()


class LoginRow(NamedTuple):
    user_id: str
    password_hash: str | None
    disabled: bool


class AccountStore:
    """The account tables on the chat's PostgreSQL pool (each call on one connection)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def invite(self, *, user_id: str, display_name: str, role: str,
                     email_enc: bytes | None, email_idx: str | None, ttl: timedelta) -> str:
        """Create (or update) the chat user and its account with a fresh one-time invitation;
        returns the invitation token. An existing password stays valid until the invitation
        is used (a re-invite is how an admin resets a forgotten password)."""
        token = new_token()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO chat_users (id, display_name, role, email_enc) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name, role = EXCLUDED.role,
                       email_enc = coalesce(EXCLUDED.email_enc, chat_users.email_enc), updated_at = now()""",
                user_id, display_name, role, email_enc)
            try:
                await conn.execute(
                    """INSERT INTO chat_accounts (user_id, email_index, invite_hash, invite_expires)
                       VALUES ($1, $2, $3, $4)
                       ON CONFLICT (user_id) DO UPDATE SET
                           email_index = coalesce(EXCLUDED.email_index, chat_accounts.email_index),
                           invite_hash = EXCLUDED.invite_hash, invite_expires = EXCLUDED.invite_expires,
                           disabled = false""",
                    user_id, email_idx, token_hash(token), datetime.now(UTC) + ttl)
            except asyncpg.UniqueViolationError:
                raise ValueError("another account has this e-mail address") from None
            await audit.append(conn, actor="cli", action="account.invite", target=f"user:{user_id}",
                               after={"display_name": display_name, "role": role})
        return token

    async def accept_invite(self, token: str, password_hash: str) -> str | None:
        """Set the password of the account the unexpired, unused invitation names (and use the
        invitation up); returns the user id, or None."""
        async with self.pool.acquire() as conn, conn.transaction():
            user: str | None = await conn.fetchval(
                """UPDATE chat_accounts SET password_hash = $2, password_set_at = now(),
                       invite_hash = NULL, invite_expires = NULL
                   WHERE invite_hash = $1 AND invite_expires > now() AND NOT disabled
                   RETURNING user_id""", token_hash(token), password_hash)
            if user is not None:
                # A new password ends every session signed in with the old one.
                await conn.execute("UPDATE chat_refresh_tokens SET revoked = true WHERE user_id = $1", user)
                await audit.append(conn, actor=user, action="account.password_set", target=f"user:{user}")
        return user

    async def invitation_valid(self, token: str) -> bool:
        """Whether ``token`` is an unused, unexpired invitation of an enabled account."""
        async with self.pool.acquire() as conn:
            return bool(await conn.fetchval(
                """SELECT true FROM chat_accounts WHERE invite_hash = $1 AND invite_expires > now()
                   AND NOT disabled""", token_hash(token)))

    async def find_login(self, login: str, email_idx: str | None) -> LoginRow | None:
        """The account signed in as ``login``: a user id, or an e-mail address."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT user_id, password_hash, disabled FROM chat_accounts WHERE user_id = $1", login)
            if row is None and email_idx is not None:
                row = await conn.fetchrow(
                    "SELECT user_id, password_hash, disabled FROM chat_accounts WHERE email_index = $1",
                    email_idx)
        return LoginRow(row["user_id"], row["password_hash"], row["disabled"]) if row is not None else None

    async def ensure_external(self, user_id: str) -> bool:
        """The account of a user signed in by an identity provider (no password, no
        invitation; the ``chat_users`` row must exist): made on first sign-in so that
        refresh tokens and ``sentchat users disable`` work as for local accounts. Returns
        whether the account is disabled."""
        async with self.pool.acquire() as conn:
            return bool(await conn.fetchval(
                """INSERT INTO chat_accounts (user_id) VALUES ($1)
                   ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id
                   RETURNING disabled""", user_id))

    async def issue_refresh(self, user_id: str, ttl: timedelta) -> str:
        """A new refresh token (a new family: a new sign-in)."""
        async with self.pool.acquire() as conn:
            return await _issue_refresh(conn, user_id, ttl, None)

    async def rotate_refresh(self, token: str, ttl: timedelta) -> tuple[str, str] | None:
        """Use a refresh token once: returns (user id, the next token of its family), or None
        when it is unknown, expired, revoked, or its account disabled. A token used a second
        time revokes its whole family."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT t.user_id, t.family, t.expires_at, t.used_at, t.revoked, a.disabled
                   FROM chat_refresh_tokens t JOIN chat_accounts a ON a.user_id = t.user_id
                   WHERE t.token_hash = $1 FOR UPDATE OF t""", token_hash(token))
            if row is None:
                return None
            if row["used_at"] is not None:
                await conn.execute("UPDATE chat_refresh_tokens SET revoked = true WHERE family = $1", row["family"])
                return None
            if row["revoked"] or row["disabled"] or row["expires_at"] <= datetime.now(UTC):
                return None
            await conn.execute("UPDATE chat_refresh_tokens SET used_at = now() WHERE token_hash = $1",
                               token_hash(token))
            nxt = await _issue_refresh(conn, row["user_id"], ttl, row["family"])
        return row["user_id"], nxt

    async def revoke_refresh(self, token: str) -> None:
        """Sign out: the token's whole family stops working."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                """UPDATE chat_refresh_tokens SET revoked = true
                   WHERE family = (SELECT family FROM chat_refresh_tokens WHERE token_hash = $1)""",
                token_hash(token))

    async def set_disabled(self, user_id: str, disabled: bool) -> bool:
        """Disable (or enable) an account; disabling revokes every refresh token it holds.
        Returns False when there is no such account."""
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE chat_accounts SET disabled = $2 WHERE user_id = $1 RETURNING true", user_id, disabled)
            if not done:
                return False
            if disabled:
                await conn.execute("UPDATE chat_refresh_tokens SET revoked = true WHERE user_id = $1", user_id)
            await audit.append(conn, actor="cli", action="account.disable" if disabled else "account.enable",
                               target=f"user:{user_id}")
        return True


async def _issue_refresh(conn: asyncpg.Connection, user_id: str, ttl: timedelta, family: str | None) -> str:
    """Insert a refresh token of ``family`` (a new one when None) on ``conn``."""
    token = new_token()
    await conn.execute(
        """INSERT INTO chat_refresh_tokens (token_hash, user_id, family, expires_at)
           VALUES ($1, $2, $3, $4)""",
        token_hash(token), user_id, family or secrets.token_hex(16), datetime.now(UTC) + ttl)
    return token
