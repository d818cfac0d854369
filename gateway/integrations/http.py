"""HTTP for integrations: the ``/v1/`` routes of apps, commands and clicks, incoming
webhooks and response URLs (``/hooks/``), and the Slack Web API subset (``/slack/api/``).

Authentication is the chat's (gateway/chat/binding.py): a user's JWT or an app's bot token
as ``Authorization: Bearer``; admin routes take the API key or a workspace admin's JWT.
Every input is validated and refused with a 4xx naming what is wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgspec
import orjson

from gateway.chat import rbac
from gateway.chat import schema as s
from gateway.chat.errors import ChatError, bad_request, forbidden
from gateway.chat.service import Actor
from gateway.integrations import slack
from gateway.integrations.service import TEAM_ID, TOKEN_PREFIX, AppSpec, IntegrationService, slack_text

if TYPE_CHECKING:
    from gateway.chat.binding import ChatHttp
    from gateway.http import Answer, RequestHead
    from gateway.integrations.rooms import Caller

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

V1_ROUTES = re.compile(
    r"^/v1/(apps(/.*)?|commands|channels/[^/]+/commands|messages/[^/]+/actions|admin/outbox"
    r"|incidents(/[^/]+(/resolve)?)?|channels/[^/]+/huddles|huddles/[^/]+(/(join|leave|end))?)$")


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request("the body must be JSON") from None
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value


def _error(exc: ChatError) -> Answer:
    return exc.status, orjson.dumps({"error": {"code": exc.code, "message": exc.message}}), JSON


class IntegrationHttp:
    """All integration routes; ``chat_http`` authenticates people and bots."""

    def __init__(self, service: IntegrationService, chat_http: ChatHttp) -> None:
        self.service = service
        self.chat_http = chat_http
        self.settings = service.settings

    # ---- authentication ------------------------------------------------------------------

    async def _admin(self, headers: Mapping[str, str]) -> Actor:
        if self.service.engine.carries_api_key(headers):
            return Actor("app", "owner")
        actor = await self._person(headers)
        if not rbac.is_workspace_admin(actor.role):
            raise forbidden("only workspace admins manage apps")
        return actor

    async def _person(self, headers: Mapping[str, str]) -> Actor:
        auth = headers.get("authorization", "")
        if auth.partition(" ")[2].strip().startswith(TOKEN_PREFIX):
            raise forbidden("a bot token cannot do this")
        return await self.chat_http._bearer(headers)

    # ---- /v1/ -------------------------------------------------------------------------------

    @staticmethod
    def owns(path: str) -> bool:
        return V1_ROUTES.match(path) is not None

    async def handle_v1(self, head: RequestHead, body: bytes) -> Answer:
        try:
            return await self._v1(head, body)
        except ChatError as exc:
            return _error(exc)
        except msgspec.ValidationError as exc:
            return _error(bad_request(str(exc)))

    async def _v1(self, head: RequestHead, body: bytes) -> Answer:
        path, method, h = head.path, head.method, head.headers
        host = h.get("host")
        svc = self.service
        parts = path.strip("/").split("/")[1:]  # after "v1"

        def ok(value: Any, status: int = 200) -> Answer:
            return status, orjson.dumps(value), JSON

        def allow(*methods: str) -> None:
            if method not in methods:
                raise ChatError("method_not_allowed", f"use {' or '.join(methods)}", 405)

        if path == "/v1/commands":
            allow("GET")
            return ok(await svc.commands_list(await self.chat_http._bearer(h)))
        if parts[0] == "channels" and parts[2] == "commands":
            allow("POST")
            actor = await self._person(h)
            data = _json_body(body)
            unknown = set(data) - {"command", "text", "channel_id"}
            if unknown:
                raise bad_request(f"unknown field(s): {', '.join(sorted(unknown))}")
            return ok(await svc.commands_run(actor, parts[1], data.get("command", ""),
                                             data.get("text", ""), host))
        if parts[0] == "messages" and parts[2] == "actions":
            allow("POST")
            actor = await self._person(h)
            data = _json_body(body)
            unknown = set(data) - {"action_id", "block_id", "value"}
            if unknown:
                raise bad_request(f"unknown field(s): {', '.join(sorted(unknown))}")
            if not parts[1].isdigit():
                raise bad_request("message_id: a message id")
            return ok(await svc.actions_invoke(actor, int(parts[1]), data.get("action_id", ""),
                                               data.get("block_id"), data.get("value"), host))
        if parts[0] == "incidents":
            return await self._incidents(head, body, parts, ok, allow)
        if parts[0] == "huddles" or (parts[0] == "channels" and parts[2] == "huddles"):
            return await self._huddles(head, body, parts, ok, allow)
        if path == "/v1/admin/outbox":
            allow("GET")
            await self._admin(h)
            return ok(await svc.outbox_list(head.query.get("app_id"), head.query.get("state", "dead"),
                                            _limit(head.query)))
        # /v1/apps...
        admin = await self._admin(h)
        if len(parts) == 1:
            if method == "GET":
                return ok(await svc.list_apps())
            allow("GET", "POST")
            spec = msgspec.convert(_json_body(body), AppSpec)
            return ok(await svc.create_app(admin, spec), 201)
        app_id = parts[1]
        if not re.fullmatch(r"A[0-9A-F]{10}", app_id):
            raise ChatError("not_found", "app not found", 404)
        if len(parts) == 2:
            if method == "GET":
                return ok(await svc.get_app(app_id))
            allow("GET", "PATCH")
            spec = msgspec.convert(_json_body(body), AppSpec)
            if spec.name is not None:
                raise bad_request("name cannot change")
            return ok(await svc.update_app(admin, app_id, spec))
        sub = parts[2]
        if sub == "token" and len(parts) == 3:
            allow("POST")
            return ok(await svc.rotate_token(admin, app_id))
        if sub == "hooks" and len(parts) == 3:
            if method == "GET":
                return ok({"hooks": (await svc.get_app(app_id))["hooks"]})
            allow("GET", "POST")
            data = _json_body(body)
            if set(data) - {"channel_id"}:
                raise bad_request("only channel_id")
            return ok(await svc.create_hook(admin, app_id, data.get("channel_id", ""), host), 201)
        if sub == "hooks" and len(parts) == 4:
            allow("DELETE")
            return ok(await svc.delete_hook(admin, app_id, parts[3]))
        if sub == "outbox" and len(parts) == 3:
            allow("GET")
            return ok(await svc.outbox_list(app_id, head.query.get("state", "dead"), _limit(head.query)))
        if sub == "outbox" and len(parts) == 4 and parts[3] == "retry":
            allow("POST")
            return ok(await svc.outbox_retry(admin, app_id))
        raise ChatError("not_found", f"no route {path}", 404)

    async def _incident_caller(self, headers: Mapping[str, str]) -> Caller:
        """An app's bot token, the API key, or a workspace admin's JWT (else 401/403)."""
        from gateway.integrations.rooms import Caller

        if self.service.engine.carries_api_key(headers):
            return Caller(Actor("app", "owner"), api_key=True)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token.startswith(TOKEN_PREFIX):
            app = await self.service.app_for_token(token)
            if app["channels"]:
                # A bot restricted to channels opens none (as for channels.create).
                raise forbidden("an app restricted to channels cannot open incident channels")
            return Caller(self.service.bot_actor(app), app_id=app["id"])
        actor = await self.chat_http._bearer(headers)
        return Caller(actor)

    async def _incidents(self, head: RequestHead, body: bytes, parts: list[str],
                         ok: Callable[..., Answer], allow: Callable[..., None]) -> Answer:
        from gateway.integrations.rooms import IncidentSpec, ResolveSpec

        rooms = self.service.rooms
        caller = await self._incident_caller(head.headers)
        if len(parts) == 1:
            allow("POST")
            if caller.app_id is None and not caller.api_key and not rbac.is_workspace_admin(caller.actor.role):
                raise forbidden("incidents are opened by apps (bot token) or workspace admins")
            spec = msgspec.convert(_json_body(body), IncidentSpec)
            return ok(await rooms.create_incident(caller, spec), 201)
        if len(parts) == 2:
            allow("GET")
            return ok(await rooms.get_incident(caller, parts[1]))
        allow("POST")
        return ok(await rooms.resolve_incident(caller, parts[1], msgspec.convert(_json_body(body), ResolveSpec)))

    async def _huddles(self, head: RequestHead, body: bytes, parts: list[str],
                       ok: Callable[..., Answer], allow: Callable[..., None]) -> Answer:
        from gateway.integrations.rooms import HuddleSpec

        rooms = self.service.rooms
        # Huddles are people's: a bot token is refused.
        actor = await self._person(head.headers)
        if parts[0] == "channels":
            allow("POST")
            spec = msgspec.convert(_json_body(body), HuddleSpec)
            view, created = await rooms.start_huddle(actor, parts[1], spec)
            return ok({"huddle": view, "created": created}, 201 if created else 200)
        if len(parts) == 2:
            allow("GET")
            return ok({"huddle": await rooms.get_huddle(actor, parts[1])})
        allow("POST")
        if body and _json_body(body):
            raise bad_request("no fields expected")
        op = {"join": rooms.join_huddle, "leave": rooms.leave_huddle, "end": rooms.end_huddle}[parts[2]]
        return ok({"huddle": await op(actor, parts[1])})

    # ---- /hooks/ --------------------------------------------------------------------------

    async def handle_hooks(self, head: RequestHead, body: bytes) -> Answer:
        rest = head.path[len(self.settings.hooks_prefix):]
        if head.method != "POST":
            return 405, b"method_not_allowed", TEXT, {"Allow": "POST"}
        if _body_has_nul(body):
            return 400, b"invalid_payload", TEXT
        ctype = head.headers.get("content-type", "application/json")
        parts = rest.split("/")
        if len(parts) == 2 and parts[0] == "r" and parts[1]:
            status, text, extra = await self.service.respond(parts[1], body, ctype)
        elif len(parts) == 1 and (m := _HOOK_ID.fullmatch(parts[0])) is not None:
            status, text, extra = await self.service.hook_post(m["hook"], m["token"], body, ctype)
        else:
            return 404, b"no_service", TEXT
        return (status, text, TEXT, extra) if extra else (status, text, TEXT)

    # ---- the Slack Web API subset -------------------------------------------------------

    async def handle_slack(self, head: RequestHead, body: bytes) -> Answer:
        method = head.path[len(self.settings.slack_api_prefix):]
        handler = SLACK_METHODS.get(method)
        if handler is None:
            return _slack({"ok": False, "error": "unknown_method"}, 404)
        if head.method not in ("GET", "POST"):
            return _slack({"ok": False, "error": "method_not_supported_for_channel_type"}, 405)
        args: dict[str, Any] = dict(head.query)
        ctype = head.headers.get("content-type", "")
        if body:
            if "application/json" in ctype:
                try:
                    data = orjson.loads(body)
                except orjson.JSONDecodeError:
                    return _slack({"ok": False, "error": "invalid_json"}, 400)
                if not isinstance(data, dict):
                    return _slack({"ok": False, "error": "invalid_json"}, 400)
                args.update(data)
            else:
                args.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if _has_nul(args):
            # PostgreSQL text cannot hold NUL: refused here, never a 500 deep in a write.
            return _slack({"ok": False, "error": "invalid_arguments",
                           "detail": "NUL character not allowed"}, 400)
        token = head.headers.get("authorization", "").partition(" ")[2].strip() or str(args.pop("token", ""))
        args.pop("token", None)
        if not token:
            return _slack({"ok": False, "error": "not_authed"})
        try:
            app = await self.service.app_for_token(token)
        except ChatError as exc:
            return _slack({"ok": False, "error": "account_inactive" if "disabled" in exc.message
                           else "invalid_auth"})
        call = SlackCall(self, app, args, head.headers.get("host"))
        try:
            result = await handler(call)
        except SlackError as exc:
            return _slack({"ok": False, "error": exc.error, **exc.extra})
        except ChatError as exc:
            return _slack({"ok": False, "error": _slack_error(method, exc)})
        return _slack({"ok": True, **result})


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise bad_request("limit: 1-1000")
    return int(raw)


def _slack(value: dict[str, Any], status: int = 200) -> Answer:
    return status, orjson.dumps(value), JSON


class SlackError(Exception):
    """A Slack error string (``{"ok": false, "error": ...}``)."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


