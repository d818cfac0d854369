"""RedisBroker against real Valkey servers (two shards), several brokers acting as nodes.

Each test uses its own key prefix, so tests share the session's servers without seeing each
other's keys. The failure test kills and restarts shard 1; it runs last in this module.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from centrifugo_bridge.codes import ClientError
from centrifugo_bridge.protocol import ClientInfo, Publication, Raw, StreamPosition
from gateway.broker import redis as redis_broker
from gateway.broker.memory import MemoryBroker
from gateway.broker.redis import BrokerUnavailable, RedisBroker
from gateway.broker.sharding import jump_hash, shard_index
from gateway.config import ConfigError, build_settings
from tests.redis_servers import RedisServer, external_urls

HISTORY_TTL = 300.0


class Recorder:
    """A Deliveries that remembers everything, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self.control: list[bytes] = []
        self.resets: list[list[str]] = []

    def deliver_publication(self, channel: str, pub: Publication) -> None:
        self.events.append(("pub", channel, pub))

    def deliver_join(self, channel: str, info: ClientInfo) -> None:
        self.events.append(("join", channel, info))

    def deliver_leave(self, channel: str, info: ClientInfo) -> None:
        self.events.append(("leave", channel, info))

    def deliver_control(self, data: bytes) -> None:
        self.control.append(data)

    def shard_reset(self, channels: list[str]) -> None:
        self.resets.append(list(channels))

    def pubs(self, channel: str) -> list[Publication]:
        return [e[2] for e in self.events if e[0] == "pub" and e[1] == channel]

    def offsets(self, channel: str) -> list[int]:
        return [p.offset for p in self.pubs(channel)]


async def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.005)


def channel_on(shard: int, n: int = 2, base: str = "ch") -> str:
    """A fresh channel name that lives on ``shard`` of ``n``."""
    while True:
        name = f"{base}:{uuid.uuid4().hex[:12]}"
        if shard_index(name, n) == shard:
            return name


def pub(text: str, user: str = "") -> Publication:
    info = ClientInfo(user=user, client=f"c-{user}", conn_info=Raw(b'{"n":1}')) if user else None
    return Publication(data=Raw(f'{{"t":"{text}"}}'.encode()), info=info, tags={"k": text})


def info(client: str, user: str) -> ClientInfo:
    return ClientInfo(user=user, client=client, conn_info=Raw(b'{"name":"%s"}' % user.encode()))


Factory = Callable[..., Awaitable[tuple[RedisBroker, Recorder]]]


@pytest.fixture
async def make_broker(redis_urls: list[str]) -> AsyncIterator[Factory]:
    """Start RedisBrokers ("nodes") on the session's shards; all closed after the test."""
    started: list[RedisBroker] = []

    async def factory(prefix: str, **kw: Any) -> tuple[RedisBroker, Recorder]:
        kw.setdefault("history_meta_ttl", 600)
        broker = RedisBroker(redis_urls, node_id=f"node-{len(started)}", prefix=prefix, **kw)
        recorder = Recorder()
        await broker.start(recorder)
        started.append(broker)
        return broker, recorder

    yield factory
    for broker in started:
        await broker.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# ---- sharding -------------------------------------------------------------------------------


def test_shard_index_is_stable_across_processes() -> None:
    names = [f"chat:room{i}" for i in range(300)]
    code = ("import sys; from gateway.broker.sharding import shard_index; "
            "print(','.join(str(shard_index(f'chat:room{i}', 7)) for i in range(300)))")
    # Another process with another hash seed must route every channel the same way.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True, cwd=os.getcwd()).stdout.strip()
    assert out == ",".join(str(shard_index(n, 7)) for n in names)
    assert shard_index("anything", 1) == 0


@pytest.mark.parametrize("n", [2, 3, 8])
def test_shard_index_spreads_evenly(n: int) -> None:
    counts = [0] * n
    total = 20_000
    for i in range(total):
        counts[shard_index(f"user:{i}", n)] += 1
    for c in counts:
        assert abs(c - total / n) < 0.1 * total / n, counts


