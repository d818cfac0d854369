"""Signing in with a local account: ``/v1/auth/login``, ``/v1/auth/refresh``,
``/v1/auth/logout`` and ``/v1/auth/invite`` (set a password from a one-time invitation).

They issue the same connection JWTs the gateway verifies (HS256 with
``client.token.hmac_secret_key``), short-lived; the long-lived credential is a refresh token
in an HttpOnly, SameSite=Strict cookie scoped to ``/v1/auth`` (Secure behind TLS), rotated
on every use and revoked by sign-out, a new password, or ``sentchat users disable``.

Wrong credentials get one generic 401 whether or not the account exists (an unknown
account still costs an argon2 verification, so timing tells nothing either). Attempts are
limited per address and per account (in memory, per gateway process).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson
from msgspec import Meta

from gateway.chat.errors import ChatError, bad_request
from storage import accounts as store

if TYPE_CHECKING:
    from gateway.chat.service import ChatService
    from gateway.extension import Engine
    from gateway.http import Answer, RequestHead

log = logging.getLogger(__name__)

JSON = "application/json"
ACCESS_TTL = 300  # seconds: a disabled account's sessions end within this
REFRESH_TTL = timedelta(days=30)
INVITE_TTL = timedelta(days=7)
COOKIE = "sentchat_refresh"
COOKIE_PATH = "/v1/auth"
MIN_PASSWORD = 10
# Failed attempts per window: per client address (any account), per account. Only failures
# count: a shared office address signing in all morning is not throttled, guessing is.
ADDRESS_LIMIT, ADDRESS_WINDOW = 30, 60.0
ACCOUNT_LIMIT, ACCOUNT_WINDOW = 5, 300.0
ADMIN_PREFIX = "/v1/admin/accounts/"
OIDC_PREFIX = "/v1/auth/oidc/"  # sign-in through the company's provider (oidc.py)


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    login: Annotated[str, Meta(min_length=1, max_length=254)]
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class InviteBody(msgspec.Struct, forbid_unknown_fields=True):
    token: Annotated[str, Meta(min_length=20, max_length=200)]
    password: Annotated[str, Meta(min_length=MIN_PASSWORD, max_length=1024)]


class InviteRequest(msgspec.Struct, forbid_unknown_fields=True):
    display_name: Annotated[str, Meta(min_length=1, max_length=200)]
    email: Annotated[str, Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    admin: bool = False


class Invitation(msgspec.Struct):
    user_id: str
    token: str
    expires_in: int


class Session(msgspec.Struct):
    token: str
    user_id: str
    expires_in: int


class RateLimiter:
    """Sliding-window counter per key; keys with no recent hits are forgotten."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self.hits: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        q = self.hits.get(key)
        if not q:
            return 0.0
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self.hits[key]
            return 0.0
        return max(0.0, q[0] + self.window - now) if len(q) >= self.limit else 0.0

    def hit(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self.hits) >= self.max_keys and key not in self.hits:
            # Under a flood of distinct keys: drop the oldest entries, never grow unbounded.
            for old in list(self.hits)[: self.max_keys // 10]:
                del self.hits[old]
        self.hits.setdefault(key, deque()).append(now)


def email_index_key(engine: Engine) -> bytes:
    """Key of the e-mail lookup HMAC: derived from the token secret (kept outside the
    database, so a database copy alone cannot confirm an address)."""
    settings = engine.settings
    secret = settings.client.token.hmac_secret_key or settings.http_api.key
    return hashlib.sha256(b"sentchat email index\x00" + secret.encode()).digest()


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id, the library's current recommended parameters


def _error(status: int, code: str, message: str, extra: dict[str, str] | None = None) -> Answer:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return (status, body, JSON, extra) if extra else (status, body, JSON)


def _cookies(head: RequestHead) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in head.headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


class AccountsHttp:
    """The ``/v1/auth/`` routes of one gateway process (its rate limits are per process)."""

    def __init__(self, engine: Engine, service: ChatService) -> None:
        self.engine = engine
        self.service = service
        self.store = store.AccountStore(service.db.pool)
        self.hasher = _hasher()
        self.by_address = RateLimiter(ADDRESS_LIMIT, ADDRESS_WINDOW)
        self.by_account = RateLimiter(ACCOUNT_LIMIT, ACCOUNT_WINDOW)
        self._dummy: str | None = None
        from gateway.chat.oidc import OidcHttp

        self.oidc = OidcHttp(self)

    async def handle(self, head: RequestHead, body: bytes) -> Answer:
        if head.path.startswith(ADMIN_PREFIX):
            return await self.handle_admin(head, body)
        if head.path == OIDC_PREFIX.rstrip("/") or head.path.startswith(OIDC_PREFIX):
            if head.method == "POST" and not self._same_origin(head):
                return _error(403, "forbidden", "cross-origin sign-in requests are refused")
            return await self.oidc.handle(head, body)
        routes = {"/v1/auth/login": self.login, "/v1/auth/refresh": self.refresh,
                  "/v1/auth/logout": self.logout, "/v1/auth/invite": self.accept_invite}
        handler = routes.get(head.path)
        if handler is None:
            return _error(404, "not_found", f"no route {head.path}")
        if head.method != "POST":
            return _error(405, "method_not_allowed", "use POST", {"Allow": "POST"})
        if not self._same_origin(head):
            return _error(403, "forbidden", "cross-origin sign-in requests are refused")
        if not self.engine.settings.client.token.hmac_secret_key:
            return _error(503, "unavailable", "local accounts need client.token.hmac_secret_key")
        try:
            return await handler(head, body)
        except ChatError as exc:
            return _error(exc.status, exc.code, exc.message)

    async def handle_admin(self, head: RequestHead, body: bytes) -> Answer:
        """``POST /v1/admin/accounts/{user_id}/invite|disable|enable`` with the API key
        (what ``sentchat users add|disable|enable`` call)."""
        from gateway.chat.schema import UserId

        user, _, action = head.path[len(ADMIN_PREFIX):].partition("/")
        if action not in ("invite", "disable", "enable") or not user:
            return _error(404, "not_found", f"no route {head.path}")
        if not self.engine.carries_api_key(head.headers):
            return _error(401, "unauthorized", "this operation needs the API key (X-API-Key)")
        if head.method != "POST":
            return _error(405, "method_not_allowed", "use POST", {"Allow": "POST"})
        try:
            user = msgspec.convert(user, UserId)
        except msgspec.ValidationError:
            return _error(400, "bad_request", f"not a valid user id: {user[:64]!r}")
        if action == "invite":
            try:
                p = _decode(body, InviteRequest)
            except ChatError as exc:
                return _error(exc.status, exc.code, exc.message)
            cipher = self.service.cipher
            assert cipher is not None  # noqa: S101 - set by the service's start
            email_enc = cipher.encrypt(p.email[:254], aad=f"chat_users.email:{user}") if p.email else None
            email_idx = store.email_index(email_index_key(self.engine), p.email) if p.email else None
            try:
                token = await self.store.invite(user_id=user, display_name=p.display_name,
                                                role="admin" if p.admin else "member", email_enc=email_enc,
                                                email_idx=email_idx, ttl=INVITE_TTL)
            except ValueError as exc:
                return _error(409, "conflict", str(exc))
            self.service.forget_role(user)  # the invitation may have changed it
            return 200, msgspec.json.encode(Invitation(user, token, int(INVITE_TTL.total_seconds()))), JSON
        found = await self.store.set_disabled(user, action == "disable")
        if not found:
            return _error(404, "not_found", f"no local account {user}")
        if action == "disable":
            # Live connections end now on every node; the refresh tokens are revoked, so
            # no new access token is issued (an issued one expires within ACCESS_TTL).
            await self.engine.control({"op": "disconnect", "user": user, "client": "",
                                     "disconnect": {"code": 3503, "reason": "account disabled"}})
        return 200, b'{"ok":true}', JSON

    def _same_origin(self, head: RequestHead) -> bool:
        """A browser's request from another site (Origin names another host) is refused:
        the cookie is SameSite=Strict already; this also covers login CSRF."""
        origin = head.headers.get("origin")
        if origin is None:
            return True
        from gateway.chat.cors import origin_listed

        host = head.headers.get("host", "").lower()
        return (origin.lower().split("://", 1)[-1] == host
                or origin_listed(origin, self.engine.settings.http.cors_origins))

    # ---- the routes -------------------------------------------------------------------

    async def login(self, head: RequestHead, body: bytes) -> Answer:
        p = _decode(body, LoginBody)
        address = head.peer or "?"
        account_key = p.login.strip().lower()
        wait = max(self.by_address.retry_after(address), self.by_account.retry_after(account_key))
        if wait > 0:
            return _error(429, "rate_limited", "too many sign-in attempts; try again later",
                          {"Retry-After": str(int(wait) + 1)})
        email_idx = store.email_index(email_index_key(self.engine), p.login) if "@" in p.login else None
        row = await self.store.find_login(p.login.strip(), email_idx)
        ok = await self._verify(row.password_hash if row is not None else None, p.password)
        if row is None or not ok or row.disabled:
            self.by_address.hit(address)
            self.by_account.hit(account_key)
            if row is not None and row.user_id.lower() != account_key:
                self.by_account.hit(row.user_id.lower())  # e-mail and id share the budget
            return _error(401, "unauthorized", "wrong user name or password")
        if self.by_account.retry_after(row.user_id.lower()) > 0:
            return _error(429, "rate_limited", "too many sign-in attempts; try again later",
                          {"Retry-After": str(int(ACCOUNT_WINDOW))})
        return await self.signed_in(head, row.user_id)

    async def refresh(self, head: RequestHead, body: bytes) -> Answer:
        token = _cookies(head).get(COOKIE, "")
        if not token:
            return _error(401, "unauthorized", "not signed in", self._clear_cookie(head))
        rotated = await self.store.rotate_refresh(token, REFRESH_TTL)
        if rotated is None:
            return _error(401, "unauthorized", "not signed in", self._clear_cookie(head))
        user, nxt = rotated
        return await self._answer(head, user, nxt)

    async def logout(self, head: RequestHead, body: bytes) -> Answer:
        token = _cookies(head).get(COOKIE, "")
        if token:
            await self.store.revoke_refresh(token)
        return 200, b'{"ok":true}', JSON, self._clear_cookie(head)

    async def accept_invite(self, head: RequestHead, body: bytes) -> Answer:
        p = _decode(body, InviteBody)
        address = head.peer or "?"
        if self.by_address.retry_after(address) > 0:
            return _error(429, "rate_limited", "too many attempts; try again later")
        hashed = await asyncio.to_thread(self.hasher.hash, p.password)
        user = await self.store.accept_invite(p.token, hashed)
        if user is None:
            self.by_address.hit(address)
            return _error(401, "unauthorized", "this invitation is not valid (used, expired or revoked)")
        return await self.signed_in(head, user)

    # ---- helpers ----------------------------------------------------------------------

    async def _verify(self, hashed: str | None, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        if hashed is None:
            # No account (or no password yet): spend the same time as a real check.
            if self._dummy is None:
                self._dummy = await asyncio.to_thread(self.hasher.hash, secrets.token_hex(16))
            hashed = self._dummy
            password = password + "\x00never"
        try:
            return bool(await asyncio.to_thread(self.hasher.verify, hashed, password))
        except (VerificationError, InvalidHashError):
            return False

    async def signed_in(self, head: RequestHead, user: str) -> Answer:
        refresh = await self.store.issue_refresh(user, REFRESH_TTL)
        return await self._answer(head, user, refresh)

    async def _answer(self, head: RequestHead, user: str, refresh: str) -> Answer:
        from gateway.chat.schema import NoParams

        actor = await self.service.actor(user)
        profile = (await self.service.users_me(actor, NoParams())).user
        now = int(time.time())
        token = self.engine.issue_token({"sub": user, "iat": now, "exp": now + ACCESS_TTL,
                                         "info": {"name": profile.display_name}})
        body = msgspec.json.encode(Session(token=token, user_id=user, expires_in=ACCESS_TTL))
        return 200, body, JSON, {"Set-Cookie": self._cookie(head, refresh, int(REFRESH_TTL.total_seconds())),
                                 "Cache-Control": "no-store"}

    def _cookie(self, head: RequestHead, value: str, max_age: int) -> str:
        secure = "; Secure" if head.headers.get("x-forwarded-proto", "").lower() == "https" else ""
        return f"{COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"

    def _clear_cookie(self, head: RequestHead) -> dict[str, str]:
        return {"Set-Cookie": self._cookie(head, "", 0), "Cache-Control": "no-store"}


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise bad_request(str(exc)) from None
    except msgspec.DecodeError:
        raise bad_request("the body must be a JSON object") from None