def _slack_error(method: str, exc: ChatError) -> str:
    """The Slack error string of a chat refusal."""
    if exc.code == "not_found":
        return "message_not_found" if "message" in exc.message else (
            "channel_not_found" if "channel" in exc.message else "not_found")
    if exc.code == "user_not_found":
        return "user_not_found"
    if exc.code == "name_taken":
        return "name_taken"
    if exc.code in ("archived",):
        return "is_archived"
    if exc.code == "forbidden":
        if method == "chat.update":
            return "cant_update_message"
        if method == "chat.delete":
            return "cant_delete_message"
        if method.startswith(("chat.", "reactions.", "pins.")):
            return "not_in_channel"
        return "restricted_action"
    if exc.code == "unauthorized":
        return "invalid_auth"
    return "invalid_arguments"


class SlackCall:
    """One Web API call: the app, its bot, the arguments."""

    def __init__(self, http: IntegrationHttp, app: Any, args: dict[str, Any], host: str | None) -> None:
        self.http = http
        self.service = http.service
        self.chat = http.service.chat
        self.app = app
        self.bot = http.service.bot_actor(app)
        self.args = args
        self.host = host

    def arg(self, name: str, *, required: bool = True) -> str:
        value = self.args.get(name)
        if value is None or value == "":
            if required:
                raise SlackError("invalid_arguments", response_metadata={"messages": [f"missing {name}"]})
            return ""
        if not isinstance(value, str | int | float):
            raise SlackError("invalid_arguments", response_metadata={"messages": [f"{name}: a string"]})
        return str(value)

    def channel(self) -> str:
        value = self.arg("channel")
        if not re.fullmatch(r"[a-z0-9_]{1,64}", value):
            raise SlackError("channel_not_found")
        return value

    def ts(self, name: str = "ts") -> int:
        mid = slack.message_id_of(self.arg(name))
        if mid is None:
            raise SlackError("message_not_found")
        return mid

    def blocks(self) -> list[dict[str, Any]] | None:
        raw = self.args.get("blocks")
        if raw is None or raw == "":
            return None
        if isinstance(raw, str):
            try:
                raw = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise SlackError("invalid_blocks_format") from None
        try:
            return slack.validate_blocks(raw)
        except slack.BlockError as exc:
            raise SlackError("invalid_blocks", response_metadata={"messages": [str(exc)]}) from None

    async def authorize(self, op: str, params: Any) -> None:
        await self.service.authorize_bot(self.app, op, params)

    def limit(self, default: int, top: int) -> int:
        raw = self.args.get("limit", default)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SlackError("invalid_limit") from None
        return max(1, min(value or default, top))

    def to_channel(self, c: s.Channel) -> dict[str, Any]:
        return {"id": c.id, "name": c.name or c.id, "is_channel": c.kind == "public",
                "is_group": c.kind == "private", "is_im": c.kind == "dm", "is_mpim": c.kind == "group_dm",
                "is_private": c.kind != "public", "is_archived": c.archived, "created": int(c.created_at),
                "creator": c.created_by, "is_member": c.member,
                "topic": {"value": c.topic, "creator": "", "last_set": 0},
                "purpose": {"value": "", "creator": "", "last_set": 0}}