def test_adding_a_shard_moves_few_channels() -> None:
    names = [f"c{i}" for i in range(10_000)]
    moved = [n for n in names if shard_index(n, 4) != shard_index(n, 5)]
    assert 0.15 < len(moved) / len(names) < 0.25
    assert all(shard_index(n, 5) == 4 for n in moved)  # only onto the new shard
    assert jump_hash(0, 1) == 0


# ---- wire formats ---------------------------------------------------------------------------


def test_resp_frames_survive_any_split() -> None:
    wire = (b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$6\r\nab\r\ncd\r\n"
            b"+OK\r\n-NOSCRIPT No matching script\r\n$-1\r\n*0\r\n"
            b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nd\r\n$0\r\n\r\n:-5\r\n")

    class Owner:
        name = "test"

        def __init__(self) -> None:
            self.frames: list[Any] = []

        def on_frames(self, proto: Any, frames: list[Any]) -> None:
            self.frames.extend(frames)

    for step in (1, 2, 3, 7, len(wire)):
        owner = Owner()
        proto = redis_broker._Proto(owner)  # type: ignore[arg-type]
        for i in range(0, len(wire), step):
            proto.data_received(wire[i:i + step])
        f = owner.frames
        assert f[0] == [b"subscribe", b"ch", 1]
        assert f[1] == [b"message", b"ch", b"ab\r\ncd"]
        assert f[2] == "OK" and str(f[3]).startswith("NOSCRIPT") and f[4] is None and f[5] == []
        assert f[6] == [[b"1-0", [b"d", b""]], -5]
        assert len(f) == 7


def test_payload_round_trip() -> None:
    bare = Publication(data=Raw(b"\x00\xffbinary"))
    full = Publication(data=Raw(b'{"a":1}'), info=info("c", "u"), tags={"x": "y"}, time=5,
                       key="k", version=3)
    for original in (bare, full):
        body = redis_broker.encode_body(original)
        assert redis_broker.decode_body(body, 0) == original
        message = b"p42:abcd:" + body
        decoded, epoch = redis_broker.decode_publication_message(message)
        assert epoch == "abcd" and decoded.offset == 42
        decoded.offset = 0
        assert decoded == original
    assert redis_broker.decode_info(redis_broker.encode_info(info("c1", "u1"))) == info("c1", "u1")
    assert redis_broker.redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redis_broker.redact("redis://user:pw@h:1") == "redis://user:***@h:1"


# ---- fan-out --------------------------------------------------------------------------------


async def test_publications_reach_every_node_in_order(make_broker: Factory, prefix: str) -> None:
    a, rec_a = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    channels = [channel_on(0), channel_on(1)]
    for ch in channels:
        await a.subscribe(ch)
        await b.subscribe(ch)
    positions: dict[str, list[StreamPosition]] = {ch: [] for ch in channels}
    for i in range(40):
        for ch in channels:
            node = a if i % 3 else b  # both nodes publish into the same streams
            positions[ch].append(await node.publish(ch, pub(f"m{i}", "u1"), 100, HISTORY_TTL))
    for ch in channels:
        assert [p.offset for p in positions[ch]] == list(range(1, 41))
        assert len({p.epoch for p in positions[ch]}) == 1
        for rec in (rec_a, rec_b):
            await eventually(lambda rec=rec, ch=ch: len(rec.pubs(ch)) == 40, what="40 pubs")
            assert rec.offsets(ch) == list(range(1, 41))
            got = rec.pubs(ch)
            assert [bytes(p.data) for p in got] == [f'{{"t":"m{i}"}}'.encode() for i in range(40)]
            assert got[0].info is not None and got[0].info.user == "u1"
            assert bytes(got[0].info.conn_info) == b'{"n":1}'
            assert got[0].tags == {"k": "m0"}


async def test_concurrent_publishes_keep_offset_order(make_broker: Factory, prefix: str) -> None:
    a, rec_a = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    ch = channel_on(0)
    await a.subscribe(ch)
    await b.subscribe(ch)
    await asyncio.gather(*(node.publish(ch, pub(str(i)), 1000, HISTORY_TTL)
                           for i in range(100) for node in (a, b)))
    for rec in (rec_a, rec_b):
        await eventually(lambda rec=rec: len(rec.pubs(ch)) == 200)
        assert rec.offsets(ch) == list(range(1, 201))
    # Both nodes saw the same publication at the same offset.
    assert [bytes(p.data) for p in rec_a.pubs(ch)] == [bytes(p.data) for p in rec_b.pubs(ch)]


async def test_without_history_publish_fans_out_with_offset_zero(make_broker: Factory,
                                                                  prefix: str) -> None:
    a, _ = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    ch = channel_on(1)
    await b.subscribe(ch)
    assert await a.publish(ch, pub("x"), 0, 0) == StreamPosition()
    await eventually(lambda: len(rec_b.pubs(ch)) == 1)
    assert rec_b.offsets(ch) == [0]


async def test_only_subscribed_channels_are_delivered(make_broker: Factory, prefix: str) -> None:
    a, rec_a = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    wanted, other = channel_on(0), channel_on(0)
    await a.subscribe(wanted)
    await a.subscribe(other)
    await b.subscribe(wanted)
    await a.publish(other, pub("o"), 10, HISTORY_TTL)
    await a.publish(wanted, pub("w"), 10, HISTORY_TTL)
    await eventually(lambda: len(rec_b.pubs(wanted)) == 1 and len(rec_a.pubs(wanted)) == 1)
    await eventually(lambda: len(rec_a.pubs(other)) == 1)
    assert rec_b.pubs(other) == []

    await b.unsubscribe(wanted)
    await a.publish(wanted, pub("after"), 10, HISTORY_TTL)
    await eventually(lambda: len(rec_a.pubs(wanted)) == 2)
    await asyncio.sleep(0.05)
    assert len(rec_b.pubs(wanted)) == 1  # nothing after unsubscribe

    # Flapping subscribe/unsubscribe/subscribe ends subscribed.
    await asyncio.gather(b.subscribe(wanted), b.unsubscribe(wanted), b.subscribe(wanted))
    await a.publish(wanted, pub("again"), 10, HISTORY_TTL)
    await eventually(lambda: len(rec_b.pubs(wanted)) == 2)
    assert rec_b.offsets(wanted) == [1, 3]


async def test_subscribe_storm_is_batched(make_broker: Factory, prefix: str) -> None:
    a, _ = await make_broker(prefix)
    b, rec_b = await make_broker(prefix, pubsub_per_shard=2)
    channels = [f"storm:{i}" for i in range(2000)]
    before = b.stats["subscribe_commands"]
    await asyncio.gather(*(b.subscribe(ch) for ch in channels))
    commands = b.stats["subscribe_commands"] - before
    # 2 shards x 2 connections, at most 512 channels a command: ~8 commands, not 2000.
    assert commands <= 16, commands
    for ch in channels[:50]:
        await a.publish(ch, pub(ch), 0, 0)
    await eventually(lambda: sum(len(rec_b.pubs(ch)) for ch in channels[:50]) == 50)

    before = b.stats["unsubscribe_commands"]
    await asyncio.gather(*(b.unsubscribe(ch) for ch in channels))
    await asyncio.sleep(0.02)
    assert b.stats["unsubscribe_commands"] - before <= 16


async def test_subscribe_is_idempotent(make_broker: Factory, prefix: str) -> None:
    a, _ = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    ch = channel_on(0)
    before = b.stats["subscribe_commands"]
    await asyncio.gather(*(b.subscribe(ch) for _ in range(5)))  # all wait for one SUBSCRIBE
    assert b.stats["subscribe_commands"] == before + 1
    started = time.monotonic()
    await b.subscribe(ch)  # confirmed already: returns at once
    assert time.monotonic() - started < 0.001 + 0.01
    assert b.stats["subscribe_commands"] == before + 1
    await a.publish(ch, pub("x"), 0, 0)
    await eventually(lambda: len(rec_b.pubs(ch)) == 1)


async def test_flapping_subscriptions_settle_on_the_last_call(make_broker: Factory,
                                                             prefix: str) -> None:
    import random

    a, _ = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    rng = random.Random(7)
    channels = [f"flap:{i}" for i in range(60)]
    final: dict[str, bool] = {}
    for _ in range(5):  # rounds of interleaved calls, some within one batch window
        calls = []
        for _ in range(300):
            ch = rng.choice(channels)
            want = rng.random() < 0.5
            final[ch] = want
            calls.append(b.subscribe(ch) if want else b.unsubscribe(ch))
        await asyncio.wait_for(asyncio.gather(*calls), 5)
        await asyncio.sleep(rng.choice([0, 0.002]))
    await asyncio.sleep(0.02)  # the last UNSUBSCRIBEs are confirmed
    for ch in channels:
        await a.publish(ch, pub(ch), 0, 0)
    wanted = sorted(ch for ch, want in final.items() if want)
    await eventually(lambda: sorted({e[1] for e in rec_b.events}) == wanted, what="settled")
    await asyncio.sleep(0.05)
    assert sorted(e[1] for e in rec_b.events) == wanted


async def test_subscribe_then_position_misses_nothing(make_broker: Factory, prefix: str) -> None:
    a, _ = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    ch = channel_on(1)
    stop = asyncio.Event()

    async def publisher() -> int:
        n = 0
        while not stop.is_set():
            await a.publish(ch, pub(str(n)), 10_000, HISTORY_TTL)
            n += 1
        return n

    task = asyncio.ensure_future(publisher())
    await asyncio.sleep(0.05)
    await b.subscribe(ch)
    state = await b.history(ch, 0, None, False)
    await asyncio.sleep(0.05)
    stop.set()
    total = await task
    assert state.offset > 0
    # Everything published after the position read arrives over pub/sub, without a gap.
    await eventually(lambda: rec_b.offsets(ch) and rec_b.offsets(ch)[-1] == total)
    got = [o for o in rec_b.offsets(ch) if o > state.offset]
    assert got == list(range(state.offset + 1, total + 1))


async def test_join_and_leave_reach_other_nodes(make_broker: Factory, prefix: str) -> None:
    a, _ = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    ch = channel_on(0)
    await b.subscribe(ch)
    await a.publish_join(ch, info("c1", "alice"))
    await a.publish(ch, pub("hi"), 10, HISTORY_TTL)
    await a.publish_leave(ch, info("c1", "alice"))
    await eventually(lambda: len(rec_b.events) == 3)
    assert [e[0] for e in rec_b.events] == ["join", "pub", "leave"]
    joined = rec_b.events[0][2]
    assert (joined.user, joined.client, bytes(joined.conn_info)) == \
        ("alice", "c1", b'{"name":"alice"}')


# ---- history: the same scenarios against MemoryBroker and RedisBroker -----------------------


@pytest.fixture(params=["memory", "redis"])
async def stream_broker(request: pytest.FixtureRequest, make_broker: Factory,
                        prefix: str) -> AsyncIterator[Any]:
    if request.param == "memory":
        broker = MemoryBroker()
        await broker.start(Recorder())
        yield broker
        await broker.close()
    else:
        broker, _ = await make_broker(prefix)
        yield broker


async def test_history_offsets_epoch_and_filters(stream_broker: Any) -> None:
    b = stream_broker
    ch = channel_on(1)
    empty = await b.history(ch, 0, None, False)
    assert empty.offset == 0 and empty.epoch and empty.publications == []
    assert (await b.history(ch, -1, None, False)).epoch == empty.epoch  # epoch is kept
    for i in range(1, 6):
        pos = await b.publish(ch, pub(f"m{i}", "u"), 10, HISTORY_TTL)
        assert pos == StreamPosition(offset=i, epoch=empty.epoch)

    async def offsets(limit: int, since: StreamPosition | None = None,
                      reverse: bool = False) -> list[int]:
        state = await b.history(ch, limit, since, reverse)
        assert state.offset == 5 and state.epoch == empty.epoch
        return [p.offset for p in state.publications]

    e = empty.epoch
    assert await offsets(0) == []
    assert await offsets(-1) == [1, 2, 3, 4, 5]
    assert await offsets(2) == [1, 2]
    assert await offsets(-1, reverse=True) == [5, 4, 3, 2, 1]
    assert await offsets(2, reverse=True) == [5, 4]
    assert await offsets(-1, StreamPosition(offset=2, epoch=e)) == [3, 4, 5]
    assert await offsets(1, StreamPosition(offset=2, epoch=e)) == [3]
    assert await offsets(-1, StreamPosition(offset=5, epoch=e)) == []
    assert await offsets(-1, StreamPosition(offset=99, epoch=e)) == []
    assert await offsets(-1, StreamPosition(offset=2, epoch="")) == [3, 4, 5]  # no epoch check
    assert await offsets(-1, StreamPosition(offset=0, epoch=e)) == [1, 2, 3, 4, 5]
    assert await offsets(-1, StreamPosition(offset=4, epoch=e), reverse=True) == [3, 2, 1]
    assert await offsets(2, StreamPosition(offset=4, epoch=e), reverse=True) == [3, 2]
    assert await offsets(-1, StreamPosition(offset=1, epoch=e), reverse=True) == []
    assert await offsets(-1, StreamPosition(offset=0, epoch=e), reverse=True) == []
    assert await offsets(-1, StreamPosition(offset=2**64 - 1, epoch=e)) == []

    state = await b.history(ch, 1, None, True)
    p = state.publications[0]
    assert bytes(p.data) == b'{"t":"m5"}' and p.tags == {"k": "m5"}
    assert p.info is not None and p.info.user == "u" and bytes(p.info.conn_info) == b'{"n":1}'

    for limit in (0, -1, 3):
        with pytest.raises(ClientError) as err:
            await b.history(ch, limit, StreamPosition(offset=1, epoch="other"), False)
        assert err.value.code == 112


async def test_history_is_trimmed_to_size(stream_broker: Any) -> None:
    ch = channel_on(0)
    for i in range(7):
        await stream_broker.publish(ch, pub(str(i)), 3, HISTORY_TTL)
    state = await stream_broker.history(ch, -1, None, False)
    assert state.offset == 7 and [p.offset for p in state.publications] == [5, 6, 7]
    since = StreamPosition(offset=2, epoch=state.epoch)  # older than what is retained
    assert [p.offset for p in (await stream_broker.history(ch, -1, since, False)).publications] \
        == [5, 6, 7]


async def test_history_ttl_drops_old_publications(stream_broker: Any) -> None:
    ch = channel_on(1)
    await stream_broker.publish(ch, pub("a"), 10, 0.5)
    await stream_broker.publish(ch, pub("b"), 10, 0.5)
    await asyncio.sleep(0.6)
    await stream_broker.publish(ch, pub("c"), 10, 0.5)
    state = await stream_broker.history(ch, -1, None, False)
    assert state.offset == 3 and [p.offset for p in state.publications] == [3]
    await asyncio.sleep(0.6)
    later = await stream_broker.history(ch, -1, None, False)
    assert (later.offset, later.epoch, later.publications) == (3, state.epoch, [])


async def test_remove_history_keeps_position(stream_broker: Any) -> None:
    ch = channel_on(0)
    for i in range(3):
        pos = await stream_broker.publish(ch, pub(str(i)), 10, HISTORY_TTL)
    await stream_broker.remove_history(ch)
    state = await stream_broker.history(ch, -1, None, False)
    assert (state.offset, state.epoch, state.publications) == (3, pos.epoch, [])
    nxt = await stream_broker.publish(ch, pub("next"), 10, HISTORY_TTL)
    assert nxt == StreamPosition(offset=4, epoch=pos.epoch)


async def test_history_off_returns_no_position(stream_broker: Any) -> None:
    ch = channel_on(1)
    assert await stream_broker.publish(ch, pub("x"), 0, HISTORY_TTL) == StreamPosition()
    assert await stream_broker.publish(ch, pub("x"), 10, 0) == StreamPosition()
    assert (await stream_broker.history(ch, -1, None, False)).offset == 0


async def test_presence_semantics(stream_broker: Any) -> None:
    ch = channel_on(0)
    assert await stream_broker.presence(ch) == {}
    assert await stream_broker.presence_stats(ch) == (0, 0)
    await stream_broker.add_presence(ch, info("c1", "alice"))
    await stream_broker.add_presence(ch, info("c2", "alice"))
    await stream_broker.add_presence(ch, info("c3", "bob"))
    await stream_broker.add_presence(ch, info("c3", "bob"))  # refresh counts once
    assert await stream_broker.presence_stats(ch) == (3, 2)
    members = await stream_broker.presence(ch)
    assert sorted(members) == ["c1", "c2", "c3"]
    assert members["c3"] == info("c3", "bob")
    await stream_broker.remove_presence(ch, "c1")
    assert await stream_broker.presence_stats(ch) == (2, 2)
    await stream_broker.remove_presence(ch, "c2")
    await stream_broker.remove_presence(ch, "c2")  # twice is harmless
    assert await stream_broker.presence_stats(ch) == (1, 1)
    assert list(await stream_broker.presence(ch)) == ["c3"]


# ---- presence across nodes ------------------------------------------------------------------


async def test_presence_is_shared_by_nodes(make_broker: Factory, prefix: str) -> None:
    a, _ = await make_broker(prefix)
    b, _ = await make_broker(prefix)
    ch = channel_on(1)
    await a.add_presence(ch, info("ca", "alice"))
    await b.add_presence(ch, info("cb", "alice"))
    await b.add_presence(ch, info("cc", "carol"))
    assert await a.presence(ch) == await b.presence(ch)
    assert sorted(await a.presence(ch)) == ["ca", "cb", "cc"]
    assert await a.presence_stats(ch) == await b.presence_stats(ch) == (3, 2)
    await a.remove_presence(ch, "cb")
    assert await b.presence_stats(ch) == (2, 2)


async def test_presence_expires_without_refresh(make_broker: Factory, prefix: str) -> None:
    dead, _ = await make_broker(prefix, presence_ttl=1.2)
    alive, _ = await make_broker(prefix, presence_ttl=1.2)
    ch = channel_on(0)
    await dead.add_presence(ch, info("gone", "ghost"))
    await alive.add_presence(ch, info("stays", "alice"))
    assert await alive.presence_stats(ch) == (2, 2)
    for _ in range(5):  # only the live node refreshes, every ttl/4
        await asyncio.sleep(0.3)
        await alive.refresh_presence([(ch, info("stays", "alice"))])
    assert list(await alive.presence(ch)) == ["stays"]
    assert await alive.presence_stats(ch) == (1, 1)
    await asyncio.sleep(1.3)
    assert await alive.presence(ch) == {}
    assert await alive.presence_stats(ch) == (0, 0)


async def test_refresh_presence_many_channels(make_broker: Factory, prefix: str) -> None:
    a, _ = await make_broker(prefix, presence_ttl=1.0)
    items = [(f"room:{i}", info(f"c{i}", f"u{i % 7}")) for i in range(300)]
    await a.refresh_presence(items)
    assert await a.presence_stats("room:5") == (1, 1)
    await asyncio.sleep(0.7)
    await a.refresh_presence(items)
    await asyncio.sleep(0.5)  # past the first TTL, within the refreshed one
    assert list(await a.presence("room:299")) == ["c299"]


# ---- control and node registry --------------------------------------------------------------


async def test_control_reaches_every_node(make_broker: Factory, prefix: str) -> None:
    a, rec_a = await make_broker(prefix)
    _b, rec_b = await make_broker(prefix)
    await a.publish_control(b"\x00disconnect alice")
    await eventually(lambda: rec_b.control == [b"\x00disconnect alice"])
    await eventually(lambda: rec_a.control == [b"\x00disconnect alice"])


async def test_node_registry_expires(make_broker: Factory, prefix: str) -> None:
    a, _ = await make_broker(prefix)
    b, _ = await make_broker(prefix)
    started = time.monotonic()
    await a.register_node({"uid": "a", "num_clients": 3}, ttl=1.0)
    await b.register_node({"uid": "b", "num_clients": 4}, ttl=10)
    assert sorted(n["uid"] for n in await b.nodes()) == ["a", "b"]
    await b.register_node({"uid": "b", "num_clients": 5}, ttl=10)
    assert {n["uid"]: n["num_clients"] for n in await a.nodes()} == {"a": 3, "b": 5}, \
        time.monotonic() - started
    await asyncio.sleep(1.1)
    assert [n["uid"] for n in await a.nodes()] == ["b"]
    await b.close()  # a closed node leaves the registry at once
    assert await a.nodes() == []


# ---- failures (keep last: they stop and restart shard 1) ------------------------------------


async def test_lost_pubsub_connection_is_restored(make_broker: Factory, prefix: str,
                                                  redis_urls: list[str]) -> None:
    a, _ = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    on0, on1 = channel_on(0), channel_on(1)
    await b.subscribe(on0)
    await b.subscribe(on1)
    # The server drops every pub/sub connection (as on client-output-buffer-limit overflow).
    await a._shards[1].commands.call(b"CLIENT", b"KILL", b"TYPE", b"pubsub")
    await eventually(lambda: any(on1 in r for r in rec_b.resets), what="shard_reset")
    if redis_urls[0] != redis_urls[1]:  # (shards sharing one server lose both connections)
        assert all(on0 not in r for r in rec_b.resets)
    await a.publish(on1, pub("after"), 10, HISTORY_TTL)
    await eventually(lambda: rec_b.offsets(on1) == [1])


async def test_hung_shard_fails_within_the_command_timeout(
        make_broker: Factory, prefix: str, redis_servers: list[RedisServer],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = redis_servers[1]
    if not server.managed:
        pytest.skip("external Redis servers cannot be paused from the tests")
    monkeypatch.setattr(redis_broker, "COMMAND_TIMEOUT", 0.5)
    a, _ = await make_broker(prefix)
    on0, on1 = channel_on(0), channel_on(1)
    await a.publish(on1, pub("warm"), 10, HISTORY_TTL)
    server.pause()
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(a.publish(on1, pub(str(i)), 10, HISTORY_TTL) for i in range(20)),
            a.presence_stats(on1), return_exceptions=True)
        assert all(isinstance(r, BrokerUnavailable) for r in results), results
        assert time.monotonic() - started < 1.5
        await a.publish(on0, pub("other shard"), 10, HISTORY_TTL)
    finally:
        server.resume()
    deadline = time.monotonic() + 5
    while True:
        try:
            await a.publish(on1, pub("again"), 10, HISTORY_TTL)
            break
        except BrokerUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def test_shard_down_then_back(make_broker: Factory, prefix: str,
                                    redis_servers: list[RedisServer]) -> None:
    server = redis_servers[1]
    if not server.managed:
        pytest.skip("external Redis servers cannot be killed from the tests")
    a, rec_a = await make_broker(prefix)
    b, rec_b = await make_broker(prefix)
    up, down = channel_on(0), channel_on(1)
    for ch in (up, down):
        await b.subscribe(ch)
    first = await a.publish(down, pub("before"), 100, HISTORY_TTL)
    await eventually(lambda: rec_b.offsets(down) == [1])

    server.kill()
    try:
        for attempt in range(3):  # the first and every later call fail fast
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable) as err:
                await a.publish(down, pub(f"lost{attempt}"), 100, HISTORY_TTL)
            assert time.monotonic() - started < 1.0
            assert (err.value.code, err.value.temporary) == (100, True)
            assert err.value.message == "internal server error"
            await asyncio.sleep(0.05)
        for call in (a.history(down, 0, None, False), a.presence(down), a.add_presence(down, info("x", "y")),
                     b.subscribe(channel_on(1)), a.publish_join(down, info("x", "y"))):
            with pytest.raises(BrokerUnavailable):
                await asyncio.wait_for(call, 2.0)
        assert a.stats["publish_errors"] >= 3
        assert a.shards_up() == [True, False]
        # The other shard keeps working, for both nodes.
        await a.publish(up, pub("fine"), 100, HISTORY_TTL)
        await eventually(lambda: rec_b.offsets(up) == [1])
        await asyncio.sleep(0.3)  # let the reconnect backoff grow a little
    finally:
        server.start()  # same port, empty (no persistence)

    # B's pub/sub connections come back by themselves and report what may have been missed.
    await eventually(lambda: any(down in r for r in rec_b.resets), timeout=10, what="shard_reset")
    assert b.shards_up()[0]
    assert not any(up in r for r in rec_b.resets)  # shard 0 never went away
    assert b.stats["reconnects"] >= 1

    async def publish_again() -> StreamPosition:
        deadline = time.monotonic() + 10
        while True:
            try:
                return await a.publish(down, pub("after"), 100, HISTORY_TTL)
            except BrokerUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    pos = await publish_again()
    # The restarted server lost the stream: a new epoch tells recovering clients so.
    assert pos.offset == 1 and pos.epoch != first.epoch
    await eventually(lambda: len(rec_b.pubs(down)) == 2)
    assert bytes(rec_b.pubs(down)[-1].data) == b'{"t":"after"}'
    # Subscriptions made after the outage work too (once every connection is back).
    await eventually(lambda: all(b.shards_up()) and all(a.shards_up()), what="all connected")
    late = channel_on(1)
    await b.subscribe(late)
    await a.publish(late, pub("late"), 0, 0)
    await eventually(lambda: len(rec_b.pubs(late)) == 1)
    assert rec_a.resets == []  # A subscribed nothing: nothing to recover


