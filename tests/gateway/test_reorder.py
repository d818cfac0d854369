"""The per-channel ordering of durable publications heard from other processes
(gateway/reorder.py), driven by pushing publications as the broker would."""

from __future__ import annotations

import asyncio

from centrifugo_bridge.protocol import Publication, Raw
from gateway import reorder
from gateway.reorder import Reorder


def pub(offset: int) -> Publication:
    return Publication(data=Raw(b"{}"), offset=offset)


class Recorder:
    """The node's side: what was delivered, what history holds, which channels were lost."""

    def __init__(self, history: dict[int, Publication] | None = None, fail: bool = False) -> None:
        self.delivered: list[int] = []
        self.lost: list[str] = []
        self.history = history or {}
        self.fail = fail
        self.reorder = Reorder(self.deliver, self.fetch, self.lost.append)

    def deliver(self, channel: str, p: Publication) -> None:
        self.delivered.append(p.offset)

    async def fetch(self, channel: str, after: int, up_to: int) -> list[Publication]:
        if self.fail:
            raise OSError("database unreachable")
        return [self.history[o] for o in range(after + 1, up_to + 1) if o in self.history]


async def settle() -> None:
    await asyncio.sleep(reorder.GAP_WAIT * 3)


async def test_in_order_and_duplicates_dropped() -> None:
    r = Recorder()
    r.reorder.seed("c", 3)
    for o in (2, 3, 4, 4, 5):
        r.reorder.push("c", pub(o))
    assert r.delivered == [4, 5]


async def test_early_publication_waits_for_the_racing_one() -> None:
    r = Recorder()
    r.reorder.seed("c", 0)
    r.reorder.push("c", pub(2))
    assert r.delivered == []
    r.reorder.push("c", pub(1))
    assert r.delivered == [1, 2]


async def test_gap_is_filled_from_history() -> None:
    r = Recorder(history={2: pub(2), 3: pub(3)})
    r.reorder.seed("c", 1)
    r.reorder.push("c", pub(4))
    await settle()
    assert r.delivered == [2, 3, 4]
    assert r.lost == []


async def test_gap_history_cannot_fill_tells_subscribers_instead_of_skipping() -> None:
    r = Recorder(history={3: pub(3)})  # offset 2 is gone (history removed)
    r.reorder.seed("c", 1)
    r.reorder.push("c", pub(4))
    await settle()
    assert r.delivered == []  # nothing delivered past the hole
    assert r.lost == ["c"]
    # Whoever subscribes again is seeded afresh.
    r.reorder.seed("c", 4)
    r.reorder.push("c", pub(5))
    assert r.delivered == [5]


async def test_unreadable_history_is_a_lost_gap_after_retries() -> None:
    r = Recorder(fail=True)
    r.reorder.seed("c", 1)
    r.reorder.push("c", pub(3))
    await settle()
    assert r.lost == [], "one failed read does not send every subscriber back at once"
    await asyncio.sleep(reorder.GAP_WAIT * (2 ** (reorder.FILL_RETRIES + 1)) + 0.2)
    assert r.delivered == [] and r.lost == ["c"]


async def test_a_read_that_fails_once_is_retried() -> None:
    r = Recorder(history={2: pub(2)}, fail=True)
    r.reorder.seed("c", 1)
    r.reorder.push("c", pub(3))
    await settle()
    r.fail = False  # the database is back
    await asyncio.sleep(reorder.GAP_WAIT * 4 + 0.1)
    assert r.delivered == [2, 3] and r.lost == []
