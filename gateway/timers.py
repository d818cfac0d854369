"""A shared timer wheel: one loop callback per tick for all connections.

A connection registers the next time its session has something to do (ping, pong deadline,
expiry). Idle connections cost a set entry, not a timer handle or a task each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timed(Protocol):
    timer_key: int

    def on_timer(self, now: float) -> None: ...


class TimerWheel:
    """Buckets of items keyed by deadline, drained every ``resolution`` seconds."""

    def __init__(self, resolution: float = 0.25, clock: Callable[[], float] = time.time) -> None:
        self.resolution = resolution
        self._clock = clock
        self._buckets: dict[int, set[Timed]] = {}
        self._last = int(clock() / resolution)
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.resolution, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def schedule(self, item: Timed, at: float) -> None:
        """Call ``item.on_timer`` at (or just after) ``at``; 0 cancels."""
        key = int(at / self.resolution) + 1 if at > 0 else 0
        old = item.timer_key
        if old == key:
            return
        if old:
            bucket = self._buckets.get(old)
            if bucket is not None:
                bucket.discard(item)
        item.timer_key = key
        if key:
            # A deadline already past fires on the next tick.
            key = max(key, self._last + 1)
            item.timer_key = key
            self._buckets.setdefault(key, set()).add(item)

    def cancel(self, item: Timed) -> None:
        self.schedule(item, 0)

    def _tick(self) -> None:
        now = self._clock()
        current = int(now / self.resolution)
        try:
            for key in range(self._last + 1, current + 1):
                # Advance first: an item rescheduled while we drain lands in a later bucket.
                self._last = key
                bucket = self._buckets.pop(key, None)
                if not bucket:
                    continue
                for item in bucket:
                    item.timer_key = 0
                    item.on_timer(now)
        finally:
            self._handle = asyncio.get_running_loop().call_later(self.resolution, self._tick)
