"""The chat product (channels, DMs, threads, messages, read state, notifications, roles)
built on the gateway: one service layer (service.py) exposed as Centrifugo RPC methods and
as the JSON HTTP API under /v1/ (binding.py).

The product is an engine extension (gateway/extension.py). This module stays light on
purpose: the composition root installs :class:`ChatExtension`, whose RPC methods, ``/v1/``
handler, ``chat`` access provider and online listener are stubs that import and start the
service (its modules, its PostgreSQL pool) on the first chat call, so an idle worker does
not carry a product nobody has used yet.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple

from gateway.chat.ids import user_id_problem
from gateway.extension import Engine, Registration, RpcHandler

if TYPE_CHECKING:
    from gateway.chat.binding import ChatHttp
    from gateway.chat.service import ChatService
    from gateway.http import Answer, RequestHead
    from gateway.integrations.http import IntegrationHttp
    from gateway.integrations.service import IntegrationService

ACCESS_PROVIDER = "chat"
"""The access provider's name: a namespace with ``acl = "chat"`` asks chat membership."""

HTTP_PREFIX = "/v1/"

# The RPC methods of binding.OPS (a test keeps the two lists equal).
RPC_METHODS: tuple[str, ...] = (
    "channels.list", "channels.create", "channels.join", "channels.leave", "channels.invite",
    "channels.kick", "channels.archive", "channels.set_topic", "channels.mute", "dm.open",
    "messages.send", "messages.list", "messages.edit", "messages.delete", "messages.history",
    "threads.replies", "threads.follow", "reactions.add", "reactions.remove", "pins.add",
    "pins.remove", "pins.list", "read.mark", "unread.counts", "presence.set_status", "users.get",
    "users.me", "channels.get", "channels.members", "users.search",
    "search.messages", "search.channels", "search.users",
)

# The integrations' RPC methods (gateway/integrations/rpc.py), served when
# [integrations] enabled: slash commands and clicks on apps' buttons.
INTEGRATION_RPC_METHODS: tuple[str, ...] = ("commands.run", "commands.list", "actions.invoke")


class Loaded(NamedTuple):
    """The started product: the service, its HTTP binding, its RPC methods by name."""

    service: ChatService
    http: ChatHttp
    rpc: dict[str, RpcHandler]
    integrations: IntegrationService | None = None
    integrations_http: IntegrationHttp | None = None