SlackMethod = Callable[[SlackCall], Awaitable[dict[str, Any]]]


async def auth_test(c: SlackCall) -> dict[str, Any]:
    return {"url": c.service.base_url(c.host) + "/", "team": "SENTchat", "user": c.app["name"],
            "team_id": TEAM_ID, "user_id": c.bot.id, "bot_id": "B" + c.app["id"][1:],
            "app_id": c.app["id"], "is_enterprise_install": False}


async def chat_post_message(c: SlackCall) -> dict[str, Any]:
    channel = c.channel()
    text = c.arg("text", required=False)
    blocks = c.blocks()
    if not text and not blocks:
        raise SlackError("no_text")
    thread = c.ts("thread_ts") if c.args.get("thread_ts") else None
    await c.authorize("messages.send", s.MessagesSend(channel_id=channel, text=text or " "))
    profile = {k: c.arg(k)[:200] for k in ("username", "icon_emoji", "icon_url") if c.args.get(k)}
    result = await c.service.post(c.app["id"], c.bot.id, channel, text=slack.mrkdwn_to_text(text),
                                  blocks=blocks, profile=profile or None, thread_parent=thread)
    return {"channel": channel, "ts": slack.ts_of(result.message.id),
            "message": c.service.slack_message(result.message)}


async def chat_update(c: SlackCall) -> dict[str, Any]:
    channel, mid = c.channel(), c.ts()
    text = c.arg("text", required=False)
    blocks = c.blocks()
    if not text and not blocks:
        raise SlackError("no_text")
    await c.authorize("messages.edit", s.MessageRef(message_id=mid))
    async with c.chat.db.read() as q:
        row = await q.message(mid)
    if row is None or row["channel_id"] != channel:
        raise SlackError("message_not_found")
    result = await c.chat.messages_edit(
        c.bot, s.MessagesEdit(message_id=mid, text=slack.mrkdwn_to_text(text) or slack.blocks_text(blocks or []) or " "),
        blocks=orjson.dumps(blocks).decode() if blocks else None, set_blocks="blocks" in c.args)
    return {"channel": channel, "ts": slack.ts_of(mid), "text": slack_text(result.message.text),
            "message": c.service.slack_message(result.message)}


