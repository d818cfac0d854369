"""The writer's one-query tops-and-commit, ids, and the callback (no Future) publish path."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from storage.publications import PublicationIds, PublicationStore
from storage.types import StoredPublication
from storage.writer import _TOPS_TAG


async def test_channel_names_that_need_quoting_keep_their_tops(pool: asyncpg.Pool) -> None:
    # Quotes, backslashes, a dollar quote and the writer's own quote tag (which sends the
    # tops as a parameter instead of inline).
    channels = ["plain", "o'brien", 'back\\slash"quote', "dollar$$x", f"tag{_TOPS_TAG}inside"]
    store = PublicationStore(pool, flush_interval=0.01)
    try:
        await asyncio.gather(*(store.publish(ch, b'{"n": %d}' % i)
                               for i in range(3) for ch in channels))
        tops = dict(await pool.fetch("SELECT channel, top FROM channel_streams"))
        assert tops == dict.fromkeys(channels, 3)
        for ch in channels:
            offsets = await pool.fetch(
                'SELECT "offset" FROM publications WHERE channel = $1 ORDER BY "offset"', ch)
            assert [r["offset"] for r in offsets] == [1, 2, 3]
    finally:
        await store.close()


async def test_publish_nowait_reports_after_commit_in_order(pool: asyncpg.Pool) -> None:
    fanned_out: list[int] = []
    store = PublicationStore(pool, on_committed=lambda pubs: fanned_out.extend(p.offset for p in pubs))
    try:
        # Not loaded yet: the caller must use publish() (which loads the stream) first.
        assert not store.publish_nowait("c", b"{}", on_done=lambda pub, exc: None)
        await store.publish("c", b'{"first": true}')
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        outcomes: list[tuple[int, list[int]]] = []

        def on_done(pub: StoredPublication | None, exc: BaseException | None) -> None:
            assert pub is not None and exc is None
            # Fan-out of the whole batch happened before any publisher is told.
            outcomes.append((pub.offset, list(fanned_out)))
            if len(outcomes) == 5:
                done.set_result(None)

        for i in range(5):
            assert store.publish_nowait("c", b'{"i": %d}' % i, on_done=on_done)
        await asyncio.wait_for(done, 10)
        assert [o for o, _ in outcomes] == [2, 3, 4, 5, 6]
        assert all(seen[-1] >= offset for offset, seen in outcomes)
        stored = await pool.fetch('SELECT "offset" FROM publications WHERE channel = $1', "c")
        assert sorted(r["offset"] for r in stored) == [1, 2, 3, 4, 5, 6]
    finally:
        await store.close()


def test_publication_ids_are_unique_uuid7_and_increasing() -> None:
    a, b = PublicationIds(), PublicationIds()
    ids = [a.new() for _ in range(1000)]
    assert all(isinstance(i, uuid.UUID) and i.version == 7 and i.variant == uuid.RFC_4122
               for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert not set(ids) & {b.new() for _ in range(1000)}


async def test_publishers_of_large_batches_are_told_in_commit_order(pool: asyncpg.Pool) -> None:
    # More rows than RESOLVE_CHUNK per batch, several batches: the writer tells them a
    # chunk per loop turn while it writes the next batch, still in offset order, each
    # after its batch was fanned out.
    from storage.writer import RESOLVE_CHUNK

    total = RESOLVE_CHUNK * 6 + 5
    fanned_out: set[int] = set()
    store = PublicationStore(pool, max_batch=RESOLVE_CHUNK * 2 + 3,
                             on_committed=lambda pubs: fanned_out.update(p.offset for p in pubs))
    try:
        await store.publish("big", b"{}")
        told: list[int] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_done(pub: StoredPublication | None, exc: BaseException | None) -> None:
            assert pub is not None and exc is None and pub.offset in fanned_out
            told.append(pub.offset)
            if len(told) == total:
                done.set_result(None)

        for i in range(total):
            assert store.publish_nowait("big", b'{"i": %d}' % i, on_done=on_done)
        await asyncio.wait_for(done, 20)
        assert told == list(range(2, total + 2))
        assert store.stats.batches >= 4
    finally:
        await store.close()
