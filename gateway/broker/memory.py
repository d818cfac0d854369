"""In-process broker: one node, streams and presence in memory.

Everything completes without awaiting, so a publish and the fan-out it causes happen in one
event-loop step; subscribe + recovery read therefore cannot miss a publication in between.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable

from centrifugo_bridge import codes
from centrifugo_bridge.effects import StreamState
from centrifugo_bridge.protocol import ClientInfo, Publication, StreamPosition
from gateway.broker.base import Deliveries


class _Stream:
    __slots__ = ("epoch", "top", "items", "times", "ttl")

    def __init__(self) -> None:
        # A new epoch per stream instance: a client holding positions of an older instance
        # (e.g. before a restart) learns its offsets are meaningless.
        self.epoch = secrets.token_hex(4)
        self.top = 0
        self.items: deque[Publication] = deque()
        self.times: deque[float] = deque()
        self.ttl = 0.0

    def trim(self, size: int, now: float) -> None:
        while len(self.items) > size:
            self.items.popleft()
            self.times.popleft()
        if self.ttl > 0:
            while self.times and self.times[0] <= now - self.ttl:
                self.items.popleft()
                self.times.popleft()


class MemoryBroker:
    """Broker for a single process."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        # Nothing to count in one process (the broker_events metric stays empty).
        self.stats: dict[str, int] = {}
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._deliveries: Deliveries | None = None
        self._clock = clock or time.time

    async def start(self, deliveries: Deliveries) -> None:
        self._deliveries = deliveries

    async def close(self) -> None:
        self._deliveries = None

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    def _stream(self, channel: str) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream()
        return stream

    async def publish(self, channel: str, pub: Publication, history_size: int,
                      history_ttl: float) -> StreamPosition:
        position = StreamPosition()
        if history_size > 0 and history_ttl > 0:
            stream = self._stream(channel)
            stream.top += 1
            stream.ttl = history_ttl
            pub.offset = stream.top
            now = self._clock()
            stream.items.append(pub)
            stream.times.append(now)
            stream.trim(history_size, now)
            position = StreamPosition(offset=stream.top, epoch=stream.epoch)
        if self._deliveries is not None:
            self._deliveries.deliver_publication(channel, pub)
        return position

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._deliveries is not None:
            self._deliveries.deliver_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._deliveries is not None:
            self._deliveries.deliver_leave(channel, info)

    async def history(self, channel: str, limit: int, since: StreamPosition | None,
                      reverse: bool) -> StreamState:
        stream = self._stream(channel)
        stream.trim(len(stream.items), self._clock())
        if since is not None and since.epoch and since.epoch != stream.epoch:
            raise codes.error(codes.UNRECOVERABLE_POSITION)
        if limit == 0:
            return StreamState(epoch=stream.epoch, offset=stream.top, publications=[])
        items = list(stream.items)
        if since is not None:
            if reverse:
                items = [p for p in items if p.offset < since.offset]
            else:
                items = [p for p in items if p.offset > since.offset]
        if reverse:
            items.reverse()
        if limit > 0:
            items = items[:limit]
        return StreamState(epoch=stream.epoch, offset=stream.top, publications=items)

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.items.clear()
            stream.times.clear()

    async def add_presence(self, channel: str, info: ClientInfo) -> None:
        self._presence.setdefault(channel, {})[info.client] = info

    async def remove_presence(self, channel: str, client: str) -> None:
        members = self._presence.get(channel)
        if members is not None:
            members.pop(client, None)
            if not members:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return dict(self._presence.get(channel, {}))

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        members = self._presence.get(channel, {})
        return len(members), len({info.user for info in members.values()})
