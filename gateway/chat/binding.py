"""The chat service exposed twice from one table of operations: as Centrifugo RPC methods
(``channels.list`` ...) over the WebSocket, and as a JSON HTTP API under ``/v1/`` with an
OpenAPI document at ``/v1/openapi.json``.

RPC errors carry the HTTP status as their code and ``"<stable code>: <message>"``; HTTP
errors are ``{"error": {"code": ..., "message": ...}}`` with that status.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec
import orjson

from centrifugo_bridge.codes import ClientError
from gateway.chat import directory
from gateway.chat import schema as s
from gateway.chat.errors import ChatError, bad_request, unauthorized
from gateway.chat.service import Actor, ChatService

if TYPE_CHECKING:
    from gateway.extension import Engine, RpcHandler
    from gateway.http import Answer, RequestHead

log = logging.getLogger(__name__)

JSON = "application/json"


class BotAuth(Protocol):
    """What the integrations provide for apps' bot tokens (gateway/integrations)."""

    async def app_for_token(self, token: str) -> Any: ...

    def bot_actor(self, app: Any) -> Actor: ...

    async def authorize_bot(self, app: Any, op: str, params: Any) -> None: ...


class Op(NamedTuple):
    """One operation: RPC method name, parameters, service method, HTTP route."""

    name: str
    params: type[s.Params]
    result: type[msgspec.Struct]
    http_method: str
    path: str
    summary: str
    status: int = 200
    rpc: bool = True          # also an RPC method (admin operations are HTTP + API key only)
    admin: bool = False       # HTTP: the API key instead of a user's bearer token


OPS: tuple[Op, ...] = (
    Op("channels.list", s.ChannelsList, s.ChannelsResult, "GET", "/v1/channels",
       "Channels the caller is in and public channels it may join"),
    Op("channels.create", s.ChannelsCreate, s.ChannelResult, "POST", "/v1/channels",
       "Create a public or private channel", 201),
    Op("channels.join", s.ChannelRef, s.ChannelResult, "POST", "/v1/channels/{channel_id}/join",
       "Join a public channel"),
    Op("channels.leave", s.ChannelRef, s.Ok, "POST", "/v1/channels/{channel_id}/leave", "Leave a channel"),
    Op("channels.invite", s.ChannelsInvite, s.ChannelResult, "POST", "/v1/channels/{channel_id}/invite",
       "Add members (channel admins)"),
    Op("channels.kick", s.ChannelsKick, s.Ok, "POST", "/v1/channels/{channel_id}/kick",
       "Remove a member (channel admins)"),
    Op("channels.archive", s.ChannelRef, s.ChannelResult, "POST", "/v1/channels/{channel_id}/archive",
       "Archive a channel (channel or workspace admins)"),
    Op("channels.set_topic", s.ChannelsSetTopic, s.ChannelResult, "PUT", "/v1/channels/{channel_id}/topic",
       "Set the topic"),
    Op("channels.mute", s.SetMuted, s.Ok, "PUT", "/v1/channels/{channel_id}/mute",
       "Mute or unmute a channel's notifications for the caller"),
    Op("dm.open", s.DmOpen, s.ChannelResult, "POST", "/v1/dms",
       "Open (or find) the direct message with these people"),
    Op("messages.send", s.MessagesSend, s.MessageResult, "POST", "/v1/channels/{channel_id}/messages",
       "Send a message (idempotent on client_msg_id); acknowledged once durable", 201),
    Op("messages.list", s.MessagesList, s.MessagePage, "GET", "/v1/channels/{channel_id}/messages",
       "A page of the channel timeline and the stream position to recover from"),
    Op("messages.edit", s.MessagesEdit, s.MessageResult, "PATCH", "/v1/messages/{message_id}",
       "Edit one's own message (every prior version is kept)"),
    Op("messages.delete", s.MessageRef, s.Ok, "DELETE", "/v1/messages/{message_id}",
       "Delete a message (author, channel admin, workspace admin)"),
    Op("messages.history", s.MessageRef, s.VersionsResult, "GET", "/v1/messages/{message_id}/versions",
       "Every version of a message (workspace admins)"),
    Op("threads.replies", s.ThreadsReplies, s.MessagePage, "GET", "/v1/messages/{message_id}/replies",
       "A thread: its first message and replies"),
    Op("threads.follow", s.ThreadsFollow, s.Ok, "PUT", "/v1/messages/{message_id}/follow",
       "Follow or unfollow a thread"),
    Op("reactions.add", s.Reaction, s.Ok, "PUT", "/v1/messages/{message_id}/reactions/{emoji}",
       "React to a message"),
    Op("reactions.remove", s.Reaction, s.Ok, "DELETE", "/v1/messages/{message_id}/reactions/{emoji}",
       "Remove one's reaction"),
    Op("pins.add", s.PinRef, s.Ok, "PUT", "/v1/messages/{message_id}/pin", "Pin a message"),
    Op("pins.remove", s.PinRef, s.Ok, "DELETE", "/v1/messages/{message_id}/pin", "Unpin a message"),
    Op("pins.list", s.ChannelRef, s.PinsResult, "GET", "/v1/channels/{channel_id}/pins",
       "Pinned messages of a channel"),
    Op("read.mark", s.ReadMark, s.Ok, "POST", "/v1/channels/{channel_id}/read",
       "Move the caller's read marker"),
    Op("unread.counts", s.NoParams, s.UnreadResult, "GET", "/v1/unread",
       "Unread and mention counts per channel"),
    Op("presence.set_status", s.SetStatus, s.UserResult, "PUT", "/v1/status",
       "Set away / Do Not Disturb / custom status (an app with the API key: anyone's)"),
    Op("users.get", s.UserRef, s.UserResult, "GET", "/v1/users/{user_id}", "A user's profile and status"),
    Op("search.messages", s.SearchMessages, s.SearchMessagesResult, "GET", "/v1/search/messages",
       "Search messages the caller may read (Slack's query language, docs/search.md)"),
    Op("search.channels", s.SearchNames, s.SearchChannelsResult, "GET", "/v1/search/channels",
       "Find channels the caller may see by name (prefix, substring, typos)"),
    Op("search.users", s.SearchNames, s.SearchUsersResult, "GET", "/v1/search/users",
       "Find people by id or display name (prefix, substring, typos)"),
    Op("admin.users.upsert", s.AdminUserUpsert, s.UserResult, "PUT", "/v1/admin/users/{user_id}",
       "Create or update a user's org-chart fields and workspace role (API key)", rpc=False, admin=True),
    *directory.ops(Op),  # me, one channel, members, user directory (the web client's needs)
)