class ChatExtension:
    """The chat product as an engine extension, loading the service on first use."""

    name = "chat"

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._loading: asyncio.Future[Loaded] | None = None
        self._loaded: Loaded | None = None

    def register(self, engine: Engine) -> Registration:
        """Stubs for every chat entry point; the first one called loads the service."""
        self._engine = engine
        integ = engine.settings.integrations
        methods = RPC_METHODS + (INTEGRATION_RPC_METHODS if integ.enabled else ())
        prefixes = {HTTP_PREFIX: self._http}
        if integ.enabled:
            # Incoming webhooks / response URLs and the Slack Web API subset: the
            # integrations ride on the chat's service, pool and authentication.
            prefixes[integ.hooks_prefix] = self._hooks_http
            prefixes[integ.slack_api_prefix] = self._slack_http
        return Registration(
            rpc_methods={name: self._rpc_stub(name) for name in methods},
            http_prefixes=prefixes,
            access_checks={ACCESS_PROVIDER: self._check_access},
            on_user_online=self._online_changed,
            user_id_check=user_id_problem)

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "install the extension on a node first"  # noqa: S101
        return self._engine

    async def start(self) -> None:
        """Refuse a node without a usable encryption key at start, not at the first call."""
        from storage.crypto import FieldCipher

        FieldCipher.from_settings(self.engine.settings.chat)

    @property
    def loaded(self) -> bool:
        """Whether the service has started (by a first chat call)."""
        return self._loaded is not None

    @property
    def service(self) -> ChatService | None:
        """The started service, None before the first chat call."""
        return self._loaded.service if self._loaded is not None else None

    async def load(self) -> Loaded:
        """The started product (started once, by whoever asks first)."""
        if self._loaded is not None:
            return self._loaded
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._start())
        try:
            return await asyncio.shield(self._loading)
        except Exception:
            # A failed start (database down...) is retried by the next call.
            if self._loading is not None and self._loading.done():
                self._loading = None
            raise

    async def _start(self) -> Loaded:
        from gateway.chat.binding import ChatHttp, rpc_methods
        from gateway.chat.service import ChatService

        engine = self.engine
        service = ChatService(engine, engine.settings.chat)
        await service.start(engine.settings.storage.postgres_dsn)
        http = ChatHttp(engine, service)
        rpc = rpc_methods(engine, service)
        integrations = integrations_http = None
        if engine.settings.integrations.enabled:
            from gateway.integrations.http import IntegrationHttp
            from gateway.integrations.rpc import rpc_methods as integration_rpc
            from gateway.integrations.service import IntegrationService

            integrations = IntegrationService(engine, service, engine.settings.integrations)
            await integrations.start()
            service.event_hook = integrations.on_chat_event
            http.bots = integrations
            integrations_http = IntegrationHttp(integrations, http)
            rpc.update(integration_rpc(engine, service, integrations))
        self._loaded = Loaded(service, http, rpc, integrations, integrations_http)
        return self._loaded

    async def stop(self) -> None:
        """Stop the service if it started; cancel a start still under way."""
        loading, self._loading = self._loading, None
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            if loaded.integrations is not None:
                await loaded.integrations.stop()
            await loaded.service.stop()
        elif loading is not None and not loading.done():
            loading.cancel()

    def _rpc_stub(self, name: str) -> RpcHandler:
        async def call(user: str, client: str, data: bytes) -> bytes:
            loaded = self._loaded or await self.load()
            return await loaded.rpc[name](user, client, data)

        return call

    async def _http(self, head: RequestHead, body: bytes) -> Answer:
        from gateway.chat import cors

        # CORS here, where /v1/ is answered: a preflight needs no service (nor a database).
        origins = self.engine.settings.http.cors_origins
        if head.method == "OPTIONS":
            return cors.preflight(head, origins)
        loaded = self._loaded or await self.load()
        if loaded.integrations_http is not None and loaded.integrations_http.owns(head.path):
            return cors.apply(head, await loaded.integrations_http.handle_v1(head, body), origins)
        return cors.apply(head, await loaded.http.handle(head, body), origins)

    async def _hooks_http(self, head: RequestHead, body: bytes) -> Answer:
        loaded = self._loaded or await self.load()
        assert loaded.integrations_http is not None  # noqa: S101 - registered only when enabled
        return await loaded.integrations_http.handle_hooks(head, body)

    async def _slack_http(self, head: RequestHead, body: bytes) -> Answer:
        loaded = self._loaded or await self.load()
        assert loaded.integrations_http is not None  # noqa: S101 - registered only when enabled
        return await loaded.integrations_http.handle_slack(head, body)

    async def _check_access(self, user: str, channel: str, action: str) -> bool:
        loaded = self._loaded or await self.load()
        return await loaded.service.check_access(user, channel, action)

    def _online_changed(self, user: str, online: bool) -> None:
        async def announce() -> None:
            loaded = self._loaded or await self.load()
            await loaded.service.announce_online(user, online)

        self.engine.spawn(announce())


class ChatNotEnabled:
    """Installed instead of the product when ``chat.enabled`` is false: ``/v1/`` says the
    product is off (a JSON error like the API's own) rather than a bare 404."""

    name = "chat"

    def register(self, engine: Engine) -> Registration:
        """Only the ``/v1/`` prefix."""
        return Registration(http_prefixes={HTTP_PREFIX: self._http})

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def _http(self, head: RequestHead, body: bytes) -> Answer:
        return 404, b'{"error":{"code":"not_found","message":"the chat product is not enabled"}}', \
            "application/json"