async def chat_delete(c: SlackCall) -> dict[str, Any]:
    channel, mid = c.channel(), c.ts()
    await c.authorize("messages.delete", s.MessageRef(message_id=mid))
    async with c.chat.db.read() as q:
        row = await q.message(mid)
    if row is None or row["channel_id"] != channel:
        raise SlackError("message_not_found")
    await c.chat.messages_delete(c.bot, s.MessageRef(message_id=mid))
    return {"channel": channel, "ts": slack.ts_of(mid)}


async def chat_post_ephemeral(c: SlackCall) -> dict[str, Any]:
    channel, user = c.channel(), c.arg("user")
    text = c.arg("text", required=False)
    blocks = c.blocks()
    if not text and not blocks:
        raise SlackError("no_text")
    await c.authorize("messages.send", s.MessagesSend(channel_id=channel, text=text or " "))
    async with c.chat.db.read() as q:
        ch, role = await c.chat._visible(q, c.bot, channel)
        if not rbac.can_post(role, ch["archived"]):
            raise SlackError("not_in_channel")
        if await q.member_role(channel, user) is None:
            raise SlackError("user_not_in_channel")
    await c.service.ephemeral(user, channel, c.app["id"], slack.mrkdwn_to_text(text), blocks)
    return {"message_ts": f"{time.time():.6f}"}


