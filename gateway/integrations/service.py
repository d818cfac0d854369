"""The integrations service: apps and their bots, incoming webhooks, slash commands,
interactive messages and the event outbox, all on top of the chat service.

Everything an app does to the chat goes through ``ChatService`` as the app's bot user, so
the chat's RBAC, audit records and real-time events apply unchanged; what is proper to
integrations (apps, hooks, response URLs, the outbox) lives in storage/apps.py. Outgoing
calls to apps (commands, clicks, events) are signed like Slack's and never run inside a
chat write: events are queued in the outbox in the write's own transaction and delivered by
gateway/integrations/outbox.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from gateway.chat import rbac
from gateway.chat import schema as s
from gateway.chat.errors import ChatError, bad_request, conflict, forbidden, not_found, unauthorized
from gateway.chat.service import Actor, ChatService, MessageExtra
from gateway.integrations import slack
from storage.apps import AppQueries, Row

if TYPE_CHECKING:
    import aiohttp

    from gateway.config import IntegrationSettings
    from gateway.extension import Engine
    from gateway.integrations.unfurl import Unfurler
    from storage.chat import ChatQueries

log = logging.getLogger(__name__)

TEAM_ID = "T0SENTCHAT"
"""The one workspace, as Slack's ``team_id`` (apps and SDKs expect one)."""
TOKEN_PREFIX = "xoxb-"  # noqa: S105 - the bot-token prefix Slack SDKs recognise, not a secret
EVENT_TYPES = ("message", "app_mention", "reaction_added", "member_joined_channel")

# Chat operations a bot token may never call on /v1 (people's own state, moderation, admin).
BOT_FORBIDDEN_OPS = frozenset({
    "messages.history", "presence.set_status", "admin.users.upsert", "channels.kick",
    "read.mark", "unread.counts", "channels.mute", "threads.follow",
})
_SLACK_MENTION = re.compile(r"(?<![\w@<])@([A-Za-z0-9][A-Za-z0-9._-]{0,63})")


def hash_secret(token: str) -> bytes:
    """What is stored of a bot token, hook token or response URL: its SHA-256 (they are
    random, 32 bytes and more, so a plain hash is enough; no salt or stretching)."""
    return hashlib.sha256(token.encode()).digest()


def slack_text(text: str) -> str:
    """SENTchat text with ``@user`` / ``@channel`` / ``@here`` written Slack's way."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1).rstrip(".")
        tail = m.group(1)[len(name):]
        if name in ("channel", "here"):
            return f"<!{name}>{tail}"
        return f"<@{name}>{tail}"

    return _SLACK_MENTION.sub(one, text)


class AppSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Fields of ``POST /v1/apps`` and ``PATCH /v1/apps/{id}`` (all optional on PATCH)."""

    name: str | None = None
    commands_url: str | None = None
    interactivity_url: str | None = None
    events_url: str | None = None
    events: list[str] | None = None
    channels: list[str] | None = None
    click_policy: str | None = None
    enabled: bool | None = None
    commands: list[CommandSpec] | None = None


class CommandSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    command: str
    description: str = ""
    usage_hint: str = ""


_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,79}$")
_COMMAND = re.compile(r"^/[a-z0-9][a-z0-9_-]{0,31}$")
BUILTIN_COMMANDS: dict[str, str] = {
    "/me": "Send an action message: /me waves",
    "/shrug": "Append ¯\\_(ツ)_/¯ to a message",
    "/topic": "Set the channel topic",
    "/invite": "Invite people: /invite @user ...",
    "/leave": "Leave this channel",
    "/dnd": "Do Not Disturb for a while: /dnd 30m (/dnd off)",
    "/away": "Toggle away",
    "/status": "Set a status: /status text [until 2h] (/status clear)",
    "/mute": "Mute or unmute this channel",
    "/huddle": "Start or join this channel's huddle (/huddle end, /huddle leave)",
}


def _check_url(value: str, field: str) -> str:
    if value and (not value.startswith(("http://", "https://")) or len(value) > 2000 or " " in value):
        raise bad_request(f"{field}: an http(s) URL")
    return value


def _duration(text: str) -> float | None:
    m = re.fullmatch(r"(\d{1,5})\s*(s|m|min|h|d)?", text.strip())
    if m is None:
        return None
    unit = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2) or "m"]
    return int(m.group(1)) * unit


