"""Per-channel ordering of durable publications arriving from other processes.

Durable offsets are allocated inside the commit transaction (a row lock per channel), so a
channel's offsets are contiguous and commit order is offset order. The Redis PUBLISH that
follows each commit can still overtake another process's PUBLISH, or be lost while a shard
is down. This buffer delivers a channel's publications strictly in offset order: a
publication that arrives early is held; a gap that does not close by itself within
``GAP_WAIT`` is filled from PostgreSQL, where every published offset already is.

A gap PostgreSQL cannot fill either (history removed, the read failed) is never skipped
silently: the channel's local subscribers are told their state is insufficient (``lost``),
as Centrifuge does, so the SDKs resubscribe and recover — or learn ``recovered: false``
from a history that really cannot cover them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from centrifugo_bridge.protocol import Publication

log = logging.getLogger("sentchat.reorder")

# How long an out-of-order publication waits for the missing ones before they are read
# from PostgreSQL: long enough for a racing PUBLISH, short for P95 delivery latency.
GAP_WAIT = 0.05
# Held publications per channel before the gap is filled at once.
MAX_HELD = 10_000

Fetch = Callable[[str, int, int], Awaitable[list[Publication]]]


# Reads of a gap that fail (PostgreSQL unreachable for a moment) are retried this many
# times, GAP_WAIT apart, before the subscribers are told: one failed read must not send
# every subscriber of a busy channel back to the database that just failed.
FILL_RETRIES = 3


class _Channel:
    __slots__ = ("expected", "held", "timer", "filling", "failures")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.held: dict[int, Publication] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.filling = False
        self.failures = 0


class Reorder:
    """Delivers each channel's publications in offset order, exactly once."""

    def __init__(self, deliver: Callable[[str, Publication], None], fetch: Fetch,
                 lost: Callable[[str], None]) -> None:
        self._deliver = deliver
        self._fetch = fetch  # (channel, after_offset, up_to_offset) -> publications
        self._lost = lost  # (channel): a gap that cannot be filled
        self._channels: dict[str, _Channel] = {}

    def seed(self, channel: str, top: int) -> None:
        """A local subscriber's subscribe reply covered the stream up to ``top``: deliver
        from ``top + 1`` on (unless the channel is already being followed)."""
        if channel not in self._channels:
            self._channels[channel] = _Channel(top + 1)

    def forget(self, channel: str) -> None:
        """No local subscriber any more: drop the channel's state."""
        state = self._channels.pop(channel, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()

    def push(self, channel: str, pub: Publication) -> None:
        state = self._channels.get(channel)
        if state is None:
            # First publication heard here: subscribers got the earlier ones in their
            # subscribe replies.
            self._channels[channel] = _Channel(pub.offset + 1)
            self._deliver(channel, pub)
            return
        if pub.offset < state.expected or pub.offset in state.held:
            return  # already delivered (a gap fill raced the PUBLISH)
        if pub.offset == state.expected and not state.filling:
            self._deliver(channel, pub)
            state.expected += 1
            self._drain(channel, state)
            return
        state.held[pub.offset] = pub
        if len(state.held) >= MAX_HELD:
            self._start_fill(channel)
        elif state.timer is None and not state.filling:
            state.timer = asyncio.get_running_loop().call_later(GAP_WAIT, self._start_fill, channel)

    def _drain(self, channel: str, state: _Channel) -> None:
        held = state.held
        while state.expected in held:
            self._deliver(channel, held.pop(state.expected))
            state.expected += 1
        if not held and state.timer is not None:
            state.timer.cancel()
            state.timer = None

    def _start_fill(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is None or state.filling or not state.held:
            return
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        state.filling = True
        task = asyncio.ensure_future(self._fill(channel, state))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _fill(self, channel: str, state: _Channel) -> None:
        failed = False
        try:
            up_to = min(state.held) - 1
            missing = await self._fetch(channel, state.expected - 1, up_to)
        except Exception:
            log.exception("filling a gap in %s from PostgreSQL failed", channel)
            missing = []
            failed = True
        finally:
            state.filling = False
        if self._channels.get(channel) is not state:
            return
        if failed and state.failures < FILL_RETRIES:
            state.failures += 1
            if state.timer is None:
                state.timer = asyncio.get_running_loop().call_later(
                    GAP_WAIT * (2 ** state.failures), self._start_fill, channel)
            return
        state.failures = 0
        for pub in missing:
            if pub.offset >= state.expected:
                state.held.setdefault(pub.offset, pub)
        if state.expected not in state.held and state.held:
            # Not in the store either (removed history) or unreadable: the subscribers
            # cannot be given a contiguous stream from here. Start over from the next held
            # publication for whoever subscribes again, and tell the current ones.
            log.warning("gap in %s at offset %d %s; subscribers resubscribe", channel,
                        state.expected, "unreadable" if failed else "not in history")
            self.forget(channel)
            self._lost(channel)
            return
        self._drain(channel, state)
        if state.held and state.timer is None:
            state.timer = asyncio.get_running_loop().call_later(GAP_WAIT, self._start_fill, channel)