# Operations another application may call with the API key on a user's behalf.
APP_OPS = frozenset({"presence.set_status"})


def _handler(service: ChatService, op: Op) -> Callable[[Actor, Any], Awaitable[msgspec.Struct]]:
    return getattr(service, op.name.replace(".", "_"))


def _decode(op: Op, data: bytes) -> s.Params:
    try:
        params = msgspec.json.decode(data or b"{}", type=op.params)
    except msgspec.ValidationError as exc:
        raise bad_request(str(exc)) from None
    except msgspec.DecodeError:
        raise bad_request("params must be a JSON object") from None
    # JSON can carry NUL only as the escape; the walk runs only when it may be there.
    if b"\\u0000" in data:
        _refuse_nul(params)
    return params


def _convert(op: Op, fields: dict[str, Any]) -> s.Params:
    _refuse_nul(fields)
    try:
        return msgspec.convert(fields, type=op.params, strict=False)
    except msgspec.ValidationError as exc:
        raise bad_request(str(exc)) from None


def _refuse_nul(value: Any, path: str = "$") -> None:
    """400 naming the first field holding a NUL character. PostgreSQL text cannot store
    one: let through, it fails deep in a write as a 500 (and as a *temporary* RPC error
    that SDKs retry forever)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise bad_request(f"Invalid value: NUL character not allowed - at `{path}`")
        return
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _refuse_nul(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key, f"{path} key")
            _refuse_nul(item, f"{path}.{key}")
    elif isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            _refuse_nul(item, f"{path}[{i}]")


def _profile(engine: Engine, client: str) -> dict[str, Any] | None:
    """Profile fields (name, email, title, manager) from the connection token's ``info``."""
    info = engine.connection_info(client)
    if not info:
        return None
    try:
        value = orjson.loads(info)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def rpc_methods(engine: Engine, service: ChatService) -> dict[str, RpcHandler]:
    """Every RPC-exposed operation as a Centrifugo RPC method, by name."""
    return {op.name: _rpc_method(engine, service, op) for op in OPS if op.rpc}


