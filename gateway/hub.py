"""Local subscribers of each channel and encode-once fan-out.

The hub knows which connections of this process hold which channels. For each publication
it encodes the push once per codec in use and builds the WebSocket frame once; the cost per
subscriber is one ``write`` of shared bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from centrifugo_bridge.codecs import JSON, Codec
from centrifugo_bridge.protocol import ClientInfo, Join, Leave, Publication, Push, Reply
from gateway.frames import build_frame
from gateway.subscribe_buffer import SubscribeBuffer

# How long a new subscriber skips live publications its subscribe reply already covered.
# Across processes the history read (Redis or PostgreSQL) can be ahead of the pub/sub
# stream this process hears: the publications in flight between them arrive after the
# reply and would be sent twice. They arrive within milliseconds; the bound only keeps an
# offset sequence that restarted (new epoch) from being swallowed for long.
LATE_WINDOW = 5.0


class Subscriber(Protocol):
    codec: Codec
    # Channels being subscribed right now: their pushes wait until the subscribe reply is
    # written (None when nothing is being subscribed, the common case: one check a push).
    buffering: SubscribeBuffer | None

    def write_frame(self, frame: bytes) -> None: ...


S = TypeVar("S", bound=Subscriber)


class Hub(Generic[S]):
    """channel -> {subscriber: wants join/leave pushes}; generic in the subscriber type, so
    the node gets its own connections back from ``subscribers``."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[S, bool]] = {}
        # Only the subscribers that asked for join/leave pushes: a join must not scan a
        # 50,000-subscriber channel where nobody wants it.
        self._join_leave: dict[str, set[S]] = {}
        # channel -> {subscriber: (offset its subscribe reply covered, deadline)}: see
        # LATE_WINDOW. Empty in the common case; only publish() looks at it, per channel.
        self._late: dict[str, dict[S, tuple[int, float]]] = {}
        self.num_subscriptions = 0
        self.deliveries = 0

    def add(self, channel: str, sub: S, push_join_leave: bool) -> bool:
        """Register ``sub``; True when it is the first local subscriber of ``channel``."""
        subs = self._channels.get(channel)
        first = subs is None
        if subs is None:
            subs = self._channels[channel] = {}
        if sub not in subs:
            self.num_subscriptions += 1
        subs[sub] = push_join_leave
        if push_join_leave:
            self._join_leave.setdefault(channel, set()).add(sub)
        return first

    def remove(self, channel: str, sub: S) -> bool:
        """Unregister ``sub``; True when ``channel`` has no local subscriber left."""
        subs = self._channels.get(channel)
        if subs is None or sub not in subs:
            return False
        late = self._late.get(channel)
        if late is not None and late.pop(sub, None) is not None and not late:
            del self._late[channel]
        if subs.pop(sub):
            wanting = self._join_leave[channel]
            wanting.discard(sub)
            if not wanting:
                del self._join_leave[channel]
        self.num_subscriptions -= 1
        if not subs:
            del self._channels[channel]
            return True
        return False

    def covered(self, channel: str, sub: S, offset: int) -> None:
        """``sub``'s subscribe reply covered ``channel``'s stream up to ``offset``: live
        publications up to it that are still in flight to this process are not sent to
        it again (the stream arrives here in offset order, so the first one past the
        offset ends the rule)."""
        if offset > 0:
            self._late.setdefault(channel, {})[sub] = (offset, time.monotonic() + LATE_WINDOW)

    def sweep_covered(self) -> int:
        """Drop covered-offset rules past their deadline on channels no publication reached
        (only publish() looks at them otherwise); returns how many were dropped."""
        now = time.monotonic()
        dropped = 0
        for channel, late in list(self._late.items()):
            for sub, (_, deadline) in list(late.items()):
                if now >= deadline:
                    del late[sub]
                    dropped += 1
            if not late:
                del self._late[channel]
        return dropped

    def _already_covered(self, channel: str, late: dict[S, tuple[int, float]],
                         offset: int) -> set[S]:
        now = time.monotonic()
        skip = set()
        for sub, (cut, deadline) in list(late.items()):
            if now >= deadline:
                del late[sub]
                continue
            if offset <= cut:
                skip.add(sub)
            if offset >= cut:
                del late[sub]
        if not late:
            del self._late[channel]
        return skip

    def channels(self) -> dict[str, int]:
        return {ch: len(subs) for ch, subs in self._channels.items()}

    def num_channels(self) -> int:
        return len(self._channels)

    def subscribers(self, channel: str) -> list[S]:
        return list(self._channels.get(channel, ()))

    def num_subscribers(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def publish(self, channel: str, pub: Publication) -> int:
        """Write ``pub`` to every local subscriber; returns the number of writes."""
        subs = self._channels.get(channel)
        if not subs:
            return 0
        targets: Iterable[S] = subs
        late = self._late.get(channel)
        if late is not None and pub.offset:
            skip = self._already_covered(channel, late, pub.offset)
            if skip:
                targets = [s for s in subs if s not in skip]
        return self._fan_out(targets, Reply(push=Push(channel=channel, pub=pub)), channel, pub.offset)

    def join(self, channel: str, info: ClientInfo) -> int:
        subs = self._join_leave.get(channel)
        if not subs:
            return 0
        return self._fan_out(subs, Reply(push=Push(channel=channel, join=Join(info=info))), channel, 0)

    def leave(self, channel: str, info: ClientInfo) -> int:
        subs = self._join_leave.get(channel)
        if not subs:
            return 0
        return self._fan_out(subs, Reply(push=Push(channel=channel, leave=Leave(info=info))), channel, 0)

    def _fan_out(self, subs: Iterable[S], reply: Reply, channel: str, offset: int) -> int:
        json_frame: bytes | None = None
        frames: dict[str, bytes] = {}
        n = 0
        # Copy: a write may disconnect a slow subscriber, which unsubscribes it.
        for sub in list(subs):
            codec = sub.codec
            if codec is JSON:
                if json_frame is None:
                    json_frame = build_frame(JSON.encode_reply(reply), False)
                frame = json_frame
            else:
                cached = frames.get(codec.name)
                if cached is None:
                    cached = frames[codec.name] = build_frame(codec.encode_reply(reply), codec.binary)
                frame = cached
            buffering = sub.buffering
            if buffering is None or not buffering.hold(channel, offset, frame):
                sub.write_frame(frame)
            n += 1
        self.deliveries += n
        return n