async def conversations_create(c: SlackCall) -> dict[str, Any]:
    name = c.arg("name")
    private = str(c.args.get("is_private", "false")).lower() in ("true", "1")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,79}", name):
        raise SlackError("invalid_name_specials")
    params = s.ChannelsCreate(name=name, private=private)
    await c.authorize("channels.create", params)
    result = await c.chat.channels_create(c.bot, params)
    return {"channel": c.to_channel(result.channel)}


async def conversations_invite(c: SlackCall) -> dict[str, Any]:
    channel = c.channel()
    users = [u.strip() for u in c.arg("users").split(",") if u.strip()]
    if not users or len(users) > 100:
        raise SlackError("no_user")
    try:
        params = s.ChannelsInvite(channel_id=channel, user_ids=users)
    except msgspec.ValidationError:
        raise SlackError("user_not_found") from None
    await c.authorize("channels.invite", params)
    result = await c.chat.channels_invite(c.bot, params)
    return {"channel": c.to_channel(result.channel)}


async def conversations_info(c: SlackCall) -> dict[str, Any]:
    channel = c.channel()
    await c.authorize("channels.list", s.ChannelRef(channel_id=channel))
    async with c.chat.db.read() as q:
        row, role = await c.chat._visible(q, c.bot, channel)
    return {"channel": c.to_channel(c.chat._to_channel(row, role))}