def _rpc_method(engine: Engine, service: ChatService, op: Op) -> RpcHandler:
    handler = _handler(service, op)

    async def call(user: str, client: str, data: bytes) -> bytes:
        try:
            params = _decode(op, data)
            actor = await service.actor(user, _profile(engine, client))
            result = await handler(actor, params)
        except ChatError as exc:
            raise ClientError(exc.status, f"{exc.code}: {exc.message}") from None
        return msgspec.json.encode(result)

    return call


class _Route(NamedTuple):
    op: Op
    pattern: re.Pattern[str]


def _compile(path: str) -> re.Pattern[str]:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return re.compile(f"^{regex}$")


class ChatHttp:
    """The ``/v1/`` HTTP API: routing, bearer-token / API-key auth, JSON in and out."""

    def __init__(self, engine: Engine, service: ChatService) -> None:
        self.engine = engine
        self.service = service
        self.routes = [_Route(op, _compile(op.path)) for op in OPS]
        self._openapi: bytes | None = None
        # Set when the integrations load: resolves and limits apps' bot tokens.
        self.bots: BotAuth | None = None
        from gateway.chat.accounts import AccountsHttp

        self.accounts = AccountsHttp(engine, service)

    async def handle(self, head: RequestHead, body: bytes) -> Answer:
        """Answer one request whose path starts with ``/v1/``."""
        if head.path.startswith(("/v1/auth/", "/v1/admin/accounts/")):  # local accounts (accounts.py)
            return await self.accounts.handle(head, body)
        if head.path == "/v1/openapi.json":
            if head.method not in ("GET", "HEAD"):
                return _error(ChatError("method_not_allowed", "use GET", 405), allow="GET, HEAD")
            if self._openapi is None:
                self._openapi = orjson.dumps(openapi(), option=orjson.OPT_SORT_KEYS)
            return 200, self._openapi, JSON
        allowed: list[str] = []
        for route in self.routes:
            m = route.pattern.match(head.path)
            if m is None:
                continue
            if route.op.http_method != head.method:
                allowed.append(route.op.http_method)
                continue
            try:
                return await self._call(route.op, m.groupdict(), head, body)
            except ChatError as exc:
                return _error(exc)
        if allowed:
            methods = sorted(set(allowed))
            return _error(ChatError("method_not_allowed", f"use {' or '.join(methods)}", 405),
                          allow=", ".join(methods))
        return _error(ChatError("not_found", f"no route {head.path}", 404))

    async def _call(self, op: Op, path_params: dict[str, str], head: RequestHead,
                    body: bytes) -> tuple[int, bytes, str]:
        from urllib.parse import unquote

        # Authenticate before reading the input: an anonymous or wrongly keyed caller gets
        # 401, never a 400 that describes what a valid request looks like.
        app = self._api_key_ok(head.headers)
        actor: Actor | None = None
        bot = self._bot_token(head.headers)
        bot_app: Any = None
        if bot is not None:
            # An app's bot token: its bot user, with the app's narrower rights.
            if self.bots is None or op.admin:
                raise unauthorized("bot tokens cannot call this operation")
            bot_app = await self.bots.app_for_token(bot)
            actor = self.bots.bot_actor(bot_app)
        elif op.admin:
            if not app:
                raise unauthorized("this operation needs the API key (X-API-Key)")
        elif not (app and op.name in APP_OPS):
            actor = await self._bearer(head.headers)
        fields: dict[str, Any] = {}
        if op.http_method == "GET" or op.http_method == "DELETE" and not body:
            fields.update(head.query)
        elif body:
            try:
                decoded = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise bad_request("the body must be JSON") from None
            if not isinstance(decoded, dict):
                raise bad_request("the body must be a JSON object")
            fields.update(decoded)
        for key, value in path_params.items():
            try:
                # Strict: an invalid escape (%FF) is refused, not turned into U+FFFD.
                text = unquote(value, errors="strict")
            except UnicodeDecodeError:
                raise bad_request(f"{key}: invalid percent-encoding in the path") from None
            if key in fields and str(fields[key]) != text:
                raise bad_request(f"{key} in the body does not match the URL")
            fields[key] = text
        params = _convert(op, fields)
        if bot_app is not None and self.bots is not None:
            await self.bots.authorize_bot(bot_app, op.name, params)
        if op.admin:
            result = await _handler(self.service, op)(Actor("app", "owner"), params)
        elif actor is None and getattr(params, "user_id", None):
            # An app with the API key acting on the user it names.
            app_actor = Actor("app", "owner")
            # params is the operation's declared params type; only presence.set_status names
            # a user_id an app may act for, which the binding table does not express in types.
            result = await self.service.presence_set_status(app_actor, params, app=True)  # type: ignore[arg-type]
        else:
            # An app op without a user to act on: the caller must be a user after all.
            actor = actor if actor is not None else await self._bearer(head.headers)
            result = await _handler(self.service, op)(actor, params)
        status = op.status
        if status == 201 and getattr(result, "created", True) is False:
            status = 200  # a retry found what the first request created
        return status, msgspec.json.encode(result), JSON

    def _bot_token(self, headers: Mapping[str, str]) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token.startswith("xoxb-") else None

    def _api_key_ok(self, headers: Mapping[str, str]) -> bool:
        return self.engine.carries_api_key(headers)

    async def _bearer(self, headers: Mapping[str, str]) -> Actor:
        from centrifugo_bridge.tokens import InvalidToken, TokenExpired

        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized()
        try:
            claims = await self.engine.verify_token(token.strip())
        except TokenExpired:
            raise unauthorized("token expired") from None
        except InvalidToken:
            raise unauthorized("invalid token") from None
        if "channel" in claims:
            # A subscription token grants one channel, never the user's whole API.
            raise unauthorized("a subscription token cannot authenticate API calls")
        user = claims.get(self.engine.settings.client.token.user_id_claim or "sub")
        if not isinstance(user, str) or not user:
            raise unauthorized("the token names no user")
        info = claims.get("info")
        profile = info if isinstance(info, dict) else {k: claims[k] for k in ("name", "email") if k in claims}
        return await self.service.actor(user, profile)


