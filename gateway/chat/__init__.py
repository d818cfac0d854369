"""The chat product (channels, DMs, threads, messages, read state, notifications, roles)
built on the gateway: one service layer (service.py) exposed as Centrifugo RPC methods and
as the JSON HTTP API under /v1/ (binding.py).

This module stays light on purpose: a node installs :class:`ChatLoader`, and the service
(its modules, its PostgreSQL pool) is imported and started by the first chat call, so an
idle worker does not carry a product nobody has used yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.chat.binding import ChatHttp
    from gateway.chat.service import ChatService
    from gateway.node import Node

# The RPC methods of binding.OPS (a test keeps the two lists equal).
RPC_METHODS: tuple[str, ...] = (
    "channels.list", "channels.create", "channels.join", "channels.leave", "channels.invite",
    "channels.kick", "channels.archive", "channels.set_topic", "channels.mute", "dm.open",
    "messages.send", "messages.list", "messages.edit", "messages.delete", "messages.history",
    "threads.replies", "threads.follow", "reactions.add", "reactions.remove", "pins.add",
    "pins.remove", "pins.list", "read.mark", "unread.counts", "presence.set_status", "users.get",
)


class ChatLoader:
    """Entry points of the chat product on a node, loading the service on first use."""

    def __init__(self, node: Node) -> None:
        from storage.crypto import FieldCipher

        # Refuse a node without a usable encryption key at start, not at the first call.
        FieldCipher.from_settings(node.settings.chat)
        self.node = node
        self._loading: asyncio.Future[tuple[ChatService, ChatHttp]] | None = None
        for name in RPC_METHODS:
            node.rpc_handlers[name] = self._rpc_stub(name)
        node.access_providers["chat"] = self._check_access
        node.online_listener = self._online_changed

    @property
    def loaded(self) -> bool:
        return self._loading is not None and self._loading.done() and not self._loading.exception()

    async def load(self) -> tuple[ChatService, ChatHttp]:
        """The started service and its HTTP binding (started once, by whoever asks first)."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._start())
        try:
            return await asyncio.shield(self._loading)
        except Exception:
            # A failed start (database down...) is retried by the next call.
            if self._loading.done():
                self._loading = None
            raise

    async def _start(self) -> tuple[ChatService, ChatHttp]:
        from gateway.chat.binding import ChatHttp, install_rpc
        from gateway.chat.service import ChatService

        node = self.node
        service = ChatService(node, node.settings.chat)
        await service.start(node.settings.storage.postgres_dsn)
        install_rpc(node, service)  # replaces the stubs
        http = ChatHttp(node, service)
        node.chat, node.chat_http = service, http
        return service, http

    async def stop(self) -> None:
        if self._loading is None:
            return
        if not self._loading.done():
            self._loading.cancel()
        elif not self._loading.cancelled() and self._loading.exception() is None:
            await self._loading.result()[0].stop()

    def _rpc_stub(self, name: str) -> Callable[[str, str, bytes], Awaitable[bytes]]:
        async def call(user: str, client: str, data: bytes) -> bytes:
            await self.load()
            return await self.node.rpc_handlers[name](user, client, data)

        return call

    async def _check_access(self, user: str, channel: str, action: str) -> bool:
        service, _ = await self.load()
        return await service.check_access(user, channel, action)

    def _online_changed(self, user: str, online: bool) -> None:
        async def announce() -> Any:
            service, _ = await self.load()
            await service._announce_online(user, online)

        self.node._spawn(announce())