async def conversations_history(c: SlackCall) -> dict[str, Any]:
    channel = c.channel()
    limit = c.limit(100, 200)
    before = slack.message_id_of(str(c.args["latest"])) if c.args.get("latest") else None
    after = slack.message_id_of(str(c.args["oldest"])) if c.args.get("oldest") else None
    cursor = str(c.args.get("cursor") or "")
    if cursor:
        if not cursor.isdigit():
            raise SlackError("invalid_cursor")
        before = int(cursor)
    params = s.MessagesList(channel_id=channel, before=before, limit=limit)
    await c.authorize("messages.list", params)
    page = await c.chat.messages_list(c.bot, params)
    messages = [m for m in page.messages if not m.deleted and (after is None or m.id > after)]
    out: dict[str, Any] = {"messages": [c.service.slack_message(m) for m in reversed(messages)],
                           "has_more": page.has_more, "pin_count": 0}
    if page.has_more and page.messages:
        out["response_metadata"] = {"next_cursor": str(page.messages[0].id)}
    return out


async def conversations_list(c: SlackCall) -> dict[str, Any]:
    types = {t.strip() for t in str(c.args.get("types") or "public_channel").split(",")}
    exclude = str(c.args.get("exclude_archived", "false")).lower() in ("true", "1")
    await c.authorize("channels.list", s.ChannelsList())
    result = await c.chat.channels_list(c.bot, s.ChannelsList(include_archived=not exclude))
    kinds = {"public_channel": "public", "private_channel": "private", "im": "dm", "mpim": "group_dm"}
    wanted = {kinds[t] for t in types if t in kinds}
    channels = [c.to_channel(ch) for ch in result.channels if ch.kind in wanted]
    if c.app["channels"]:
        channels = [ch for ch in channels if ch["id"] in c.app["channels"]]
    return {"channels": channels[: c.limit(100, 1000)], "response_metadata": {"next_cursor": ""}}


async def conversations_archive(c: SlackCall) -> dict[str, Any]:
    channel = c.channel()
    params = s.ChannelRef(channel_id=channel)
    await c.authorize("channels.archive", params)
    async with c.chat.db.read() as q:
        row = await q.channel(channel)
    if row is not None and row["archived"]:
        raise SlackError("already_archived")
    await c.chat.channels_archive(c.bot, params)
    return {}