def _error(exc: ChatError, allow: str | None = None) -> Answer:
    """The JSON error answer; a 405 names the methods the path takes (``Allow``)."""
    body = orjson.dumps({"error": {"code": exc.code, "message": exc.message}})
    if allow is not None:
        return exc.status, body, JSON, {"Allow": allow}
    return exc.status, body, JSON


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the ``/v1/`` API, generated from the operation table."""
    types = sorted({op.params for op in OPS} | {op.result for op in OPS}, key=lambda t: t.__name__)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(types, schemas, strict=True))
    components["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS:
        path_names = re.findall(r"\{(\w+)\}", op.path)
        params_schema = components.get(op.params.__name__, {})
        props = params_schema.get("properties", {})
        parameters = [{"name": n, "in": "path", "required": True, "schema": props.get(n, {"type": "string"})}
                      for n in path_names]
        entry: dict[str, Any] = {
            "operationId": op.name, "summary": op.summary,
            "security": [{"apiKey": []}] if op.admin else (
                [{"bearer": []}, {"apiKey": []}] if op.name in APP_OPS else [{"bearer": []}]),
            "parameters": parameters,
            "responses": {
                str(op.status): {"description": "OK", "content": {JSON: {"schema": by_type[op.result]}}},
                "default": {"description": "Error", "content": {JSON: {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}},
            "x-rpc-method": op.name if op.rpc else None,
        }
        if op.http_method in ("GET", "DELETE"):
            parameters.extend({"name": n, "in": "query", "required": False, "schema": sch}
                              for n, sch in props.items() if n not in path_names)
        else:
            entry["requestBody"] = {"required": False, "content": {JSON: {"schema": by_type[op.params]}}}
        paths.setdefault(op.path, {})[op.http_method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "SENTchat API", "version": "1",
                 "description": "The chat product over HTTP; the same operations are Centrifugo RPC "
                                "methods over the WebSocket (x-rpc-method)."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }
