"""Centrifugo's server HTTP API on a node: `POST /api/<method>`.

Authentication, decoding and the Centrifugo response envelope (`{"result": …}` or
`{"error": {code, message}}`, HTTP 200) live here; the operations are the node's.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from centrifugo_bridge import codes, server_api
from centrifugo_bridge.codes import ClientError, Disconnect
from gateway.node import Node

log = logging.getLogger("sentchat.api")

_encode = msgspec.json.Encoder().encode
_decoders = {name: msgspec.json.Decoder(cls) for name, cls in server_api.REQUESTS.items()}


class BadRequestBody(Exception):
    """The body is not JSON at all: HTTP 400, as Centrifugo answers."""


def _decode(method: str, body: bytes) -> Any:
    """Decode a request body as Go's json.Unmarshal would accept it: invalid JSON, an empty
    body and mistyped fields all fail the request with HTTP 400."""
    try:
        return _decoders[method].decode(body)
    except msgspec.DecodeError:  # ValidationError included
        raise BadRequestBody() from None


def authorized(headers: Mapping[str, str], query: Mapping[str, str], key: str, insecure: bool) -> bool:
    """Centrifugo's API key check: X-API-Key, `Authorization: apikey <key>`, or ?api_key."""
    if insecure:
        return True
    if not key:
        return False
    expected = key.encode()
    # As Centrifugo's middleware: a non-empty X-API-Key wins over Authorization, and the
    # ?api_key query parameter is still tried when a header carried a wrong key.
    given = headers.get("x-api-key", "")
    if given:
        valid = hmac.compare_digest(given.encode(), expected)
    else:
        parts = headers.get("authorization", "").split()
        valid = (len(parts) == 2 and parts[0].lower() == "apikey"
                 and hmac.compare_digest(parts[1].encode(), expected))
    if not valid and "api_key" in query:
        valid = hmac.compare_digest(query["api_key"].encode(), expected)
    return valid


