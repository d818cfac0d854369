"""Group commit under load and under failure: nothing acknowledged is lost or duplicated,
offsets per channel are 1..N in commit and delivery order, and delivery follows commit."""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from collections.abc import Callable

import asyncpg
import pytest

from storage.publications import PublicationStore
from storage.types import StoredPublication, StoreError, StoreOverloaded
from storage.writer import Item
from tests.storage.sync_reader import SyncReader


class Deliveries:
    """An on_committed hook recording what was fanned out, optionally checking each batch."""

    def __init__(self, check: Callable[[list[StoredPublication]], None] | None = None) -> None:
        self.batches: list[list[StoredPublication]] = []
        self._check = check

    def __call__(self, batch: list[StoredPublication]) -> None:
        if self._check is not None:
            self._check(batch)
        self.batches.append(list(batch))

    def by_channel(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = collections.defaultdict(list)
        for batch in self.batches:
            for pub in batch:
                out[pub.channel].append(pub.offset)
        return out


async def _stored(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch('SELECT channel, "offset", id, epoch FROM publications')


def _assert_consistent(acked: list[StoredPublication], rows: list[asyncpg.Record],
                       deliveries: Deliveries) -> None:
    """Every acknowledged publication stored exactly once, offsets 1..N per channel with no
    gap or duplicate, and delivered in that order."""
    stored_ids = collections.Counter(r["id"] for r in rows)
    assert all(count == 1 for count in stored_ids.values()), "a row was stored twice"
    assert {p.id for p in acked} <= set(stored_ids), "an acknowledged row is missing"
    offsets: dict[str, list[int]] = collections.defaultdict(list)
    for row in rows:
        offsets[row["channel"]].append(row["offset"])
    for channel, found in offsets.items():
        assert sorted(found) == list(range(1, len(found) + 1)), channel
    delivered = deliveries.by_channel()
    for channel, found in offsets.items():
        assert delivered[channel] == sorted(found), f"delivery order of {channel}"


async def test_many_concurrent_publishers(pool: asyncpg.Pool, empty_dsn: str) -> None:
    reader = SyncReader(empty_dsn)
    visible_checks = 0

    def visible_from_another_connection(batch: list[StoredPublication]) -> None:
        # Called synchronously after COMMIT and before any publisher hears back: the rows
        # must already be visible to everyone else.
        nonlocal visible_checks
        ids = [p.id for p in batch]
        assert reader.fetchval("SELECT count(*) FROM publications WHERE id = ANY($1::uuid[])",
                               ids) == len(ids)
        assert not acked_ids & set(ids), "acknowledged before delivery"
        visible_checks += 1

    acked_ids: set[uuid.UUID] = set()
    deliveries = Deliveries(visible_from_another_connection)
    store = PublicationStore(pool, on_committed=deliveries)
    acked: list[StoredPublication] = []

    async def publisher(n: int) -> None:
        for i in range(200):
            pub = await store.publish(f"chan{(n + i) % 7}", b'{"n":%d,"i":%d}' % (n, i),
                                      info=b'{"user":"u%d","client":"c"}' % n)
            acked.append(pub)
            acked_ids.add(pub.id)

    try:
        await asyncio.gather(*(publisher(n) for n in range(50)))
    finally:
        await store.close()
        reader.close()
    assert len(acked) == 10_000
    rows = await _stored(pool)
    assert len(rows) == 10_000
    _assert_consistent(acked, rows, deliveries)
    assert visible_checks == store.stats.batches
    # Group commit happened: many rows per transaction.
    assert store.stats.rows == 10_000
    assert store.stats.max_rows > 1
    assert store.stats.avg_rows > 5
    # channel_streams.top follows the committed rows.
    tops = dict(await pool.fetch("SELECT channel, top FROM channel_streams"))
    assert tops == {c: len(o) for c, o in deliveries.by_channel().items()}


async def test_concurrent_first_use_of_a_channel(pool: asyncpg.Pool) -> None:
    """Many publishers racing on a channel nobody used yet share one epoch and sequence."""
    store = PublicationStore(pool)
    try:
        pubs = await asyncio.gather(*(store.publish("fresh", b"%d" % i) for i in range(300)))
    finally:
        await store.close()
    assert sorted(p.offset for p in pubs) == list(range(1, 301))
    assert len({p.epoch for p in pubs}) == 1


async def test_full_queue_is_a_clear_temporary_error(pool: asyncpg.Pool, empty_dsn: str) -> None:
    deliveries = Deliveries()
    store = PublicationStore(pool, queue_limit=10, on_committed=deliveries)
    await store.position("q")  # loaded: publish below queues without awaiting the database
    # A slow database: the stream row is locked, so the writer's first batch waits.
    blocker = await asyncpg.connect(empty_dsn)
    lock = blocker.transaction()
    await lock.start()
    await blocker.execute("SELECT * FROM channel_streams WHERE channel = 'q' FOR UPDATE")
    try:
        first = asyncio.ensure_future(store.publish("q", b"0"))
        for _ in range(500):  # until the writer took it into its (blocked) transaction
            await asyncio.sleep(0.01)
            if not store.queued:
                break
        tasks = [asyncio.ensure_future(store.publish("q", b"%d" % i)) for i in range(1, 11)]
        await asyncio.sleep(0)
        assert store.queued == 10
        with pytest.raises(StoreOverloaded, match="retry later"):
            await store.publish("q", b"too many")
        assert not first.done()  # nothing acknowledged while the database is stuck
    finally:
        await lock.rollback()
        await blocker.close()
        await store.close(drain_seconds=10)
    pubs = await asyncio.gather(first, *tasks)
    assert [p.offset for p in pubs] == list(range(1, 12))
    assert await store.count_rows("q") == 11
    # The refused one consumed no offset.
    assert deliveries.by_channel()["q"] == list(range(1, 12))
    assert (await store.position("q"))[1] == 11


async def test_writer_backend_killed_mid_stream(pool: asyncpg.Pool, empty_dsn: str) -> None:
    deliveries = Deliveries()
    store = PublicationStore(pool, on_committed=deliveries)
    acked: list[StoredPublication] = []
    stop = asyncio.Event()
    kills = 0

    async def publisher(n: int) -> None:
        i = 0
        while not stop.is_set():
            acked.append(await store.publish(f"k{n % 5}", b'{"i":%d}' % i))
            i += 1

    async def killer() -> None:
        nonlocal kills
        admin = await asyncpg.connect(empty_dsn)
        try:
            for _ in range(6):
                await asyncio.sleep(0.15)
                pid = store.writer_backend_pid
                if pid is not None and await admin.fetchval("SELECT pg_terminate_backend($1)", pid):
                    kills += 1
        finally:
            await admin.close()
            stop.set()

    try:
        await asyncio.gather(killer(), *(publisher(n) for n in range(20)))
    finally:
        await store.close(drain_seconds=10)
    assert kills >= 3
    assert store.stats.retries >= 1
    rows = await _stored(pool)
    assert len(rows) == len(acked) > 100
    _assert_consistent(acked, rows, deliveries)


async def test_transient_errors_are_retried(pool: asyncpg.Pool) -> None:
    # The first three transactions fail with a serialization failure (sequences are not
    # transactional, so the counter survives the rollbacks).
    await pool.execute("""
        CREATE SEQUENCE failures;
        CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('failures') <= 3 THEN
                RAISE EXCEPTION 'simulated' USING ERRCODE = '40001';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER flaky BEFORE INSERT ON channel_streams
            FOR EACH ROW EXECUTE FUNCTION flaky();
    """)
    await pool.execute("SELECT setval('failures', 1000)")
    store = PublicationStore(pool)
    try:
        await store.position("t")  # create the stream before the trigger fires
        await pool.execute("SELECT setval('failures', 1, false)")
        pubs = await asyncio.gather(*(store.publish("t", b"%d" % i) for i in range(20)))
    finally:
        await store.close()
    assert store.stats.retries == 3
    assert sorted(p.offset for p in pubs) == list(range(1, 21))
    assert await store.count_rows("t") == 20


async def test_permanent_error_fails_only_its_row(pool: asyncpg.Pool) -> None:
    await pool.execute("""
        CREATE FUNCTION picky() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.channel = 'poison' THEN
                RAISE EXCEPTION 'refused' USING ERRCODE = '23514';
            END IF;
            IF NEW.channel = 'nojsonb' AND NEW.data IS NOT NULL THEN
                RAISE EXCEPTION 'refused jsonb' USING ERRCODE = '22P02';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER picky BEFORE INSERT ON publications
            FOR EACH ROW EXECUTE FUNCTION picky();
    """)
    deliveries = Deliveries()
    store = PublicationStore(pool, on_committed=deliveries, flush_interval=0.05)
    for channel in ("ok", "poison", "nojsonb"):
        await store.position(channel)
    try:
        results = await asyncio.gather(
            store.publish("ok", b"1"), store.publish("poison", b"{}"),
            store.publish("nojsonb", b'{"a":1}'), store.publish("ok", b"2"),
            return_exceptions=True)
    finally:
        await store.close()
    ok1, poison, nojsonb, ok2 = results
    assert isinstance(poison, StoreError) and "refused" in str(poison)
    # A payload jsonb refuses is stored as bytes instead of failing.
    assert isinstance(nojsonb, StoredPublication)
    assert await pool.fetchval(
        "SELECT data_raw FROM publications WHERE channel = 'nojsonb'") == b'{"a":1}'
    assert [p.offset for p in (ok1, ok2)] == [1, 2]  # type: ignore[union-attr]
    assert store.stats.failed_rows == 1
    assert "poison" not in deliveries.by_channel()


async def test_missing_partition_is_created(empty_pool: asyncpg.Pool) -> None:
    from storage.migrate import migrate

    await migrate(empty_pool)  # no partitions at all
    store = PublicationStore(empty_pool)
    try:
        pubs = await asyncio.gather(*(store.publish("p", b"%d" % i) for i in range(5)))
    finally:
        await store.close()
    assert sorted(p.offset for p in pubs) == [1, 2, 3, 4, 5]
    assert await empty_pool.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'publications'::regclass") >= 1


async def test_in_doubt_retry_does_not_duplicate(pool: asyncpg.Pool) -> None:
    """A batch whose COMMIT succeeded although the client saw an error is recognised on
    the retry instead of being written twice."""
    store = PublicationStore(pool)
    try:
        pub = await store.publish("doubt", b"{}")
        # Replay the committed row the way a retry after a lost COMMIT reply would.
        writer = store._writer
        record = (pub.channel, pub.offset, pub.epoch, pub.id, "{}", None, None, None,
                  pub.created_at)
        item = Item(pub, record, asyncio.get_running_loop().create_future())
        async with pool.acquire() as conn:
            await writer._write_once(conn, [item], True)
        assert await store.count_rows("doubt") == 1
        # Without the in-doubt flag the same replay would have duplicated it.
        async with pool.acquire() as conn:
            await writer._write_once(conn, [item], False)
        assert await store.count_rows("doubt") == 2
    finally:
        await store.close()


async def test_close_drains_and_a_failing_hook_does_not_unacknowledge(pool: asyncpg.Pool) -> None:
    def broken(batch: list[StoredPublication]) -> None:
        raise RuntimeError("subscriber bug")

    store = PublicationStore(pool, on_committed=broken, flush_interval=0.2)
    await store.position("d")  # loaded: every publish below is queued in its first step
    tasks = [asyncio.ensure_future(store.publish("d", b"%d" % i)) for i in range(100)]
    await asyncio.sleep(0)
    await store.close()
    assert all(t.done() for t in tasks)
    assert sorted(t.result().offset for t in tasks) == list(range(1, 101))


async def test_close_gives_up_when_the_database_is_gone(pool: asyncpg.Pool) -> None:
    """While the database keeps failing, close(drain_seconds) fails what is still queued
    instead of hanging: those publishers never got an acknowledgement."""
    store = PublicationStore(pool)
    await store.publish("gone", b"1")
    # Every insert now fails with "lock not available": transient, so retried forever.
    await pool.execute("""
        CREATE FUNCTION busy() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'busy' USING ERRCODE = '55P03'; END $$;
        CREATE TRIGGER busy BEFORE INSERT ON publications FOR EACH ROW EXECUTE FUNCTION busy();
    """)
    pending = asyncio.ensure_future(store.publish("gone", b"2"))
    await asyncio.sleep(0.2)
    assert not pending.done()
    await store.close(drain_seconds=0.2)
    with pytest.raises(StoreError):
        await pending
    assert await store.count_rows("gone") == 1


_VARIED = [  # (channel suffix, data, info, tags, stored as jsonb?)
    ("a", b'{"text":"hi","n":[1,2.5,null,true]}', None, None, True),
    ("a", b"null", b'{"user":"u","client":"c"}', {"k": "v"}, True),
    ("a", b'"\\u00e9 \xf0\x9f\x98\x80"', None, {"quote": "it's", "pct": "100%s"}, True),
    ("a", b"\x00\x01\xff raw", None, None, False),
    ("a", b'{"nul":"a\\u0000b"}', None, None, False),  # valid JSON that jsonb refuses
    ("b", b'{"s":"$sentchat_tops$ inside"}', None, None, True),
]
_TAGGED = ("$sentchat_tops$", b"{}", None, None, True)
"""A channel name holding the tops' quote tag: its batch sends the tops as a parameter."""


@pytest.mark.parametrize("method", ["copy", "insert"])
async def test_write_methods_store_the_same_rows(pool: asyncpg.Pool, method: str) -> None:
    """Whatever the transport (COPY or unnest INSERT; the tops inlined in the COMMIT query
    or, for a channel name holding the quote tag, as a parameter), every column comes back
    as given and every channel's top is its last offset."""
    store = PublicationStore(pool, method=method, flush_interval=0.05)  # type: ignore[arg-type]
    try:
        for suffix, *_ in (*_VARIED, _TAGGED):
            await store.position(f"{method}:{suffix}")
        # One batch with the tops inlined, then one on its own with the tagged channel.
        pubs = await asyncio.gather(*(
            store.publish(f"{method}:{suffix}", data, info=info, tags=tags)
            for suffix, data, info, tags, _ in _VARIED))
        pubs.append(await store.publish(f"{method}:{_TAGGED[0]}", _TAGGED[1]))
    finally:
        await store.close()
    rows = {r["id"]: r for r in await pool.fetch(
        'SELECT channel, "offset", epoch, id, data, data_raw, info, tags, created_at '
        "FROM publications")}
    assert len(rows) == len(_VARIED) + 1
    for pub, (_, data, info, tags, as_jsonb) in zip(pubs, (*_VARIED, _TAGGED), strict=True):
        row = rows[pub.id]
        assert (row["channel"], row["offset"], row["epoch"], row["created_at"]) == (
            pub.channel, pub.offset, pub.epoch, pub.created_at)
        if as_jsonb:
            assert row["data_raw"] is None and json.loads(row["data"]) == json.loads(data)
        else:
            assert row["data"] is None and row["data_raw"] == data
        assert (json.loads(row["info"]) if row["info"] else None) == (
            json.loads(info) if info else None)
        assert (json.loads(row["tags"]) if row["tags"] else None) == tags
    # JSON null is a payload, not "no data".
    assert await pool.fetchval(
        "SELECT count(*) FROM publications WHERE data = 'null'::jsonb") == 1
    tops = {r["channel"]: r["top"] for r in await pool.fetch("SELECT channel, top FROM channel_streams")}
    assert tops == {f"{method}:a": 5, f"{method}:b": 1, f"{method}:{_TAGGED[0]}": 1}