class HookLimiter:
    """Per-hook token buckets (per node): ``rate`` per second after a ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed; otherwise seconds until the next message would be."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


class IntegrationService:
    """Apps, hooks, commands, clicks and events over one chat service."""

    def __init__(self, engine: Engine, chat: ChatService, settings: IntegrationSettings) -> None:
        self.engine = engine
        self.chat = chat
        self.settings = settings
        self.limiter = HookLimiter(settings.hook_rate, settings.hook_burst)
        self._http: aiohttp.ClientSession | None = None
        self.outbox: Any = None  # gateway.integrations.outbox.Outbox, set by start()
        self.unfurler: Unfurler | None = None
        from gateway.integrations.rooms import Rooms

        self.rooms = Rooms(self)

    async def start(self) -> None:
        """The HTTP client for calls to apps, the outbox sender, link previews."""
        from gateway.integrations.outbox import Outbox

        self.outbox = Outbox(self)
        self.outbox.start()
        if self.settings.unfurl_enabled and self.settings.unfurl_max_links > 0:
            from gateway.integrations.unfurl import Unfurler

            self.unfurler = Unfurler(self.settings, self.http)
            self.chat.link_hook = self._unfurl_later

    async def stop(self) -> None:
        if self.outbox is not None:
            await self.outbox.stop()
        if self.unfurler is not None:
            await self.unfurler.close()
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            import aiohttp

            # No cookies kept between apps: one app must never see another's.
            self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    def base_url(self, host: str | None = None) -> str:
        """Where apps reach this gateway (hooks, response URLs)."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        if host:
            return f"http://{host}"
        http = self.engine.settings.http
        return f"http://{http.host}:{http.port}"

    # ---- link previews -------------------------------------------------------------------

    def _unfurl_later(self, message: s.Message) -> None:
        """Called by the chat right after a send/edit was acknowledged: the fetching runs
        as an engine job, so neither the sender nor the send path waits for any page."""
        # An app's Block Kit message is laid out by the app itself (as in Slack, where
        # apps unfurl their own links through chat.unfurl); everything else is previewed.
        if message.app_id is None or not message.blocks:
            self.engine.spawn(self._unfurl(message.id, message.version, message.text))

    async def _unfurl(self, message_id: int, version: int, text: str) -> None:
        assert self.unfurler is not None  # noqa: S101 - the hook is set with the unfurler
        previews = await self.unfurler.previews(text)
        if previews:
            await self.chat.attach_previews(message_id, version, previews)

    # ---- apps (admin) ---------------------------------------------------------------------

    def _app_json(self, r: Row, commands: list[Row] | None = None) -> dict[str, Any]:
        out = {"id": r["id"], "name": r["name"], "bot_user_id": r["bot_user_id"],
               "commands_url": r["commands_url"], "interactivity_url": r["interactivity_url"],
               "events_url": r["events_url"], "events": list(r["events"]),
               "channels": list(r["channels"]), "click_policy": r["click_policy"],
               "enabled": r["enabled"], "created_by": r["created_by"],
               "created_at": r["created_at"].timestamp()}
        if commands is not None:
            out["commands"] = [{"command": c["command"], "description": c["description"],
                                "usage_hint": c["usage_hint"]} for c in commands]
        return out

    def _validate_spec(self, spec: AppSpec) -> None:
        if spec.name is not None and not _APP_NAME.match(spec.name):
            raise bad_request("name: 1-80 letters, digits, spaces, _ . -")
        for field in ("commands_url", "interactivity_url", "events_url"):
            value = getattr(spec, field)
            if value is not None:
                _check_url(value, field)
        if spec.events is not None:
            unknown = sorted(set(spec.events) - set(EVENT_TYPES))
            if unknown:
                raise bad_request(f"events: unknown {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)})")
        if spec.channels is not None and (len(spec.channels) > 500 or any(
                not re.fullmatch(r"[a-z0-9_]{1,64}", c) for c in spec.channels)):
            raise bad_request("channels: up to 500 channel ids")
        if spec.click_policy is not None and spec.click_policy not in ("members", "admins"):
            raise bad_request("click_policy: members or admins")
        if spec.commands is not None:
            if len(spec.commands) > 50:
                raise bad_request("commands: at most 50")
            for c in spec.commands:
                if not _COMMAND.match(c.command) or c.command in BUILTIN_COMMANDS:
                    raise bad_request(f"commands: {c.command!r} is not a free command name (/name)")
                if len(c.description) > 200 or len(c.usage_hint) > 200:
                    raise bad_request("commands: description and usage_hint up to 200 characters")

    async def create_app(self, admin: Actor, spec: AppSpec) -> dict[str, Any]:
        """Register an app; the answer carries the bot token and signing secret, which are
        never shown again (the token is stored hashed)."""
        self._validate_spec(spec)
        if not spec.name:
            raise bad_request("name is required")
        app_id = "A" + secrets.token_hex(5).upper()
        bot_user = f"bot.{app_id.lower()}"
        token = f"{TOKEN_PREFIX}{app_id}-{secrets.token_urlsafe(32)}"
        signing_secret = secrets.token_hex(32)
        assert self.chat.cipher is not None  # noqa: S101 - set by ChatService.start
        secret_enc = self.chat.cipher.encrypt(signing_secret, aad=f"integ_apps.signing_secret:{app_id}")
        channels = sorted(set(spec.channels or []))
        if spec.events_url:
            # The handshake is signed with the app's secret, which the app learns from this
            # very answer: its events URL is set afterwards (PATCH) and verified then.
            raise bad_request("set events_url with PATCH once the app knows its signing secret "
                              "(it must answer the url_verification challenge)")
        async with self.chat.db.write() as q:
            a = AppQueries(q.c)
            for channel_id in channels:
                if await q.channel(channel_id) is None:
                    raise not_found(f"channel {channel_id}")
            await q.upsert_user(bot_user, display_name=spec.name, title="app", manager=None,
                                role="member", email_enc=None)
            row = await a.create_app(
                app_id=app_id, name=spec.name, bot_user_id=bot_user, token_hash=hash_secret(token),
                signing_secret_enc=secret_enc, commands_url=spec.commands_url or "",
                interactivity_url=spec.interactivity_url or "", events_url=spec.events_url or "",
                events=sorted(set(spec.events or [])), channels=channels,
                click_policy=spec.click_policy or "members", created_by=admin.id)
            if row is None:
                raise conflict("name_taken", f"an app named {spec.name!r} exists")
            if spec.commands:
                taken = await a.set_commands(app_id, [(c.command, c.description, c.usage_hint)
                                                      for c in spec.commands])
                if taken:
                    raise conflict("command_taken", f"served by another app: {', '.join(taken)}")
            for channel_id in channels:
                await q.join(channel_id, [bot_user])
            await q.audit(actor=admin.id, action="app.create", target=f"app:{app_id}",
                          after={**self._app_json(row), "commands": [c.command for c in spec.commands or []]})
            commands = await a.app_commands(app_id)
        for channel_id in channels:
            await self.chat._emit(channel_id, {"type": "member.joined", "user_id": bot_user, "by": admin.id},
                                  f"member.joined:{channel_id}:{bot_user}:app")
        return {"app": self._app_json(row, commands), "bot_token": token, "signing_secret": signing_secret}

    async def verify_events_url(self, app_id: str, url: str) -> None:
        """Slack's ``url_verification`` handshake: a signed challenge the events URL must
        echo before it receives events (so a typo'd URL is refused when saved)."""
        challenge = secrets.token_urlsafe(24)
        body = orjson.dumps({"token": "", "challenge": challenge, "type": "url_verification"})
        try:
            status, answer = await self.call_app(app_id, url, body, "application/json",
                                                 self.settings.command_timeout)
        except Exception as exc:  # unreachable, timeout: the URL is not usable
            raise bad_request(f"events_url did not answer the url_verification challenge ({exc!r})") from None
        echoed = None
        try:
            value = orjson.loads(answer)
            echoed = value.get("challenge") if isinstance(value, dict) else None
        except orjson.JSONDecodeError:
            echoed = answer.decode("utf-8", "replace").strip()
        if status != 200 or echoed != challenge:
            raise bad_request(f"events_url did not echo the url_verification challenge (HTTP {status})")

    async def list_apps(self) -> dict[str, Any]:
        async with self.chat.db.read() as q:
            rows = await AppQueries(q.c).apps()
        return {"apps": [self._app_json(r) for r in rows]}

    async def get_app(self, app_id: str) -> dict[str, Any]:
        async with self.chat.db.read() as q:
            a = AppQueries(q.c)
            row = await a.app(app_id)
            if row is None:
                raise not_found("app")
            return {"app": self._app_json(row, await a.app_commands(app_id)),
                    "hooks": [{"id": h["id"], "channel_id": h["channel_id"],
                               "created_at": h["created_at"].timestamp()} for h in await a.hooks(app_id)]}

    async def update_app(self, admin: Actor, app_id: str, spec: AppSpec) -> dict[str, Any]:
        """Change an app. ``enabled: false`` stops its token, webhooks, response URLs,
        commands and events at once: every one of them reads the flag per request."""
        self._validate_spec(spec)
        if spec.events_url:
            await self.verify_events_url(app_id, spec.events_url)
        fields = {k: v for k, v in msgspec.structs.asdict(spec).items()
                  if v is not None and k != "commands"}
        if "events" in fields:
            fields["events"] = sorted(set(fields["events"]))
        if "channels" in fields:
            fields["channels"] = sorted(set(fields["channels"]))
        async with self.chat.db.write() as q:
            a = AppQueries(q.c)
            before = await a.app(app_id)
            if before is None:
                raise not_found("app")
            for channel_id in fields.get("channels", []):
                if await q.channel(channel_id) is None:
                    raise not_found(f"channel {channel_id}")
                await q.join(channel_id, [before["bot_user_id"]])
            row = await a.update_app(app_id, fields) if fields else before
            if spec.commands is not None:
                taken = await a.set_commands(app_id, [(c.command, c.description, c.usage_hint)
                                                      for c in spec.commands])
                if taken:
                    raise conflict("command_taken", f"served by another app: {', '.join(taken)}")
            await q.audit(actor=admin.id, action="app.update", target=f"app:{app_id}",
                          before=self._app_json(before), after=self._app_json(row))
            commands = await a.app_commands(app_id)
        return {"app": self._app_json(row, commands)}

    async def rotate_token(self, admin: Actor, app_id: str) -> dict[str, Any]:
        """A new bot token (shown once); the old one stops working at once."""
        token = f"{TOKEN_PREFIX}{app_id}-{secrets.token_urlsafe(32)}"
        async with self.chat.db.write() as q:
            row = await AppQueries(q.c).update_app(app_id, {"token_hash": hash_secret(token)})
            if row is None:
                raise not_found("app")
            await q.audit(actor=admin.id, action="app.rotate_token", target=f"app:{app_id}")
        return {"app": self._app_json(row), "bot_token": token}

    async def create_hook(self, admin: Actor, app_id: str, channel_id: str, host: str | None) -> dict[str, Any]:
        """An incoming webhook posting into ``channel_id`` as the app's bot (which joins
        the channel); the URL is shown once (its token is stored hashed)."""
        if not isinstance(channel_id, str) or not re.fullmatch(r"[a-z0-9_]{1,64}", channel_id):
            raise bad_request("channel_id: a channel id")
        hook_id = "H" + secrets.token_hex(6).upper()
        token = secrets.token_urlsafe(24)
        async with self.chat.db.write() as q:
            a = AppQueries(q.c)
            app = await a.app(app_id)
            if app is None:
                raise not_found("app")
            if await q.channel(channel_id) is None:
                raise not_found("channel")
            if app["channels"] and channel_id not in app["channels"]:
                raise forbidden("the app may not post to this channel (channels)")
            await a.create_hook(hook_id, app_id, channel_id, hash_secret(token))
            await q.join(channel_id, [app["bot_user_id"]])
            await q.audit(actor=admin.id, action="hook.create", target=f"app:{app_id}",
                          after={"hook_id": hook_id, "channel_id": channel_id})
        # One path segment, `/hooks/<id>`: the id carries its secret (`H…` + "." + token),
        # as Slack's and Mattermost's webhook URLs are themselves the credential.
        url = f"{self.base_url(host)}{self.settings.hooks_prefix}{hook_id}.{token}"
        return {"hook": {"id": hook_id, "channel_id": channel_id, "url": url}}

    async def delete_hook(self, admin: Actor, app_id: str, hook_id: str) -> dict[str, Any]:
        async with self.chat.db.write() as q:
            if not await AppQueries(q.c).delete_hook(app_id, hook_id):
                raise not_found("hook")
            await q.audit(actor=admin.id, action="hook.delete", target=f"app:{app_id}",
                          before={"hook_id": hook_id})
        return {"ok": True}

    async def outbox_list(self, app_id: str | None, state: str, limit: int) -> dict[str, Any]:
        """Admins: dead-lettered (or pending, delivered) events."""
        if state not in ("pending", "delivered", "dead"):
            raise bad_request("state: pending, delivered or dead")
        async with self.chat.db.read() as q:
            rows = await AppQueries(q.c).outbox(state=state, app_id=app_id, limit=limit)
        return {"events": [{
            "id": r["id"], "app_id": r["app_id"], "channel_id": r["channel_id"],
            "event": orjson.loads(r["event"]), "state": r["state"], "attempts": r["attempts"],
            "last_error": r["last_error"], "created_at": r["created_at"].timestamp(),
            "next_at": r["next_at"].timestamp()} for r in rows]}

    async def outbox_retry(self, admin: Actor, app_id: str) -> dict[str, Any]:
        async with self.chat.db.write() as q:
            n = await AppQueries(q.c).retry_dead(app_id)
            await q.audit(actor=admin.id, action="app.outbox_retry", target=f"app:{app_id}",
                          after={"events": n})
        self.outbox.wake()
        return {"ok": True, "requeued": n}

    # ---- bot tokens -------------------------------------------------------------------------

    async def app_for_token(self, token: str) -> Row:
        """The enabled app a bot token belongs to; 401 otherwise (a disabled app's token
        fails from the next request on: nothing is cached)."""
        if not token.startswith(TOKEN_PREFIX):
            raise unauthorized("not a bot token")
        async with self.chat.db.read() as q:
            app = await AppQueries(q.c).app_by_token(hash_secret(token))
        if app is None:
            raise unauthorized("invalid bot token")
        if not app["enabled"]:
            raise ChatError("unauthorized", "the app is disabled", 401)
        return app

    def bot_actor(self, app: Row) -> Actor:
        # A bot is always a plain member, whatever its user row says: its powers are the
        # app's (channels, forbidden operations), never a workspace admin's.
        return Actor(app["bot_user_id"], "member")

    async def authorize_bot(self, app: Row, op: str, params: Any) -> None:
        """A bot token's narrower RBAC on top of the chat's: no operation on people's own
        state or moderation, and only the app's channels when it lists any."""
        if op in BOT_FORBIDDEN_OPS:
            raise forbidden(f"bot tokens cannot call {op}")
        allowed = list(app["channels"])
        if not allowed:
            return
        channel_id = getattr(params, "channel_id", None)
        if channel_id is None and getattr(params, "message_id", None) is not None:
            async with self.chat.db.read() as q:
                row = await q.message(params.message_id)
            channel_id = row["channel_id"] if row is not None else None
        if channel_id is not None and channel_id not in allowed:
            raise forbidden("the app may not act in this channel")
        if op in ("channels.create", "dm.open"):
            raise forbidden("an app restricted to channels cannot open new ones")

    # ---- posting as an app ----------------------------------------------------------------

    async def post(self, app_id: str, bot_user: str, channel_id: str, *, text: str,
                   blocks: list[dict[str, Any]] | None, profile: dict[str, str] | None = None,
                   thread_parent: int | None = None) -> s.MessageResult:
        """A message by the app's bot (blocks validated by the caller)."""
        if not text.strip() and blocks:
            text = slack.blocks_text(blocks) or " "
        if not text.strip():
            raise bad_request("no_text")
        params = s.MessagesSend(channel_id=channel_id, text=text[:40_000], thread_parent=thread_parent)
        extra = MessageExtra(blocks=orjson.dumps(blocks).decode() if blocks else None, app_id=app_id,
                             bot_profile=orjson.dumps(profile).decode() if profile else None)
        return await self.chat.messages_send(Actor(bot_user, "member"), params, extra=extra)

    async def ephemeral(self, user: str, channel_id: str, app_id: str | None, text: str,
                        blocks: list[dict[str, Any]] | None = None) -> None:
        """Something only ``user`` sees: on its personal channel, never stored."""
        await self.chat._push(user, {"type": "ephemeral", "channel_id": channel_id, "app_id": app_id,
                                     "text": text, "blocks": blocks, "at": time.time()})

    # ---- incoming webhooks ---------------------------------------------------------------

    async def hook_post(self, hook_id: str, token: str, body: bytes, content_type: str) -> tuple[int, bytes, dict[str, str]]:
        """``POST /hooks/<id>`` (``<id>`` = hook id + "." + token): Slack's incoming-webhook JSON (or a form with
        ``payload=<json>``, as Mattermost also takes); answers as Slack does (``ok``, or
        an error word with 400/403/404/410/429)."""
        async with self.chat.db.read() as q:
            hook = await AppQueries(q.c).hook(hook_id)
        # The token is compared in constant time (hash of what came vs the stored hash),
        # and an unknown hook and a wrong token answer alike.
        import hmac

        expected = hook["token_hash"] if hook is not None else hash_secret(secrets.token_hex(8))
        if not hmac.compare_digest(bytes(expected), hash_secret(token)) or hook is None:
            return 403, b"invalid_token", {}
        if not hook["enabled"]:
            return 403, b"invalid_token", {}
        wait = self.limiter.take(hook_id)
        if wait > 0:
            return 429, b"rate_limited", {"Retry-After": str(max(1, int(wait + 0.999)))}
        payload = _payload(body, content_type)
        if payload is None:
            return 400, b"invalid_payload", {}
        text = payload.get("text", "")
        if not isinstance(text, str) or len(text) > 40_000:
            return 400, b"invalid_payload", {}
        blocks = None
        if payload.get("blocks") is not None:
            try:
                blocks = slack.validate_blocks(payload["blocks"])
            except slack.BlockError:
                return 400, b"invalid_blocks", {}
        if not text and isinstance(payload.get("attachments"), list):
            # Legacy attachments: only their fallback text is kept.
            text = "\n".join(str(a.get("fallback") or a.get("text") or "")
                             for a in payload["attachments"] if isinstance(a, dict))
        if not text.strip() and not blocks:
            return 400, b"no_text", {}
        profile = {k: str(payload[k])[:200] for k in ("username", "icon_emoji", "icon_url")
                   if isinstance(payload.get(k), str) and payload[k]}
        if "icon_url" in profile and not profile["icon_url"].startswith(("https://", "http://")):
            return 400, b"invalid_payload", {}
        thread = None
        if payload.get("thread_ts") is not None:
            thread = slack.message_id_of(str(payload["thread_ts"]))
            if thread is None:
                return 400, b"invalid_thread_ts", {}
        try:
            await self.post(hook["app_id"], hook["bot_user_id"], hook["channel_id"],
                            text=slack.mrkdwn_to_text(text), blocks=blocks,
                            profile=profile or None, thread_parent=thread)
        except ChatError as exc:
            if exc.code == "archived" or "archived" in exc.message:
                return 410, b"channel_is_archived", {}
            if exc.status == 404:
                return 404, b"channel_not_found", {}
            if exc.status == 403:
                return 403, b"action_prohibited", {}
            return 400, b"invalid_payload", {}
        return 200, b"ok", {}

    # ---- response URLs -------------------------------------------------------------------

    async def new_response_url(self, app_id: str, channel_id: str, user: str,
                               message_id: int | None, host: str | None) -> str:
        token = secrets.token_urlsafe(32)
        async with self.chat.db.read() as q:
            await AppQueries(q.c).create_response_url(
                hash_secret(token), app_id=app_id, channel_id=channel_id, user_id=user,
                message_id=message_id, uses=self.settings.response_url_uses,
                expires_at=datetime.now(UTC) + timedelta(seconds=self.settings.response_url_ttl))
        return f"{self.base_url(host)}{self.settings.hooks_prefix}r/{token}"

    async def respond(self, token: str, body: bytes, content_type: str) -> tuple[int, bytes, dict[str, str]]:
        """A delayed answer through a response_url: ephemeral (default), ``in_channel``,
        ``replace_original`` / ``delete_original`` (the message the click came from)."""
        async with self.chat.db.read() as q:
            state, row = await AppQueries(q.c).use_response_url(hash_secret(token))
        if row is None:
            word = {"expired": b"expired_url", "used_up": b"used_url"}.get(state, b"invalid_url")
            return 404, word, {}
        if not row["enabled"]:
            return 403, b"invalid_token", {}
        payload = _payload(body, content_type)
        if payload is None:
            return 400, b"invalid_payload", {}
        blocks = None
        if payload.get("blocks") is not None:
            try:
                blocks = slack.validate_blocks(payload["blocks"])
            except slack.BlockError:
                return 400, b"invalid_blocks", {}
        text = payload.get("text") or ""
        if not isinstance(text, str):
            return 400, b"invalid_payload", {}
        text = slack.mrkdwn_to_text(text)
        bot = Actor(row["bot_user_id"], "member")
        try:
            if payload.get("delete_original") and row["message_id"] is not None:
                await self.chat.messages_delete(bot, s.MessageRef(message_id=row["message_id"]))
            elif payload.get("replace_original") and row["message_id"] is not None:
                if not text.strip() and not blocks:
                    return 400, b"no_text", {}
                await self.chat.messages_edit(
                    bot, s.MessagesEdit(message_id=row["message_id"],
                                        text=text if text.strip() else slack.blocks_text(blocks or []) or " "),
                    blocks=orjson.dumps(blocks).decode() if blocks else None, set_blocks=True)
            elif payload.get("response_type") == "in_channel":
                await self.post(row["app_id"], row["bot_user_id"], row["channel_id"], text=text, blocks=blocks)
            else:
                if not text.strip() and not blocks:
                    return 400, b"no_text", {}
                await self.ephemeral(row["user_id"], row["channel_id"], row["app_id"], text, blocks)
        except ChatError as exc:
            return exc.status, exc.code.encode(), {}
        return 200, b"ok", {}

    # ---- signed calls to apps ------------------------------------------------------------

    async def _secret(self, app_id: str) -> str:
        async with self.chat.db.read() as q:
            blob = await AppQueries(q.c).signing_secret(app_id)
        assert blob is not None and self.chat.cipher is not None  # noqa: S101 - the app exists
        return self.chat.cipher.decrypt(bytes(blob), aad=f"integ_apps.signing_secret:{app_id}")

    async def signing_secret(self, app_id: str) -> str:
        return await self._secret(app_id)

    async def call_app(self, app_id: str, url: str, body: bytes, content_type: str,
                       deadline: float) -> tuple[int, bytes]:
        """POST a signed request to an app; raises TimeoutError / aiohttp errors."""
        import aiohttp

        headers = {"Content-Type": content_type, **slack.signed_headers(await self._secret(app_id), body),
                   "User-Agent": "SENTchat-Integrations/1"}
        async with self.http.post(url, data=body, headers=headers, allow_redirects=False,
                                  timeout=aiohttp.ClientTimeout(total=deadline)) as resp:
            return resp.status, await resp.content.read(1_000_000)

    # ---- slash commands ------------------------------------------------------------------

    async def commands_list(self, actor: Actor) -> dict[str, Any]:
        async with self.chat.db.read() as q:
            rows = await AppQueries(q.c).commands()
        return {"commands": [{"command": c, "description": d, "usage_hint": "", "app_id": None}
                             for c, d in BUILTIN_COMMANDS.items()] + [
            {"command": r["command"], "description": r["description"], "usage_hint": r["usage_hint"],
             "app_id": r["app_id"]} for r in rows]}

    async def commands_run(self, actor: Actor, channel_id: str, command: str, text: str,
                           host: str | None = None) -> dict[str, Any]:
        """Run a slash command in a channel the caller can see; the answer is what the
        caller sees at once (``response_type``, ``text``, ``blocks``)."""
        if not isinstance(command, str) or not re.fullmatch(r"/[a-z0-9_-]{1,32}", command):
            raise bad_request("command: /name")
        if not isinstance(text, str) or len(text) > 4000:
            raise bad_request("text: at most 4000 characters")
        if not isinstance(channel_id, str) or not re.fullmatch(r"[a-z0-9_]{1,64}", channel_id):
            raise bad_request("channel_id: a channel id")
        async with self.chat.db.read() as q:
            ch, role = await self.chat._visible(q, actor, channel_id)
        if command in BUILTIN_COMMANDS:
            return await self._builtin(actor, ch, command, text.strip())
        async with self.chat.db.read() as q:
            cmd = await AppQueries(q.c).command(command)
        if cmd is None or not cmd["enabled"]:
            raise not_found(f"command {command}")
        if not cmd["commands_url"]:
            raise ChatError("app_unavailable", f"{command}: the app serves no commands URL", 503)
        response_url = await self.new_response_url(cmd["app_id"], channel_id, actor.id, None, host)
        from urllib.parse import urlencode

        form = urlencode({
            "token": "", "team_id": TEAM_ID, "team_domain": "sentchat", "channel_id": channel_id,
            "channel_name": ch["name"] or channel_id, "user_id": actor.id, "user_name": actor.id,
            "command": command, "text": text, "api_app_id": cmd["app_id"], "is_enterprise_install": "false",
            "response_url": response_url, "trigger_id": f"{int(time.time())}.{secrets.token_hex(8)}"}).encode()
        try:
            status, answer = await self.call_app(cmd["app_id"], cmd["commands_url"], form,
                                                 "application/x-www-form-urlencoded",
                                                 self.settings.command_timeout)
        except TimeoutError:
            return await self._ephemeral_result(
                actor, channel_id, cmd["app_id"],
                f"{command} did not answer within {self.settings.command_timeout:g} s; try again later.")
        except Exception as exc:  # connection refused, DNS, TLS: the app is unreachable
            log.info("command %s: app %s unreachable: %r", command, cmd["app_id"], exc)
            return await self._ephemeral_result(actor, channel_id, cmd["app_id"],
                                                f"{command} is not reachable right now.")
        if status != 200:
            return await self._ephemeral_result(actor, channel_id, cmd["app_id"],
                                                f"{command} failed (the app answered {status}).")
        return await self._app_answer(cmd["app_id"], cmd["bot_user_id"], actor, channel_id, answer)

    async def _ephemeral_result(self, actor: Actor, channel_id: str, app_id: str | None,
                                text: str) -> dict[str, Any]:
        await self.ephemeral(actor.id, channel_id, app_id, text)
        return {"response_type": "ephemeral", "text": text, "blocks": None}

    async def _app_answer(self, app_id: str, bot_user: str, actor: Actor, channel_id: str,
                          answer: bytes) -> dict[str, Any]:
        """An app's immediate answer: empty (just acknowledged), JSON, or plain text."""
        if not answer.strip():
            return {"response_type": "ephemeral", "text": "", "blocks": None}
        try:
            data = orjson.loads(answer)
        except orjson.JSONDecodeError:
            data = {"text": answer.decode("utf-8", "replace")[:4000]}
        if not isinstance(data, dict):
            data = {"text": str(data)[:4000]}
        text = slack.mrkdwn_to_text(str(data.get("text") or ""))
        blocks = None
        if data.get("blocks") is not None:
            try:
                blocks = slack.validate_blocks(data["blocks"])
            except slack.BlockError as exc:
                return await self._ephemeral_result(actor, channel_id, app_id, f"the app answered bad blocks: {exc}")
        kind = "in_channel" if data.get("response_type") == "in_channel" else "ephemeral"
        if kind == "in_channel":
            await self.post(app_id, bot_user, channel_id, text=text, blocks=blocks)
        elif text or blocks:
            await self.ephemeral(actor.id, channel_id, app_id, text, blocks)
        return {"response_type": kind, "text": text, "blocks": blocks}

    async def _builtin(self, actor: Actor, ch: Row, command: str, text: str) -> dict[str, Any]:
        """The commands every workspace has; each is a chat operation as the caller."""
        c = self.chat
        cid = ch["id"]

        def done(message: str, kind: str = "ephemeral") -> dict[str, Any]:
            return {"response_type": kind, "text": message, "blocks": None}

        if command in ("/me", "/shrug"):
            body = f"_{text}_" if command == "/me" else f"{text} ¯\\_(ツ)_/¯".strip()
            if not text and command == "/me":
                raise bad_request("/me needs text")
            await c.messages_send(actor, s.MessagesSend(channel_id=cid, text=body))
            return done(body, "in_channel")
        if command == "/topic":
            await c.channels_set_topic(actor, s.ChannelsSetTopic(channel_id=cid, topic=text[:250]))
            return done(f"Topic set to: {text}" if text else "Topic cleared")
        if command == "/invite":
            users = [u.lstrip("@") for u in text.split() if u.strip("@")]
            if not users:
                raise bad_request("/invite @user ...")
            await c.channels_invite(actor, s.ChannelsInvite(channel_id=cid, user_ids=users[:100]))
            return done("Invited " + ", ".join(f"@{u}" for u in users))
        if command == "/leave":
            await c.channels_leave(actor, s.ChannelRef(channel_id=cid))
            return done("You left the channel")
        if command == "/mute":
            async with c.db.read() as q:
                row = await q.c.fetchrow("SELECT muted FROM chat_members WHERE channel_id = $1 AND user_id = $2",
                                         cid, actor.id)
            if row is None:
                raise ChatError("not_member", "not a member of this channel", 409)
            await c.channels_mute(actor, s.SetMuted(channel_id=cid, muted=not row["muted"]))
            return done("Channel unmuted" if row["muted"] else "Channel muted")
        if command == "/away":
            user = await c._user(actor.id, actor)
            await c.presence_set_status(actor, s.SetStatus(away=not user.status.away))
            return done("You are back" if user.status.away else "You are away")
        if command == "/dnd":
            if text in ("off", "0"):
                await c.presence_set_status(actor, s.SetStatus(dnd_until=0))
                return done("Do Not Disturb is off")
            seconds = _duration(text or "60m")
            if seconds is None or seconds > 30 * 86400:
                raise bad_request("/dnd 30m | 2h | off")
            await c.presence_set_status(actor, s.SetStatus(dnd_until=int(time.time() + seconds)))
            return done(f"Do Not Disturb for {text or '60m'}")
        if command == "/status":
            if text in ("clear", ""):
                await c.presence_set_status(actor, s.SetStatus(text="", emoji="", until=0))
                return done("Status cleared")
            words, until = text, None
            m = re.search(r"\s+until\s+(\S+)$", text)
            if m is not None:
                seconds = _duration(m.group(1))
                if seconds is None:
                    raise bad_request("/status text [until 2h]")
                words, until = text[: m.start()], int(time.time() + seconds)
            await c.presence_set_status(actor, s.SetStatus(text=words[:100], until=until))
            return done(f"Status set: {words}")
        # /huddle [topic] | end | leave
        from gateway.integrations.rooms import HuddleSpec

        if text in ("end", "leave"):
            from storage.incidents import RoomQueries

            async with c.db.read() as q:
                live = await RoomQueries(q.c).live_huddle(cid)
            if live is None:
                return done("There is no huddle in this channel.")
            if text == "end":
                view = await self.rooms.end_huddle(actor, live["id"])
                return done(f"Huddle ended after {view['duration']:.0f} s")
            await self.rooms.leave_huddle(actor, live["id"])
            return done("You left the huddle")
        view, created = await self.rooms.start_huddle(actor, cid, HuddleSpec(topic=text[:200]))
        return done(("Huddle started: " if created else "You joined the huddle: ") + view["url"])

    # ---- interactive messages ------------------------------------------------------------

    async def actions_invoke(self, actor: Actor, message_id: int, action_id: str,
                             block_id: str | None, value: str | None, host: str | None = None) -> dict[str, Any]:
        """A click on a button (or a choice in a static select) of an app's message,
        delivered to the app's interactivity URL as Slack's ``block_actions``."""
        if not isinstance(message_id, int) or not 1 <= message_id <= 2**62:
            raise bad_request("message_id: a message id")
        if not isinstance(action_id, str) or not 1 <= len(action_id) <= 255:
            raise bad_request("action_id is required")
        if block_id is not None and (not isinstance(block_id, str) or len(block_id) > 255):
            raise bad_request("block_id: a string")
        if value is not None and (not isinstance(value, str) or len(value) > 2000):
            raise bad_request("value: a string")
        async with self.chat.db.read() as q:
            # The clicker must be able to read the channel ("not found" otherwise).
            row, ch, role = await self.chat._message(q, actor, message_id)
            app = await AppQueries(q.c).app(row["app_id"]) if row.get("app_id") else None
        if row["deleted"] or app is None or not row["blocks"]:
            raise not_found("action")
        blocks = orjson.loads(row["blocks"])
        element = slack.find_action(blocks, action_id, block_id)
        if element is None:
            raise not_found("action")
        if not app["enabled"]:
            raise ChatError("app_disabled", "the app is disabled", 409)
        if app["click_policy"] == "admins" and not rbac.is_workspace_admin(actor.role):
            raise forbidden("only workspace admins may use this app's buttons")
        if ch["archived"]:
            raise conflict("archived", "the channel is archived")
        action: dict[str, Any] = {"action_id": action_id, "block_id": element["block_id"],
                                  "type": element["type"], "action_ts": f"{time.time():.6f}"}
        if element["type"] == "button":
            # The value is the message's, never the clicker's: a client cannot forge it.
            action["text"] = element["text"]
            if "value" in element:
                action["value"] = element["value"]
        else:
            chosen = next((o for o in element["options"] if o["value"] == value), None)
            if chosen is None:
                raise bad_request("value: one of the select's options")
            action["selected_option"] = chosen
        async with self.chat.db.write() as q:
            await q.audit(actor=actor.id, action="app.action", target=f"message:{message_id}",
                          after={"app_id": app["id"], "action_id": action_id,
                                 "block_id": element["block_id"],
                                 "value": action.get("value") or value})
        if not app["interactivity_url"]:
            raise ChatError("app_unavailable", "the app takes no clicks (no interactivity URL)", 503)
        response_url = await self.new_response_url(app["id"], ch["id"], actor.id, message_id, host)
        payload = {
            "type": "block_actions", "token": "", "api_app_id": app["id"],
            "user": {"id": actor.id, "username": actor.id, "name": actor.id, "team_id": TEAM_ID},
            "team": {"id": TEAM_ID, "domain": "sentchat"}, "enterprise": None,
            "is_enterprise_install": False,
            "container": {"type": "message", "message_ts": slack.ts_of(message_id),
                          "channel_id": ch["id"], "is_ephemeral": False},
            "trigger_id": f"{int(time.time())}.{secrets.token_hex(8)}",
            "channel": {"id": ch["id"], "name": ch["name"] or ch["id"]},
            "message": self.slack_message(row), "state": {"values": {}},
            "response_url": response_url, "actions": [action]}
        from urllib.parse import urlencode

        body = urlencode({"payload": orjson.dumps(payload).decode()}).encode()
        try:
            status, answer = await self.call_app(app["id"], app["interactivity_url"], body,
                                                 "application/x-www-form-urlencoded",
                                                 self.settings.command_timeout)
        except TimeoutError:
            await self.ephemeral(actor.id, ch["id"], app["id"], f"{app['name']} did not answer in time.")
            return {"ok": False, "error": "timeout"}
        except Exception as exc:
            log.info("click on %s: app %s unreachable: %r", message_id, app["id"], exc)
            await self.ephemeral(actor.id, ch["id"], app["id"], f"{app['name']} is not reachable right now.")
            return {"ok": False, "error": "unreachable"}
        if status != 200:
            return {"ok": False, "error": f"app_status_{status}"}
        return {"ok": True}

    # ---- Slack shapes ----------------------------------------------------------------------

    def slack_message(self, r: Row | s.Message) -> dict[str, Any]:
        """A message as Slack's Web API and events show it."""
        m = r if isinstance(r, s.Message) else self.chat._to_message(r)
        out: dict[str, Any] = {"type": "message", "ts": slack.ts_of(m.id), "user": m.author_id,
                               "text": slack_text(m.text), "team": TEAM_ID}
        if m.blocks:
            out["blocks"] = m.blocks
        if m.app_id:
            out["app_id"] = m.app_id
            out["bot_id"] = "B" + m.app_id[1:]
        if m.bot_profile:
            out["username"] = m.bot_profile.get("username")
            if m.bot_profile.get("icon_emoji") or m.bot_profile.get("icon_url"):
                out["icons"] = {k: v for k, v in m.bot_profile.items() if k != "username"}
        if m.thread_parent:
            out["thread_ts"] = slack.ts_of(m.thread_parent)
        elif m.reply_count:
            out.update(thread_ts=out["ts"], reply_count=m.reply_count, reply_users=m.reply_users)
        if m.edited_at:
            out["edited"] = {"user": m.author_id, "ts": f"{m.edited_at:.6f}"}
        if m.reactions:
            out["reactions"] = [{"name": e, "users": u, "count": len(u)} for e, u in m.reactions.items()]
        return out

    # ---- the outbox ------------------------------------------------------------------------

    async def on_chat_event(self, q: ChatQueries, kind: str, channel_id: str, facts: dict[str, Any]) -> None:
        """Inside a chat write's transaction: queue the Slack event for every app that
        subscribed to it (one INSERT ... SELECT; nothing leaves the process here)."""
        a = AppQueries(q.c)
        channel_type = "im" if channel_id.startswith("d") else "channel"
        written = 0
        if kind == "message":
            row = facts["row"]
            event: dict[str, Any] = {
                "type": "message", "channel": channel_id, "user": row["author_id"],
                "text": slack_text(row["text"]), "ts": slack.ts_of(row["id"]),
                "event_ts": slack.ts_of(row["id"]), "channel_type": channel_type,
                "client_msg_id": row["client_msg_id"]}
            if row["thread_parent"] is not None:
                event["thread_ts"] = slack.ts_of(row["thread_parent"])
            if row.get("app_id"):
                event["bot_id"] = "B" + row["app_id"][1:]
                event["app_id"] = row["app_id"]
            # An app does not hear its own messages (no loops with a bot answering itself).
            written += await a.enqueue(channel_id=channel_id, event_type="message",
                                       event=orjson.dumps(event).decode(), exclude_user=row["author_id"])
            mentioned = sorted(u for u in facts.get("mentions", ()) if u.startswith("bot."))
            if mentioned:
                bots = await q.c.fetch(
                    "SELECT id FROM integ_apps WHERE bot_user_id = ANY($1::text[])", mentioned)
                if bots:
                    mention = {k: v for k, v in event.items() if k not in ("channel_type", "client_msg_id")}
                    mention["type"] = "app_mention"
                    written += await a.enqueue(channel_id=channel_id, event_type="app_mention",
                                               event=orjson.dumps(mention).decode(),
                                               member_apps_only=False, app_ids=[b["id"] for b in bots])
        elif kind == "reaction_added":
            msg = facts["message"]
            event = {"type": "reaction_added", "user": facts["user_id"], "reaction": facts["emoji"],
                     "item_user": msg["author_id"],
                     "item": {"type": "message", "channel": channel_id, "ts": slack.ts_of(msg["id"])},
                     "event_ts": f"{facts['at'].timestamp():.6f}"}
            written += await a.enqueue(channel_id=channel_id, event_type="reaction_added",
                                       event=orjson.dumps(event).decode(), exclude_user=facts["user_id"])
        elif kind == "member_joined_channel":
            event = {"type": "member_joined_channel", "user": facts["user_id"], "channel": channel_id,
                     "channel_type": "G" if channel_type == "im" else "C", "team": TEAM_ID,
                     "inviter": facts["by"] if facts["by"] != facts["user_id"] else None,
                     "event_ts": f"{facts['at'].timestamp():.6f}"}
            written += await a.enqueue(channel_id=channel_id, event_type="member_joined_channel",
                                       event=orjson.dumps(event).decode())
        if written and self.outbox is not None:
            # Woken just after the commit this call is part of (a scan before it would
            # not see the rows yet; the periodic scan catches anything missed).
            asyncio.get_running_loop().call_later(0.02, self.outbox.wake)


def _payload(body: bytes, content_type: str) -> dict[str, Any] | None:
    """A JSON object from a JSON body or a form's ``payload`` field; None when neither."""
    raw: bytes | str = body
    if "application/x-www-form-urlencoded" in content_type:
        from urllib.parse import parse_qs

        fields = parse_qs(body.decode("utf-8", "replace"))
        if "payload" not in fields:
            return None
        raw = fields["payload"][0]
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
