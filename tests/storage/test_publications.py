"""The store API: offsets and epochs, payload kinds, history reads, idempotency."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from storage.publications import PublicationStore, jsonb_text
from storage.types import StoreClosed, StoredPublication


@pytest.fixture
async def store(pool: asyncpg.Pool) -> AsyncIterator[PublicationStore]:
    store = PublicationStore(pool)
    try:
        yield store
    finally:
        await store.close()


async def test_publish_returns_the_committed_publication(store: PublicationStore) -> None:
    info = b'{"user":"alice","client":"c1","conn_info":{"a":1},"chan_info":{"b":2}}'
    pub = await store.publish("chat:1", b'{"text":"hi"}', info=info, tags={"k": "v"})
    assert isinstance(pub, StoredPublication)
    assert (pub.channel, pub.offset, pub.data, pub.info, pub.tags) == (
        "chat:1", 1, b'{"text":"hi"}', info, {"k": "v"})
    assert isinstance(pub.id, uuid.UUID)
    assert pub.created_at.tzinfo is not None
    assert await store.position("chat:1") == (pub.epoch, 1)
    [stored] = await store.history("chat:1")
    assert (stored.offset, stored.epoch, stored.id, stored.tags) == (1, pub.epoch, pub.id, {"k": "v"})
    assert json.loads(stored.info or b"") == json.loads(info)
    assert abs(stored.created_at - pub.created_at) < timedelta(milliseconds=1)


async def test_position_creates_the_stream(store: PublicationStore, pool: asyncpg.Pool) -> None:
    epoch, top = await store.position("new")
    assert top == 0 and len(epoch) == 8
    assert await pool.fetchval("SELECT epoch FROM channel_streams WHERE channel = 'new'") == epoch
    # Reading it again (another store, as after a restart) gives the same epoch.
    assert await PublicationStore(pool).position("new") == (epoch, 0)


async def test_epoch_stable_and_offsets_continue_after_restart(pool: asyncpg.Pool) -> None:
    first = PublicationStore(pool)
    pubs = [await first.publish("room", b"%d" % i) for i in range(5)]
    await first.close()
    with pytest.raises(StoreClosed):
        await first.publish("room", b"late")
    second = PublicationStore(pool)  # a restarted node
    try:
        assert await second.position("room") == (pubs[0].epoch, 5)
        nxt = await second.publish("room", b"6")
        assert (nxt.epoch, nxt.offset) == (pubs[0].epoch, 6)
        assert [p.offset for p in await second.history("room")] == [1, 2, 3, 4, 5, 6]
    finally:
        await second.close()


async def test_channels_have_their_own_streams(store: PublicationStore) -> None:
    a1 = await store.publish("a", b"1")
    b1 = await store.publish("b", b"1")
    a2 = await store.publish("a", b"2")
    assert (a1.offset, b1.offset, a2.offset) == (1, 1, 2)
    assert a1.epoch != b1.epoch


@pytest.mark.parametrize("payload", [
    b'{"text": "hello", "n": [1, 2.5, null, true], "nested": {"x": "\\u00e9\\ud83d\\ude00"}}',
    b'"just a string"',
    b"42",
    b"[]",
])
async def test_json_payloads_are_stored_as_jsonb(store: PublicationStore, pool: asyncpg.Pool,
                                                 payload: bytes) -> None:
    pub = await store.publish("json", payload)
    [stored] = await store.history("json")
    assert json.loads(stored.data) == json.loads(pub.data)
    kind = await pool.fetchval(
        "SELECT jsonb_typeof(data) FROM publications WHERE id = $1", pub.id)
    assert kind is not None


@pytest.mark.parametrize("payload", [
    b"",
    b"\x00\x01\xff binary",
    b"not json",
    b'{"nul": "a\\u0000b"}',  # valid JSON that jsonb refuses
    b"1e400",  # out of double range
    b"[" * 2000 + b"]" * 2000,  # deeper than we parse
    "é".encode("latin-1"),  # not UTF-8
])
async def test_other_payloads_round_trip_exactly(store: PublicationStore, pool: asyncpg.Pool,
                                                 payload: bytes) -> None:
    pub = await store.publish("raw", payload)
    [stored] = await store.history("raw")
    assert stored.data == payload == pub.data
    assert await pool.fetchval("SELECT data IS NULL FROM publications WHERE id = $1", pub.id)


def test_jsonb_text() -> None:
    assert jsonb_text(b'{"a":1}') == '{"a":1}'
    assert jsonb_text(b'"\\u0000"') is None
    assert jsonb_text(b"{") is None


async def test_invalid_input_is_refused(store: PublicationStore) -> None:
    with pytest.raises(ValueError, match="NUL"):
        await store.publish("bad\x00channel", b"{}")
    with pytest.raises(ValueError, match="info"):
        await store.publish("c", b"{}", info=b"not json")
    with pytest.raises(ValueError, match="NUL"):
        await store.publish("c", b"{}", tags={"k": "a\x00"})
    with pytest.raises(ValueError, match="both"):
        await store.publish("c", b"{}", offset=3)
    # Nothing was allocated by the refusals.
    assert (await store.publish("c", b"{}")).offset == 1


async def test_history_since_limit_reverse(store: PublicationStore) -> None:
    for i in range(1, 11):
        await store.publish("h", b"%d" % i)

    async def offsets(**kwargs: object) -> list[int]:
        return [p.offset for p in await store.history("h", **kwargs)]  # type: ignore[arg-type]

    assert await offsets() == list(range(1, 11))
    assert await offsets(limit=3) == [1, 2, 3]
    assert await offsets(limit=0) == []
    assert await offsets(since_offset=7) == [8, 9, 10]  # exclusive
    assert await offsets(since_offset=4, limit=2) == [5, 6]
    assert await offsets(since_offset=10) == []
    assert await offsets(reverse=True, limit=3) == [10, 9, 8]  # latest N
    assert await offsets(reverse=True) == list(range(10, 0, -1))
    assert await offsets(reverse=True, since_offset=4) == [3, 2, 1]
    assert await offsets(limit=-1, max_items=4) == [1, 2, 3, 4]
    assert await offsets(limit=100, max_items=2) == [1, 2]
    assert await offsets(max_age=60) == list(range(1, 11))
    assert await store.history("unknown") == []


async def test_history_max_age(store: PublicationStore, pool: asyncpg.Pool) -> None:
    for i in range(4):
        await store.publish("aged", b"%d" % i)
    # Age the first two (still inside yesterday's partition, which the fixture created).
    await pool.execute(
        "UPDATE publications SET created_at = now() - interval '1 hour' "
        "WHERE channel = 'aged' AND \"offset\" <= 2")
    assert [p.offset for p in await store.history("aged", max_age=600)] == [3, 4]
    assert [p.offset for p in await store.history("aged", max_age=7200)] == [1, 2, 3, 4]


async def test_remove_history_keeps_the_position(store: PublicationStore) -> None:
    for i in range(3):
        await store.publish("gone", b"%d" % i)
    epoch, _ = await store.position("gone")
    await store.remove_history("gone")
    assert await store.count_rows("gone") == 0
    assert await store.history("gone") == []
    assert await store.position("gone") == (epoch, 3)
    assert (await store.publish("gone", b"x")).offset == 4


async def test_idempotency_key(store: PublicationStore) -> None:
    first = await store.publish("idem", b"1", idempotency_key="k1")
    again = await store.publish("idem", b"other payload", idempotency_key="k1")
    assert again == first
    other_channel = await store.publish("idem2", b"1", idempotency_key="k1")
    assert other_channel.channel == "idem2"
    # Concurrent repeats while the first is still in flight: one row.
    results = await asyncio.gather(
        *(store.publish("idem", b"2", idempotency_key="k2") for _ in range(10)))
    assert len({(p.offset, p.id) for p in results}) == 1
    assert await store.count_rows("idem") == 2
    assert (await store.publish("idem", b"3")).offset == 3


async def test_idempotency_window_expires(pool: asyncpg.Pool) -> None:
    store = PublicationStore(pool, idempotency_window=0.05)
    try:
        first = await store.publish("w", b"1", idempotency_key="k")
        await asyncio.sleep(0.1)
        second = await store.publish("w", b"1", idempotency_key="k")
        assert second.offset == first.offset + 1
    finally:
        await store.close()


async def test_failed_publish_does_not_hold_its_key(store: PublicationStore) -> None:
    with pytest.raises(ValueError):
        await store.publish("f", b"{}", info=b"bad", idempotency_key="k")
    assert (await store.publish("f", b"{}", idempotency_key="k")).offset == 1


async def test_caller_sequenced_publications(store: PublicationStore, pool: asyncpg.Pool) -> None:
    """A caller that sequenced the stream itself (e.g. a broker) passes offset and epoch."""
    for offset in (1, 2, 3):
        pub = await store.publish("seq", b"{}", offset=offset, epoch="ext")
        assert (pub.offset, pub.epoch) == (offset, "ext")
    assert await pool.fetchval("SELECT top FROM channel_streams WHERE channel = 'seq'") == 3
    assert [p.offset for p in await store.history("seq")] == [1, 2, 3]


async def test_stored_publication_encodes(store: PublicationStore) -> None:
    pub = await store.publish("enc", b"{}")
    decoded = msgspec.json.decode(msgspec.json.encode(pub), type=StoredPublication)
    assert decoded.id == pub.id and decoded.created_at == pub.created_at.astimezone(UTC)
    assert isinstance(decoded.created_at, datetime)
