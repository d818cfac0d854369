"""The broker interface: fan-out between nodes, channel streams (offsets, epochs, history)
and presence. `memory.py` serves one process; a Redis broker serves many (later issue).

A broker never writes to sockets: it hands what arrives to the node's ``Deliveries``
callbacks, and the hub turns them into frames for local subscribers.
"""

from __future__ import annotations

from typing import Protocol

from centrifugo_bridge.effects import StreamState
from centrifugo_bridge.protocol import ClientInfo, Publication, StreamPosition


class Deliveries(Protocol):
    """What a broker calls when something must reach this node's subscribers."""

    def deliver_publication(self, channel: str, pub: Publication) -> None: ...

    def deliver_join(self, channel: str, info: ClientInfo) -> None: ...

    def deliver_leave(self, channel: str, info: ClientInfo) -> None: ...


class Broker(Protocol):
    """Stream, presence and fan-out operations. Every method may do I/O."""

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
