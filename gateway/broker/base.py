"""The broker interface: fan-out between nodes, channel streams (offsets, epochs, history)
and presence. `memory.py` serves one process (a ``Broker``); `redis.py` serves many processes
and nodes (a ``ClusterBroker``: a control channel, a node registry, presence that expires
with its node, fan-out of durable publications, and resets after a shard outage).

A broker never writes to sockets: it hands what arrives to the node's ``Deliveries``
callbacks, and the hub turns them into frames for local subscribers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any, Protocol, runtime_checkable

from centrifugo_bridge.effects import StreamState
from centrifugo_bridge.protocol import ClientInfo, Publication, StreamPosition


class Deliveries(Protocol):
    """What a broker calls when something must reach this node's subscribers."""

    def deliver_publication(self, channel: str, pub: Publication) -> None: ...

    def deliver_join(self, channel: str, info: ClientInfo) -> None: ...

    def deliver_leave(self, channel: str, info: ClientInfo) -> None: ...

    def deliver_control(self, data: bytes) -> None:
        """A control message (a cluster broker's; every node hears every one, its own too)."""

    def shard_reset(self, channels: list[str]) -> None:
        """Publications of ``channels`` may have been missed (a cluster broker's shard was
        unreachable): their subscribers must recover."""


class Broker(Protocol):
    """Stream, presence and fan-out operations. Every method may do I/O."""

    # Counters by event name, exported as the broker_events metric (may stay empty).
    stats: dict[str, int]

    async def start(self, deliveries: Deliveries) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None:
        """This node has a local subscriber of ``channel`` (first one)."""

    async def unsubscribe(self, channel: str) -> None:
        """This node has no local subscriber of ``channel`` any more."""

    async def publish(self, channel: str, pub: Publication, history_size: int,
                      history_ttl: float) -> StreamPosition:
        """Assign the next offset (when history is on), keep it in the stream and fan it
        out. The returned position has offset 0 and epoch "" when history is off."""

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def history(self, channel: str, limit: int, since: StreamPosition | None,
                      reverse: bool) -> StreamState:
        """Publications of the stream: ``limit`` < 0 all retained, 0 none (position only).
        Raises ClientError 112 when ``since.epoch`` is not the stream's epoch."""

    async def remove_history(self, channel: str) -> None: ...

    async def add_presence(self, channel: str, info: ClientInfo) -> None: ...

    async def remove_presence(self, channel: str, client: str) -> None: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def presence_stats(self, channel: str) -> tuple[int, int]: ...


@runtime_checkable
class ClusterBroker(Broker, Protocol):
    """A broker shared by many processes. A node whose broker is one announces itself,
    refreshes the presence of its clients, and relays control commands through it."""

    def publish_committed(self, channel: str, pub: Publication, epoch: str) -> Awaitable[Any]:
        """Fan out a durable publication that PostgreSQL already sequenced; calls made in
        offset order are sent in that order (queued at once, not when awaited)."""
        ...

    async def publish_control(self, data: bytes) -> None:
        """Send ``data`` to every node's ``Deliveries.deliver_control`` (this one's too)."""

    async def register_node(self, info: dict[str, Any], ttl: float) -> None:
        """Record this node (``info``) as live for ``ttl`` seconds."""

    async def nodes(self) -> list[dict[str, Any]]:
        """``info`` of every node whose registration has not expired."""
        ...

    async def refresh_presence(self, items: Iterable[tuple[str, ClientInfo]]) -> None:
        """Re-add many (channel, info) presence entries, so that they expire only when this
        node stops refreshing them (it died)."""

    def shards_up(self) -> list[bool]:
        """Per shard: is it fully connected (health checks)."""
        ...
