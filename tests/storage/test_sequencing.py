"""Several processes writing one durable channel: offsets come from the commit transaction.

Two PublicationStore instances with their own pools stand for two gateway processes.
"""

from __future__ import annotations

import asyncio

import asyncpg

from storage.publications import PublicationStore
from storage.types import StoredPublication


async def test_two_writers_share_one_contiguous_sequence(pool: asyncpg.Pool, empty_dsn: str) -> None:
    other_pool = await asyncpg.create_pool(empty_dsn, min_size=1, max_size=3)
    seen: dict[str, list[StoredPublication]] = {"a": [], "b": []}
    a = PublicationStore(pool, sequence_in_db=True, on_committed=seen["a"].extend)
    b = PublicationStore(other_pool, sequence_in_db=True, on_committed=seen["b"].extend)
    try:
        async def burst(store: PublicationStore, tag: str) -> list[StoredPublication]:
            return list(await asyncio.gather(*(
                store.publish("hot", f'{{"w":"{tag}","i":{i}}}'.encode()) for i in range(300))))

        results = await asyncio.gather(burst(a, "a"), burst(b, "b"))
        offsets = sorted(p.offset for batch in results for p in batch)
        assert offsets == list(range(1, 601))
        assert len({p.epoch for batch in results for p in batch}) == 1
        # Each writer saw its own commits in increasing offset order.
        for name in "ab":
            own = [p.offset for p in seen[name]]
            assert own == sorted(own)
        rows = await pool.fetch('SELECT "offset" FROM publications WHERE channel = $1 ORDER BY 1', "hot")
        assert [r["offset"] for r in rows] == list(range(1, 601))
        epoch, top = await a.position("hot")
        assert top == 600 and (epoch, top) == await b.position("hot")
    finally:
        await a.close()
        await b.close()
        await other_pool.close()


async def test_sequenced_store_continues_after_restart(pool: asyncpg.Pool) -> None:
    first = PublicationStore(pool, sequence_in_db=True)
    one = await first.publish("c", b'{"n":1}')
    await first.close()
    second = PublicationStore(pool, sequence_in_db=True)
    try:
        two = await second.publish("c", b'{"n":2}')
        assert (two.offset, two.epoch) == (one.offset + 1, one.epoch)
        history = await second.history("c", since_offset=0, limit=-1)
        assert [p.offset for p in history] == [1, 2]
    finally:
        await second.close()
