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

from gateway.extension import Engine, Registration, RpcHandler

if TYPE_CHECKING:
    from gateway.chat.binding import ChatHttp
    from gateway.chat.service import ChatService
    from gateway.http import Answer, RequestHead

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
)


class Loaded(NamedTuple):
    """The started product: the service, its HTTP binding, its RPC methods by name."""

    service: ChatService
    http: ChatHttp
    rpc: dict[str, RpcHandler]


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
        return Registration(
            rpc_methods={name: self._rpc_stub(name) for name in RPC_METHODS},
            http_prefixes={HTTP_PREFIX: self._http},
            access_checks={ACCESS_PROVIDER: self._check_access},
            on_user_online=self._online_changed)

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
        self._loaded = Loaded(service, ChatHttp(engine, service), rpc_methods(engine, service))
        return self._loaded

    async def stop(self) -> None:
        """Stop the service if it started; cancel a start still under way."""
        loading, self._loading = self._loading, None
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            await loaded.service.stop()
        elif loading is not None and not loading.done():
            loading.cancel()

    def _rpc_stub(self, name: str) -> RpcHandler:
        async def call(user: str, client: str, data: bytes) -> bytes:
            loaded = self._loaded or await self.load()
            return await loaded.rpc[name](user, client, data)

        return call

    async def _http(self, head: RequestHead, body: bytes) -> Answer:
        loaded = self._loaded or await self.load()
        return await loaded.http.handle(head, body)

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