async def users_info(c: SlackCall) -> dict[str, Any]:
    user_id = c.arg("user")
    try:
        params = s.UserRef(user_id=user_id)
    except msgspec.ValidationError:
        raise SlackError("user_not_found") from None
    await c.authorize("users.get", params)
    u = (await c.chat.users_get(c.bot, params)).user
    is_bot = u.id.startswith("bot.")
    return {"user": {"id": u.id, "team_id": TEAM_ID, "name": u.id, "real_name": u.display_name,
                     "deleted": False, "is_bot": is_bot, "is_app_user": False,
                     "is_admin": u.role in ("owner", "admin"), "is_owner": u.role == "owner",
                     "is_restricted": u.role == "guest",
                     "profile": {"real_name": u.display_name, "display_name": u.display_name,
                                 "title": u.title, "status_text": u.status.text,
                                 "status_emoji": u.status.emoji, **({"email": u.email} if u.email else {})}}}


async def reactions_add(c: SlackCall) -> dict[str, Any]:
    channel, mid = c.channel(), c.ts("timestamp")
    name = c.arg("name").strip(":")
    if not re.fullmatch(r"[^\s]{1,64}", name):
        raise SlackError("invalid_name")
    await c.authorize("reactions.add", s.Reaction(message_id=mid, emoji=name))
    async with c.chat.db.read() as q:
        row = await q.message(mid)
        exists = await q.c.fetchval(
            "SELECT true FROM chat_reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3",
            mid, c.bot.id, name)
    if row is None or row["channel_id"] != channel:
        raise SlackError("message_not_found")
    if exists:
        raise SlackError("already_reacted")
    await c.chat.reactions_add(c.bot, s.Reaction(message_id=mid, emoji=name))
    return {}


async def pins_add(c: SlackCall) -> dict[str, Any]:
    channel, mid = c.channel(), c.ts("timestamp")
    await c.authorize("pins.add", s.PinRef(message_id=mid))
    async with c.chat.db.read() as q:
        row = await q.message(mid)
        pinned = await q.c.fetchval("SELECT true FROM chat_pins WHERE message_id = $1", mid)
    if row is None or row["channel_id"] != channel:
        raise SlackError("message_not_found")
    if pinned:
        raise SlackError("already_pinned")
    await c.chat.pins_add(c.bot, s.PinRef(message_id=mid))
    return {}


SLACK_METHODS: dict[str, SlackMethod] = {
    "auth.test": auth_test,
    "chat.postMessage": chat_post_message,
    "chat.update": chat_update,
    "chat.delete": chat_delete,
    "chat.postEphemeral": chat_post_ephemeral,
    "conversations.create": conversations_create,
    "conversations.invite": conversations_invite,
    "conversations.info": conversations_info,
    "conversations.history": conversations_history,
    "conversations.list": conversations_list,
    "conversations.archive": conversations_archive,
    "users.info": users_info,
    "reactions.add": reactions_add,
    "pins.add": pins_add,
}
"""The implemented Slack Web API methods (docs/integrations.md lists the rest as absent)."""

__all__ = ["SLACK_METHODS", "IntegrationHttp"]


# `/hooks/<id>`: the hook's public id, a dot, its secret token (URL-safe base64).
_HOOK_ID = re.compile(r"(?P<hook>H[0-9A-F]{12})\.(?P<token>[A-Za-z0-9_-]{16,64})")


def _has_nul(value: Any) -> bool:
    """Whether a decoded JSON / form value holds a NUL character anywhere."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _body_has_nul(body: bytes) -> bool:
    """A webhook body (JSON, or a form whose ``payload`` is JSON) holding NUL. The cheap
    byte test comes first: JSON carries NUL only as the escape (``\\u0000``, inside a form
    ``%5Cu0000``), a form field as ``%00``."""
    if b"u0000" not in body and b"%00" not in body and b"\x00" not in body:
        return False
    try:
        return _has_nul(orjson.loads(body))
    except orjson.JSONDecodeError:
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if _has_nul(form):
            return True
        try:
            return _has_nul(orjson.loads(form.get("payload", "null")))
        except orjson.JSONDecodeError:
            return False