# ---- a server on a Unix socket ---------------------------------------------------------------


async def test_unix_socket_url_connects_to_a_real_server(prefix: str) -> None:
    """unix:// passes the configuration check, so the broker must be able to use it."""
    if external_urls() is not None:
        pytest.skip("external Redis servers: no server can be started on a Unix socket here")
    server = RedisServer(unix_socket=True)
    server.start()
    try:
        url = f"{server.url}?db=3"
        assert build_settings({"redis": {"urls": [url]}}).redis.urls == [url]
        a = RedisBroker([url], node_id="unix-a", prefix=prefix, history_meta_ttl=600)
        b = RedisBroker([url], node_id="unix-b", prefix=prefix, history_meta_ttl=600)
        rec_a, rec_b = Recorder(), Recorder()
        await a.start(rec_a)
        await b.start(rec_b)
        try:
            channel = f"{prefix}:unix"
            await b.subscribe(channel)
            position = await a.publish(channel, pub("over a unix socket"), 10, HISTORY_TTL)
            assert position.offset == 1
            await eventually(lambda: rec_b.offsets(channel) == [1])
            state = await b.history(channel, -1, None, False)
            assert [p.offset for p in state.publications] == [1]
            await a.publish_control(b"hello")
            await eventually(lambda: rec_b.control == [b"hello"])
            assert a.shards_up() == [True]
        finally:
            await a.close()
            await b.close()
    finally:
        server.stop()


def test_config_and_broker_accept_the_same_urls() -> None:
    for url in ("redis://h:1/2", "rediss://u:p@h", "valkey://h", "valkeys://h", "unix:///run/v.sock",
                "unix://:pw@/run/v.sock?db=2"):
        build_settings({"redis": {"urls": [url]}})
        RedisBroker([url], node_id="n")  # parses without connecting
    for url in ("http://h", "unix://", "redis://h/x", "tcp://h:6379"):
        with pytest.raises(ConfigError, match=r"^config key redis: urls\[0\]"):
            build_settings({"redis": {"urls": [url]}})
        with pytest.raises(ValueError, match="redis url"):
            RedisBroker([url], node_id="n")
