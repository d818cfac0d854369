"""How a product (the chat, and later search, integrations, the web client) plugs into a
node without the node knowing it.

An :class:`Extension` is installed by the composition root (``gateway/compose.py``) before
the node starts. At installation it is handed an :class:`Engine`, the narrow port through
which it may use the engine, and answers with a :class:`Registration`: the RPC methods it
serves, the HTTP path prefixes it answers, the access providers it decides for (a
namespace's ``acl`` option names one), and the events it wants to hear. The node then
starts and stops it with itself.

The port exists so that the engine's internals (connections, sessions, the broker, the
task set) can change without touching any product: nothing under an extension's package
imports ``gateway.node``, ``gateway.connection`` or ``gateway.broker``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from centrifugo_bridge.channels import ChannelRules
from centrifugo_bridge.effects import StreamState
from centrifugo_bridge.protocol import ClientInfo, Publication, StreamPosition

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.http import Answer, RequestHead
    from gateway.node import Node

__all__ = [
    "FALLBACK_PREFIX", "RESERVED_PREFIXES", "AccessCheck", "CommitListener", "Engine", "Extension", "HttpHandler",
    "OnlineListener", "Registration", "RpcHandler",
]

RpcHandler = Callable[[str, str, bytes], Awaitable[bytes]]
"""(user, client id, request data) -> result data; raise ``ClientError`` to refuse."""

HttpHandler = Callable[["RequestHead", bytes], Awaitable["Answer"]]
"""(request head, body) -> the answer of one HTTP request under a registered prefix."""

AccessCheck = Callable[[str, str, str], Awaitable[bool]]
"""(user, channel, action: subscribe | history | presence) -> allowed."""

OnlineListener = Callable[[str, bool], None]
"""(user, True) when a user's first connection on this node registers, (user, False) after
its last one here closed. Called on the event loop inside connection bookkeeping: start a
job with :meth:`Engine.spawn` for anything that waits."""

CommitListener = Callable[[str, Publication], None]
"""(channel, publication) once a durable publication is committed, on the node that
committed it (so once per publication across a cluster). Same rules as OnlineListener."""

RESERVED_PREFIXES: tuple[str, ...] = ("/api/", "/connection/", "/health", "/metrics")
"""Paths the engine answers itself; an extension cannot claim a prefix overlapping them."""

FALLBACK_PREFIX = "/"
"""The one prefix allowed to overlap the others: it answers only the paths that neither the
engine nor another prefix takes (a web client served at ``/``). Every other prefix owns its
whole subtree, so without this exception a site at ``/`` could not coexist with ``/v1/``;
at most one extension holds it, and it never receives a path under ``RESERVED_PREFIXES``."""


@dataclass(frozen=True, slots=True)
class Registration:
    """What an extension contributes to the node it is installed on."""

    rpc_methods: Mapping[str, RpcHandler] = field(default_factory=dict)
    http_prefixes: Mapping[str, HttpHandler] = field(default_factory=dict)
    """Path prefix (``/v1/``) -> handler; the longest registered prefix of a path wins
    (``FALLBACK_PREFIX`` takes what nothing else does)."""
    access_checks: Mapping[str, AccessCheck] = field(default_factory=dict)
    """Provider name (a namespace's ``acl`` option) -> check."""
    on_user_online: OnlineListener | None = None
    on_committed: CommitListener | None = None
    user_id_check: Callable[[str], str | None] | None = None
    """A connection token's user id -> why this product cannot serve it (the connect is
    refused with 3500 and the reason logged), or None. For products that store users by
    id: a token minted with markup or 10,000 characters in ``sub`` must not create one."""


@runtime_checkable
class Extension(Protocol):
    """A product installed on a node."""

    @property
    def name(self) -> str:
        """Unique among the installed extensions (also the key of ``Node.extensions``)."""
        ...

    def register(self, engine: Engine) -> Registration:
        """Called once at installation, before the node starts: keep ``engine`` and say
        what this extension serves. Import nothing heavy here; a product that loads lazily
        registers stubs that load it on their first call."""
        ...

    async def start(self) -> None:
        """Called by ``Node.start`` after the durable store is up, before the broker
        connects. Refuse a configuration that cannot work here, not at the first call."""
        ...

    async def stop(self) -> None:
        """Called by ``Node.stop`` after every connection closed and every job spawned
        through the port finished, before the durable store closes."""
        ...


class Engine:
    """The port through which an extension uses the engine: publish, history, presence,
    control messages, who is connected here, background jobs, token verification and the
    read-only settings. Nothing else of the node is reachable from an extension."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def settings(self) -> Settings:
        """The node's settings (read them; changing them at run time is undefined)."""
        return self._node.settings

    @property
    def rules(self) -> ChannelRules:
        """Namespace resolution and the channel-name boundaries in use."""
        return self._node.rules

    async def publish(self, channel: str, data: bytes, *, idempotency_key: str = "",
                      source: str = "api") -> StreamPosition:
        """Publish into ``channel`` as the server API does (durable namespaces answer once
        committed); ``source`` labels the ``publications`` metric."""
        return await self._node.publish(channel, data, idempotency_key=idempotency_key,
                                        source=source)

    async def history(self, channel: str, limit: int, since: StreamPosition | None = None,
                      reverse: bool = False) -> StreamState:
        """A channel's stream (``limit=0``: just its current position)."""
        return await self._node.history(channel, limit, since, reverse)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is subscribed to ``channel`` with presence, on every node."""
        return await self._node.broker.presence(channel)

    async def control(self, command: dict[str, Any]) -> None:
        """Apply a server-API control command (``{"op": "unsubscribe", ...}``, the ops of
        ``Node.apply_control``) here and on every other node."""
        await self._node.control(command)

    def connected_here(self, user: str) -> bool:
        """Whether ``user`` has a connection on this node now."""
        return user in self._node.users

    def connection_info(self, client: str) -> bytes:
        """The ``info`` of a connected client's token (b"" when unknown or gone)."""
        conn = self._node.connections.get(client)
        return conn.session.conn_info if conn is not None else b""

    def carries_api_key(self, headers: Mapping[str, str]) -> bool:
        """Whether request ``headers`` (lower-case names) carry the server API key
        (``X-API-Key`` or ``Authorization: apikey``). Never true without a configured key,
        ``http_api.insecure`` notwithstanding: an extension's admin routes stay closed."""
        from gateway.api import authorized

        key = self._node.settings.http_api.key
        if not key or "x-api-key" not in headers and not headers.get("authorization", "").startswith("apikey "):
            return False
        return authorized(headers, {}, key, False)

    def issue_token(self, claims: Mapping[str, Any]) -> str:
        """A connection JWT carrying ``claims`` (``sub``, ``exp``...), signed with the
        node's HMAC key so that ``verify_token`` and every connect accept it: a product
        that signs users in (local accounts, OIDC) hands out the engine's own credential.
        Raises ``LookupError`` when no ``client.token.hmac_secret_key`` is configured."""
        from gateway.auth import sign_token

        secret = self._node.settings.client.token.hmac_secret_key
        if not secret:
            raise LookupError("client.token.hmac_secret_key is not set")
        return sign_token(secret, dict(claims))

    async def verify_token(self, token: str) -> dict[str, Any]:
        """The claims of a connection JWT, checked with the node's keys; raises
        ``InvalidToken`` / ``TokenExpired``."""
        return await self._node.verifier.verify(token)

    def spawn(self, job: Coroutine[Any, Any, Any]) -> None:
        """Run ``job`` in the background; failures are logged, and the node waits for it
        on stop before stopping the extensions."""
        self._node._spawn(job)
