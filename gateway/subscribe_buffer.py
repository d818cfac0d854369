"""The subscribe-time cut-off rule, without I/O.

While a subscribe is in flight (broker subscription, history read), publications of its
channel keep arriving. Written at once they would reach the client before the subscribe
reply; dropped they would be lost. So they are held, and once the reply is written, only
those the reply did not already cover (offset above the cut-off: the stream top or the last
recovered offset) go out; pushes without a stream position (offset 0: join/leave, history
off) are always new to the client.
"""

from __future__ import annotations

from collections.abc import Container

__all__ = ["SubscribeBuffer"]


class SubscribeBuffer:
    """One connection's held pushes of the channels being subscribed, and their cut-offs."""

    __slots__ = ("_cutoffs", "_held")

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[int, bytes]]] = {}
        # Kept across rounds: a cut-off set after a round ended waits for the next one.
        self._cutoffs: dict[str, int] = {}

    def start(self, channel: str) -> None:
        """Hold ``channel``'s pushes from now until :meth:`release` (a fresh, empty list)."""
        self._held[channel] = []

    def hold(self, channel: str, offset: int, frame: bytes) -> bool:
        """Keep ``frame`` (a push at stream ``offset``) if ``channel`` is being subscribed;
        False: it is not, write the frame now."""
        held = self._held.get(channel)
        if held is None:
            return False
        held.append((offset, frame))
        return True

    def set_cutoff(self, channel: str, offset: int) -> None:
        """The subscribe reply covers ``channel``'s stream up to ``offset``."""
        self._cutoffs[channel] = offset

    @property
    def idle(self) -> bool:
        """Nothing held and no cut-off waiting: the object can be dropped."""
        return not self._held and not self._cutoffs

    def release(self, subscribed: Container[str]) -> list[bytes]:
        """End the round (after the reply was written): the held frames to write now, in
        order — those above their channel's cut-off, of the channels in ``subscribed``; the
        pushes of a subscribe that failed are dropped."""
        held = self._held
        self._held = {}
        out: list[bytes] = []
        cutoffs = self._cutoffs
        for channel, frames in held.items():
            cutoff = cutoffs.pop(channel, 0)
            if channel not in subscribed:
                continue
            for offset, frame in frames:
                if offset == 0 or offset > cutoff:
                    out.append(frame)
        return out