class ServerApi:
    """Executes server API calls against a node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def call(self, method: str, body: bytes) -> tuple[int, bytes]:
        """Run one API method; returns (HTTP status, JSON body)."""
        if method not in server_api.REQUESTS:
            return 404, b"Not Found"
        self.node.metrics.api_requests.labels(method).inc()
        try:
            if method == "batch":
                return 200, _encode(await self._batch(body))
            result = await self._dispatch(method, body)
            return 200, _encode({"result": result})
        except BadRequestBody:
            return 400, b"Bad Request"
        except ClientError as exc:
            self.node.metrics.errors.labels(str(exc.code)).inc()
            return 200, _encode({"error": {"code": exc.code, "message": exc.message}})

    async def _dispatch(self, method: str, body: bytes) -> Any:
        return await getattr(self, "_" + method)(_decode(method, body))

    async def _batch(self, body: bytes) -> dict[str, Any]:
        req = _decode("batch", body)
        # Centrifugo decodes the whole batch before running any command: one malformed
        # command fails the request with 400.
        decoded: list[tuple[str, Any] | ClientError] = []
        for command in req.commands:
            if len(command) != 1:
                decoded.append(codes.error(codes.BAD_REQUEST))
                continue
            (method, params), = command.items()
            if method not in server_api.REQUESTS or method == "batch":
                decoded.append(ClientError(104, "not found"))
                continue
            decoded.append((method, _decode(method, bytes(params))))
        if req.parallel:
            return {"replies": list(await asyncio.gather(*(self._one(item) for item in decoded)))}
        replies: list[dict[str, Any]] = []
        i = 0
        while i < len(decoded):
            # A run of publishes is issued back to back without waiting for each reply: the
            # broker (or the durable writer) takes them in the order they are issued, so
            # offsets and delivery order are those of sequential execution, and a batch of
            # N costs one broker round trip instead of N.
            j = i
            while j < len(decoded):
                item = decoded[j]
                if not (isinstance(item, tuple) and item[0] == "publish"):
                    break
                j += 1
            if j - i > 1:
                tasks = [asyncio.ensure_future(self._one(item)) for item in decoded[i:j]]
                replies.extend(await asyncio.gather(*tasks))
                i = j
            else:
                replies.append(await self._one(decoded[i]))
                i += 1
        return {"replies": replies}

    async def _one(self, item: tuple[str, Any] | ClientError) -> dict[str, Any]:
        """One command of a batch: its result, or its error (never raised)."""
        try:
            if isinstance(item, ClientError):
                raise item
            method, params = item
            return {method: await getattr(self, "_" + method)(params)}
        except ClientError as exc:
            self.node.metrics.errors.labels(str(exc.code)).inc()
            return {"error": {"code": exc.code, "message": exc.message}}

    # ---- methods ----------------------------------------------------------------------

    async def _publish(self, req: server_api.PublishRequest) -> dict[str, Any]:
        if not req.channel:
            raise codes.error(codes.BAD_REQUEST)
        data = server_api.payload(req.data, req.b64data)
        # Centrifugo looks the namespace up (102) before it validates the data (107).
        self.node.rules.resolve(req.channel)
        if not data:
            raise codes.error(codes.BAD_REQUEST)
        pos = await self.node.publish(req.channel, data, tags=req.tags, skip_history=req.skip_history,
                                     idempotency_key=req.idempotency_key)
        return {"offset": pos.offset, "epoch": pos.epoch} if pos.epoch else {}

    async def _broadcast(self, req: server_api.BroadcastRequest) -> dict[str, Any]:
        if not req.channels:
            raise codes.error(codes.BAD_REQUEST)
        data = server_api.payload(req.data, req.b64data)

        async def one(channel: str) -> dict[str, Any]:
            try:
                if not channel:
                    raise codes.error(codes.BAD_REQUEST)
                # Per channel, as Centrifugo: namespace (102) first, then data (107).
                self.node.rules.resolve(channel)
                if not data:
                    raise codes.error(codes.BAD_REQUEST)
                pos = await self.node.publish(channel, data, tags=req.tags, skip_history=req.skip_history,
                                             idempotency_key=req.idempotency_key)
                return {"result": {"offset": pos.offset, "epoch": pos.epoch} if pos.epoch else {}}
            except ClientError as exc:
                return {"error": {"code": exc.code, "message": exc.message}}

        # Concurrently: durable channels then share one group commit instead of one each.
        return {"responses": list(await asyncio.gather(*(one(ch) for ch in req.channels)))}

    async def _subscribe(self, req: server_api.SubscribeRequest) -> dict[str, Any]:
        if not req.user or not req.channel:
            raise codes.error(codes.BAD_REQUEST)
        self.node.rules.resolve(req.channel)
        override = None
        if req.override is not None:
            o = req.override
            override = {k: getattr(o, k).value for k in o.__struct_fields__
                        if getattr(o, k, None) is not None}
        since = req.recover_since
        # bytes travel inside the JSON control message as latin-1 text (lossless).
        await self.node.control({
            "op": "subscribe", "user": req.user, "channel": req.channel, "client": req.client,
            "info": server_api.payload(req.info, req.b64info).decode("latin-1"),
            "data": server_api.payload(req.data, req.b64data).decode("latin-1"),
            "since": {"offset": since.offset, "epoch": since.epoch} if since else None,
            "override": override, "expire_at": req.expire_at})
        return {}

    async def _unsubscribe(self, req: server_api.UnsubscribeRequest) -> dict[str, Any]:
        if not req.user or not req.channel:
            raise codes.error(codes.BAD_REQUEST)
        self.node.rules.resolve(req.channel)
        await self.node.control({"op": "unsubscribe", "user": req.user, "channel": req.channel,
                                 "client": req.client})
        return {}

    async def _disconnect(self, req: server_api.DisconnectRequest) -> dict[str, Any]:
        if not req.user:
            raise codes.error(codes.BAD_REQUEST)
        disconnect = codes.FORCE_DISCONNECT
        if req.disconnect is not None and req.disconnect.code:
            d = req.disconnect
            # Codes below 3000 are the transport's; reasons must fit a WebSocket close frame.
            if d.code < 3000 or d.code > 4999 or len(d.reason.encode()) > 120:
                raise codes.error(codes.BAD_REQUEST)
            disconnect = Disconnect(d.code, d.reason)
        await self.node.control({
            "op": "disconnect", "user": req.user, "client": req.client,
            "whitelist": req.whitelist,
            "disconnect": {"code": disconnect.code, "reason": disconnect.reason}})
        return {}

    async def _refresh(self, req: server_api.RefreshRequest) -> dict[str, Any]:
        if not req.user:
            raise codes.error(codes.BAD_REQUEST)
        info = server_api.payload(req.info, req.b64info)
        await self.node.control({
            "op": "refresh", "user": req.user, "client": req.client, "expired": req.expired,
            "expire_at": req.expire_at, "info": info.decode("latin-1") if info else None})
        return {}

    async def _presence(self, req: server_api.PresenceRequest) -> dict[str, Any]:
        res = self._channel(req.channel)
        if not res.options.presence:
            raise codes.error(codes.NOT_AVAILABLE)
        return {"presence": await self.node.broker.presence(req.channel)}

    async def _presence_stats(self, req: server_api.PresenceStatsRequest) -> dict[str, Any]:
        res = self._channel(req.channel)
        if not res.options.presence:
            raise codes.error(codes.NOT_AVAILABLE)
        clients, users = await self.node.broker.presence_stats(req.channel)
        return {"num_clients": clients, "num_users": users}

    async def _history(self, req: server_api.HistoryRequest) -> dict[str, Any]:
        res = self._channel(req.channel)
        if not res.options.history_enabled:
            raise codes.error(codes.NOT_AVAILABLE)
        if req.reverse and req.since is not None and req.since.offset == 0:
            raise codes.error(codes.BAD_REQUEST)
        state = await self.node.history(req.channel, req.limit, req.since, req.reverse)
        return {"publications": state.publications, "epoch": state.epoch, "offset": state.offset}

    async def _history_remove(self, req: server_api.HistoryRemoveRequest) -> dict[str, Any]:
        res = self._channel(req.channel)
        if not res.options.history_enabled:
            raise codes.error(codes.NOT_AVAILABLE)
        await self.node.remove_history(req.channel)
        return {}

    async def _channels(self, req: server_api.ChannelsRequest) -> dict[str, Any]:
        # This node's hub is live; other nodes' counts come from their last registration.
        totals = dict(self.node.hub.channels())
        for entry in await self.node.nodes():
            if entry.get("uid") == self.node.uid:
                continue
            for name, count in (entry.get("channels") or {}).items():
                totals[name] = totals.get(name, 0) + int(count)
        channels = {}
        for name, count in totals.items():
            if not req.pattern or fnmatch.fnmatchcase(name, req.pattern):
                channels[name] = {"num_clients": count} if count else {}
        return {"channels": channels}

    async def _info(self, req: server_api.InfoRequest) -> dict[str, Any]:
        nodes = []
        for entry in await self.node.nodes():
            entry = {k: v for k, v in entry.items() if k != "channels"}
            if entry.get("uid") == self.node.uid:
                entry = self.node.info()
            nodes.append(entry)
        return {"nodes": nodes}

    def _channel(self, channel: str) -> Any:
        if not channel:
            raise codes.error(codes.BAD_REQUEST)
        return self.node.rules.resolve(channel)
