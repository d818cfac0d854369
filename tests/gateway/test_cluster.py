"""Three real `sentchat serve` processes over two real Valkey shards (issue 4).

Each gateway is its own subprocess on its own port (so a test can aim at one process), with
``SENTCHAT_REDIS_URLS`` naming the two shards this module starts itself (so it can kill and
restart one without disturbing other tests). Real centrifuge-python clients, JSON and
Protobuf, are spread over the processes; the server API is called over HTTP on each port.

The tests share the processes (started once for the module) but each uses fresh channels,
so they also run one by one. Later tests take away pieces: the third SIGKILLs a gateway, the
fourth kills and restarts shard 0 (the shard that also carries the node registry and the
control channel). Waiting is always for an event or for polled state, with generous
timeouts; nothing asserts how long something took. Each gateway's log is kept as
``gw<N>.log`` in the module's pytest temporary directory (``cluster*``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from centrifuge import Client, ReplyError, Subscription, SubscriptionState
from prometheus_client.parser import text_string_to_metric_families

from gateway.broker.sharding import shard_index
from tests.conftest import API_KEY, SECRET, Server
from tests.redis_servers import RedisServer, _die_with_parent
from tests.sdk import ClientEvents, SubEvents, eventually

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 3
SHARDS = 2
PRESENCE_TTL = 2.0
# Guards against hangs only.
WAIT = 20.0

CONFIG = f"""
[http_api]
key = "{API_KEY}"

[client.token]
hmac_secret_key = "{SECRET}"

[redis]
presence_ttl = "{PRESENCE_TTL:g}s"
node_info_interval = "1s"

[[channel.namespaces]]
name = "chat"
presence = true
join_leave = true
history_size = 1000
history_ttl = "300s"
force_recovery = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
"""


# ---- the cluster --------------------------------------------------------------------------


@dataclass
class Gateway:
    index: int
    port: int
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def name(self) -> str:
        return f"gw{self.index}"

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} (port {self.port}) ---\n" + "\n".join(text)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after a while."""
        if self.proc.returncode is None:
            with suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


def _decode(data: Any) -> Any:
    return json.loads(data) if isinstance(data, bytes | bytearray) else data


@dataclass
class Member:
    """One SDK client on one gateway, with its subscriptions."""

    name: str
    gateway: Gateway
    user: str
    protobuf: bool
    client: Client
    events: ClientEvents
    subs: dict[str, tuple[Subscription, SubEvents]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.client.client_id

    def encode(self, value: Any) -> Any:
        return json.dumps(value).encode() if self.protobuf else value

    def sub(self, channel: str) -> Subscription:
        return self.subs[channel][0]

    def sub_events(self, channel: str) -> SubEvents:
        return self.subs[channel][1]

    def received(self, channel: str) -> list[tuple[int, str]]:
        """(offset, id) of every publication delivered live, in arrival order."""
        return [(ctx.pub.offset, _decode(ctx.pub.data)["id"])
                for ctx in self.sub_events(channel).seen("publication")]

    def received_ids(self, channel: str) -> list[str]:
        return [pid for _, pid in self.received(channel)]


@dataclass
class Cluster:
    redis: list[RedisServer]
    gateways: list[Gateway]
    http: aiohttp.ClientSession
    # The standing clients: two per gateway (one JSON, one Protobuf).
    members: list[Member] = field(default_factory=list)
    # Every client ever connected (disconnected at teardown).
    clients: list[Client] = field(default_factory=list)

    def live(self) -> list[Gateway]:
        return [gw for gw in self.gateways if gw.alive]

    def live_members(self) -> list[Member]:
        return [m for m in self.members if m.gateway.alive]

    async def call(self, gw: Gateway, method: str, **payload: Any) -> dict[str, Any]:
        """POST /api/<method> on ``gw``: the whole reply ({"result": ...} or {"error": ...})."""
        async with self.http.post(f"http://127.0.0.1:{gw.port}/api/{method}", json=payload,
                                  headers={"X-API-Key": API_KEY}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def result(self, gw: Gateway, method: str, **payload: Any) -> dict[str, Any]:
        body = await self.call(gw, method, **payload)
        assert "error" not in body, (gw.name, method, body)
        return body["result"]

    async def connect(self, gw: Gateway, user: str, *, protobuf: bool = False,
                      name: str = "") -> Member:
        events = ClientEvents()
        client = Client(gw.ws_url, events=events, token=Server.token(user),
                        use_protobuf=protobuf, proxy=None)
        self.clients.append(client)
        await client.connect()
        await events.next("connected", WAIT)
        return Member(name or f"{gw.name}-{user}", gw, user, protobuf, client, events)

    async def subscribe(self, member: Member, channel: str) -> None:
        events = SubEvents()
        # join_leave: ask for join/leave pushes (the namespace allows them).
        sub = member.client.new_subscription(channel, events, join_leave=True)
        member.subs[channel] = (sub, events)
        await sub.subscribe()
        await sub.ready(timeout=WAIT)
        assert sub.state == SubscriptionState.SUBSCRIBED

    async def subscribe_all(self, channels: list[str]) -> None:
        await asyncio.gather(*(self.subscribe(m, ch) for m in self.live_members()
                               for ch in channels))

    async def presence(self, gw: Gateway, channel: str) -> dict[str, Any]:
        return (await self.result(gw, "presence", channel=channel))["presence"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def spawn_gateway(index: int, config: Path, env: dict[str, str], tmp: Path) -> Gateway:
    port = free_port()
    log = tmp / f"gw{index}.log"
    parent = os.getpid()
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
            "--config", str(config), cwd=REPO, env={**env, "SENTCHAT_NODE__NAME": f"gw{index}"},
            stdin=asyncio.subprocess.DEVNULL, stdout=fh, stderr=fh,
            # Killed by the kernel if the test process dies without its finally blocks.
            preexec_fn=lambda: _die_with_parent(parent))
    return Gateway(index, port, proc, log)


async def wait_healthy(http: aiohttp.ClientSession, gw: Gateway) -> None:
    async def healthy() -> bool:
        if not gw.alive:
            pytest.fail(f"{gw.name} exited with {gw.proc.returncode}:\n{gw.tail(60)}")
        try:
            async with http.get(f"http://127.0.0.1:{gw.port}/health") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await eventually(healthy, WAIT)
    except TimeoutError:
        pytest.fail(f"{gw.name}: /health never answered:\n{gw.tail(60)}")


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT))
    c = Cluster([], [], http)
    try:
        for _ in range(SHARDS):
            server = RedisServer()  # managed here: this module kills and restarts one
            c.redis.append(server)
            server.start()
        config = tmp / "sentchat.toml"
        config.write_text(CONFIG)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTCHAT_")}
        env["SENTCHAT_REDIS_URLS"] = ",".join(server.url for server in c.redis)
        env["SENTCHAT_DATA_DIR"] = str(tmp / "data")
        for i in range(PROCESSES):
            c.gateways.append(await spawn_gateway(i, config, env, tmp))
        await asyncio.gather(*(wait_healthy(http, gw) for gw in c.gateways))
        # Two clients per process, four users over six clients (users span processes).
        for i, gw in enumerate(c.gateways):
            for k in range(2):
                member = await c.connect(gw, f"user{(2 * i + k) % 4}", protobuf=k == 1)
                c.members.append(member)
        yield c
    finally:
        for client in c.clients:
            with suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)
        await asyncio.gather(*(gw.stop() for gw in c.gateways), return_exceptions=True)
        await http.close()
        for server in c.redis:
            server.stop()


# ---- helpers --------------------------------------------------------------------------------


def fresh_channels(per_shard: int) -> list[str]:
    """New `chat:` channels, ``per_shard`` on each shard (shard 0's first)."""
    found: dict[int, list[str]] = {i: [] for i in range(SHARDS)}
    while any(len(names) < per_shard for names in found.values()):
        name = f"chat:{uuid.uuid4().hex[:12]}"
        names = found[shard_index(name, SHARDS)]
        if len(names) < per_shard:
            names.append(name)
    channels = [name for i in range(SHARDS) for name in found[i]]
    assert {shard_index(ch, SHARDS) for ch in channels} == set(range(SHARDS))
    return channels


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until truthy; on timeout fail naming ``what`` and the last value."""
    last: list[Any] = [None]

    async def probe() -> Any:
        last[0] = await check()
        return last[0]

    try:
        return await eventually(probe, timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; last: {last[0]!r}") from None


def by_gateway(members: list[Member]) -> dict[str, list[Member]]:
    out: dict[str, list[Member]] = defaultdict(list)
    for m in members:
        out[m.gateway.name].append(m)
    return out


# ---- 1. fan-out ---------------------------------------------------------------------------

PER_SOURCE = 5


async def test_publications_from_every_process_reach_every_subscriber_once_in_order(
        cluster: Cluster) -> None:
    channels = fresh_channels(2)
    await cluster.subscribe_all(channels)
    members = cluster.live_members()
    assert {m.gateway.name for m in members} == {gw.name for gw in cluster.live()}

    # One stream per channel: the same epoch for every subscriber on every process.
    epochs: dict[str, str] = {}
    for ch in channels:
        positions = {(ctx.stream_position.offset, ctx.stream_position.epoch)
                     for m in members for ctx in m.sub_events(ch).seen("subscribed")}
        assert len(positions) == 1, positions
        (offset, epochs[ch]), = positions
        assert offset == 0 and epochs[ch]

    acks: dict[str, dict[str, tuple[int, str]]] = defaultdict(dict)

    async def client_publishes(member: Member, ch: str) -> None:
        for i in range(PER_SOURCE):
            await member.sub(ch).publish(member.encode({"id": f"{member.name}/client/{i}"}))

    async def api_publishes(gw: Gateway, ch: str) -> None:
        for i in range(PER_SOURCE):
            pid = f"{gw.name}/api/{i}"
            res = await cluster.result(gw, "publish", channel=ch, data={"id": pid})
            acks[ch][pid] = (res["offset"], res["epoch"])

    # Every process publishes into every channel at once, both ways.
    publishers = {name: ms[0] for name, ms in by_gateway(members).items()}
    await asyncio.gather(*(job for ch in channels for gw in cluster.live() for job in (
        client_publishes(publishers[gw.name], ch), api_publishes(gw, ch))))
    total = len(cluster.live()) * 2 * PER_SOURCE

    # A marker published last: per-channel order means nothing (no late duplicate either)
    # can arrive after it.
    for ch in channels:
        res = await cluster.result(cluster.live()[0], "publish", channel=ch, data={"id": "marker"})
        assert (res["offset"], res["epoch"]) == (total + 1, epochs[ch])

    async def all_delivered() -> bool:
        return all(m.received_ids(ch)[-1:] == ["marker"] for m in members for ch in channels)

    await until(all_delivered, "every subscriber to get every channel's marker")

    for ch in channels:
        reference = members[0].received(ch)
        # Offsets 1..N with nothing missing, repeated or out of order.
        assert [offset for offset, _ in reference] == list(range(1, total + 2)), (ch, reference)
        ids = [pid for _, pid in reference]
        expected = {f"{p.name}/client/{i}" for p in publishers.values() for i in range(PER_SOURCE)}
        expected |= {f"{gw.name}/api/{i}" for gw in cluster.live() for i in range(PER_SOURCE)}
        assert set(ids) == expected | {"marker"}
        # Every subscriber, whatever its process and protocol, saw the very same sequence.
        for m in members:
            assert m.received(ch) == reference, (m.name, ch)
        # Each source's publications keep their order; API replies name the offsets seen.
        for source in {pid.rsplit("/", 1)[0] for pid in expected}:
            seq = [int(pid.rsplit("/", 1)[1]) for pid in ids if pid.startswith(source + "/")]
            assert seq == list(range(PER_SOURCE)), (ch, source, seq)
        offset_of = {pid: offset for offset, pid in reference}
        for pid, (offset, epoch) in acks[ch].items():
            assert (offset_of[pid], epochs[ch]) == (offset, epoch), (ch, pid)
        # Client publications carry the publisher's identity to every process.
        for m in members:
            for ctx in m.sub_events(ch).seen("publication"):
                pid = _decode(ctx.pub.data)["id"]
                if "/client/" in pid:
                    publisher = next(p for p in publishers.values() if pid.startswith(p.name + "/"))
                    assert (ctx.pub.info.user, ctx.pub.info.client) == (publisher.user, publisher.id)


# ---- 2. presence, info, channels, control -------------------------------------------------


async def test_presence_info_channels_and_control_agree_across_processes(cluster: Cluster) -> None:
    channels = fresh_channels(1)
    await cluster.subscribe_all(channels)
    members = cluster.live_members()
    gateways = cluster.live()
    clients = {m.id: m.user for m in members}
    users = set(clients.values())

    for ch in channels:
        seen = [await cluster.presence(gw, ch) for gw in gateways]
        assert {cid: entry["user"] for cid, entry in seen[0].items()} == clients, ch
        assert all(p == seen[0] for p in seen), (ch, seen)
        stats = [await cluster.result(gw, "presence_stats", channel=ch) for gw in gateways]
        assert stats == [{"num_clients": len(clients), "num_users": len(users)}] * len(gateways)
        # The same through the client protocol, from a client on each process.
        for ms in by_gateway(members).values():
            res = await ms[0].sub(ch).presence_stats()
            assert (res.num_clients, res.num_users) == (len(clients), len(users))
            assert set((await ms[0].sub(ch).presence()).clients) == set(clients)

    # Every process lists every live node (other nodes' counts come from the registry).
    per_node = {name: len(ms) for name, ms in by_gateway(members).items()}

    async def info_complete() -> bool:
        for gw in gateways:
            nodes = (await cluster.result(gw, "info"))["nodes"]
            if {n["name"]: n["num_clients"] for n in nodes} != per_node:
                return False
            assert len({n["uid"] for n in nodes}) == len(nodes)
            assert all(n["uptime"] >= 0 and n["version"] for n in nodes)
        return True

    await until(info_complete, f"/api/info to list {per_node} on every process")

    async def channels_aggregated() -> bool:
        for gw in gateways:
            listed = (await cluster.result(gw, "channels"))["channels"]
            if any(listed.get(ch) != {"num_clients": len(members)} for ch in channels):
                return False
        return True

    await until(channels_aggregated, "/api/channels to count every process's subscribers")

    # Control: commands sent to one process reach a client held by another.
    a, b, c = gateways[0], gateways[1], gateways[-1]
    victim = await cluster.connect(b, f"victim-{uuid.uuid4().hex[:8]}")
    await cluster.subscribe(victim, channels[0])
    # Its join reaches the subscribers of every process (and its leave, below).
    for m in members:
        await m.sub_events(channels[0]).next_where("join", lambda ctx: ctx.info.client == victim.id,
                                                   WAIT)
    await until(lambda: _has(cluster.presence(c, channels[0]), victim.id),
                "the victim in presence")
    assert (await cluster.call(a, "unsubscribe", user=victim.user, channel=channels[0])) == {"result": {}}
    ctx = await victim.sub_events(channels[0]).next("unsubscribed", WAIT)
    assert ctx.code == 2000
    assert victim.sub(channels[0]).state == SubscriptionState.UNSUBSCRIBED
    await until(lambda: _lacks(cluster.presence(c, channels[0]), victim.id),
                "the unsubscribed victim to leave presence")
    for m in members:
        await m.sub_events(channels[0]).next_where("leave", lambda ctx: ctx.info.client == victim.id,
                                                   WAIT)

    assert (await cluster.call(c, "disconnect", user=victim.user,
                               disconnect={"code": 4509, "reason": "cluster test"})) == {"result": {}}
    ctx = await victim.events.next("disconnected", WAIT)
    assert (ctx.code, ctx.reason) == (4509, "cluster test")
    # The standing clients were not touched.
    for m in members:
        assert all(sub.state == SubscriptionState.SUBSCRIBED for sub, _ in m.subs.values())
        assert m.events.seen("disconnected") == []


async def _has(presence: Awaitable[dict[str, Any]], client: str) -> bool:
    return client in await presence


async def _lacks(presence: Awaitable[dict[str, Any]], client: str) -> bool:
    return client not in await presence


# ---- 3. a gateway process dies -------------------------------------------------------------


async def test_sigkilled_process_clients_leave_presence_and_others_keep_delivering(
        cluster: Cluster) -> None:
    gateways = cluster.live()
    assert len(gateways) >= 2
    doomed = gateways[-1]
    channels = fresh_channels(1)
    await cluster.subscribe_all(channels)
    everyone = {m.id for m in cluster.live_members()}
    for gw in gateways:
        for ch in channels:
            assert set(await cluster.presence(gw, ch)) == everyone

    doomed.proc.kill()  # SIGKILL: no goodbye to Redis, presence just stops being refreshed
    await doomed.proc.wait()
    for m in cluster.members:
        if m.gateway is doomed:
            await m.client.disconnect()  # stop its reconnect attempts to a dead port
    survivors = cluster.live_members()
    remaining = {m.id for m in survivors}
    users = {m.user for m in survivors}

    async def expired() -> bool:
        for gw in cluster.live():
            for ch in channels:
                if set(await cluster.presence(gw, ch)) != remaining:
                    return False
                stats = await cluster.result(gw, "presence_stats", channel=ch)
                if stats != {"num_clients": len(remaining), "num_users": len(users)}:
                    return False
        return True

    # Entries expire presence_ttl after their last refresh; the wait only guards hangs.
    await until(expired, "the killed process's clients to leave presence")

    # The survivors keep publishing to and delivering for each other.
    for ch in channels:
        before = {m.name: len(m.received(ch)) for m in survivors}
        for gw in cluster.live():
            await cluster.result(gw, "publish", channel=ch, data={"id": f"after-kill/{gw.name}"})
        wanted = [f"after-kill/{gw.name}" for gw in cluster.live()]

        async def delivered(ch: str = ch, before: dict[str, int] = before,
                            wanted: list[str] = wanted) -> bool:
            return all(m.received_ids(ch)[before[m.name]:] == wanted for m in survivors)

        await until(delivered, f"deliveries on {ch} after the kill")
        for m in survivors:
            offsets = [offset for offset, _ in m.received(ch)]
            assert offsets == list(range(1, len(offsets) + 1)), (m.name, offsets)

    async def two_nodes() -> bool:
        for gw in cluster.live():
            names = {n["name"] for n in (await cluster.result(gw, "info"))["nodes"]}
            if names != {g.name for g in cluster.live()}:
                return False
            listed = (await cluster.result(gw, "channels"))["channels"]
            if any(listed.get(ch) != {"num_clients": len(survivors)} for ch in channels):
                return False
        return True

    await until(two_nodes, "/api/info and /api/channels to forget the killed node")


# ---- 4. a Redis shard goes away and comes back ---------------------------------------------


@dataclass
class Ack:
    id: str
    offset: int
    epoch: str
    phase: str


async def test_redis_shard_outage_loses_no_acknowledged_publication(cluster: Cluster) -> None:
    shard = 0  # also holds the node registry and the control channel
    server = cluster.redis[shard]
    channels = fresh_channels(2)
    down = [ch for ch in channels if shard_index(ch, SHARDS) == shard]
    up = [ch for ch in channels if ch not in down]
    await cluster.subscribe_all(channels)
    members = cluster.live_members()
    gateways = cluster.live()

    acks: dict[str, list[Ack]] = defaultdict(list)
    errors: dict[str, list[tuple[int, str]]] = defaultdict(list)
    phase = "before"
    running = asyncio.Event()
    running.set()
    idle = asyncio.Event()
    stop = asyncio.Event()

    async def publisher() -> None:
        n = 0
        while not stop.is_set():
            if not running.is_set():
                idle.set()
                await running.wait()
                idle.clear()
            for ch in channels:
                gw = gateways[n % len(gateways)]
                pid = f"pub/{n}"
                n += 1
                sent = phase
                body = await cluster.call(gw, "publish", channel=ch, data={"id": pid})
                # A call sent in one phase and answered in the next belongs to neither.
                at = sent if phase == sent else f"{sent}->{phase}"
                if "error" in body:
                    errors[ch].append((body["error"]["code"], at))
                else:
                    acks[ch].append(Ack(pid, body["result"]["offset"], body["result"]["epoch"], at))
            await asyncio.sleep(0.05)

    def count(ch: str, at: str) -> int:
        return sum(1 for a in acks[ch] if a.phase == at)

    def error_count(ch: str, at: str) -> int:
        return sum(1 for _, p in errors[ch] if p == at)

    task = asyncio.ensure_future(publisher())
    try:
        await until(lambda: _true(all(count(ch, "before") >= 3 for ch in channels)),
                    "publications before the outage")
        # Quiesce, then check that what was acknowledged so far was delivered everywhere:
        # those are the publications "before the failure".
        running.clear()
        await asyncio.wait_for(idle.wait(), WAIT)
        acked_before = {ch: [a.id for a in acks[ch]] for ch in channels}

        async def before_delivered() -> bool:
            return all(m.received_ids(ch) == acked_before[ch] for m in members for ch in channels)

        await until(before_delivered, "delivery of everything acknowledged before the outage")

        server.kill()
        phase = "down"
        running.set()
        # Client publishes to a channel of the dead shard fail with a temporary error too.
        with pytest.raises(ReplyError) as err:
            await members[0].sub(down[0]).publish(members[0].encode({"id": "client/down"}))
        assert (err.value.code, err.value.temporary) == (100, True)

        await until(lambda: _true(all(error_count(ch, "down") >= 3 for ch in down)
                                  and all(count(ch, "down") >= 3 for ch in up)),
                    "publishes failing on the dead shard and working on the other")
        # Outlive the presence TTL: presence on the healthy shard must still be refreshed
        # although the registry's shard is gone.
        await asyncio.sleep(PRESENCE_TTL * 1.5)
        for gw in gateways:
            for ch in up:
                assert set(await cluster.presence(gw, ch)) == {m.id for m in members}, (gw.name, ch)

        server.start()  # same port, empty: no persistence
        phase = "after"
        resubscribed: dict[tuple[str, str], Any] = {}

        async def recovered() -> bool:
            # Every subscriber of the dead shard's channels was sent 2500 and subscribed again.
            for m in members:
                for ch in down:
                    log = m.sub_events(ch).log
                    resets = [i for i, (kind, ctx) in enumerate(log)
                              if kind == "subscribing" and ctx.code == 2500]
                    again = [ctx for kind, ctx in log[resets[0]:] if kind == "subscribed"] \
                        if resets else []
                    if not again:
                        return False
                    resubscribed[(m.name, ch)] = again[-1]
            return all(count(ch, "after") >= 3 for ch in down)

        await until(recovered, "subscribers of the restarted shard to resubscribe")
        phase = "recovered"
        # A few more rounds once everyone is back: they must arrive live.
        marks = {ch: len(acks[ch]) for ch in channels}
        await until(lambda: _true(all(len(acks[ch]) >= marks[ch] + 3 for ch in channels)),
                    "publications after recovery")
    finally:
        stop.set()
        running.set()
        await asyncio.wait_for(task, WAIT)

    # Failures were all temporary (100) and only on the dead shard: while it was down and,
    # on a process that had not reconnected yet, just after its restart; none once the
    # subscribers were back.
    for ch in up:
        assert errors[ch] == [], (ch, errors[ch])
    for ch in down:
        assert {code for code, _ in errors[ch]} == {100}, errors[ch]
        assert {p for _, p in errors[ch]} <= {"down", "down->after", "after"}, errors[ch]
        assert not any(a.phase == "down" for a in acks[ch]), acks[ch]
        assert sum(1 for a in acks[ch] if a.phase == "recovered") >= 3

    async def everything_arrived() -> bool:
        for m in members:
            for ch in channels:
                ids = set(m.received_ids(ch))
                if ch in down:
                    ctx = resubscribed[(m.name, ch)]
                    # Only what follows the resubscribe position must arrive live; the rest
                    # is the application's to reload (recovered=False, next step).
                    need = [a.id for a in acks[ch] if a.epoch == ctx.stream_position.epoch
                            and a.offset > ctx.stream_position.offset]
                else:
                    need = [a.id for a in acks[ch]]
                if not set(need) <= ids:
                    return False
        return True

    await until(everything_arrived, "live delivery of every acknowledged publication")

    for m in members:
        for ch in up:
            # The healthy shard's channels never noticed: one epoch, 1..N, every ack, live.
            assert not [c for k, c in m.sub_events(ch).log if k == "subscribing" and c.code], m.name
            received = m.received(ch)
            assert [offset for offset, _ in received] == list(range(1, len(received) + 1))
            assert [a.id for a in acks[ch]] == [pid for _, pid in received][:len(acks[ch])]
        for ch in down:
            live = m.received_ids(ch)
            assert len(live) == len(set(live)), (m.name, ch, live)  # never twice
            # Delivered before the failure.
            assert live[:len(acked_before[ch])] == acked_before[ch], (m.name, ch)
            ctx = resubscribed[(m.name, ch)]
            first_epoch = acks[ch][0].epoch
            # The restarted server starts a new stream: recovery cannot be claimed.
            assert ctx.was_recovering and not ctx.recovered, (m.name, ch, ctx)
            assert ctx.stream_position.epoch != first_epoch
            # The application reloads the new stream, as Centrifugo's contract says on
            # recovered=False; with what came live nothing acknowledged is missing.
            history = await m.sub(ch).history(limit=-1)
            assert history.epoch == ctx.stream_position.epoch
            reloaded = [_decode(p.data)["id"] for p in history.publications]
            have = set(live) | set(reloaded)
            missing = [a for a in acks[ch] if a.id not in have]
            assert missing == [], (m.name, ch, missing)
            # Everything acknowledged after the restart is in the new stream, in order.
            after = [a for a in acks[ch] if a.epoch == ctx.stream_position.epoch]
            assert [a.offset for a in after] == list(range(1, len(after) + 1))
            assert reloaded[:len(after)] == [a.id for a in after]

    # Publishing works again everywhere, and the registry and control came back with the
    # shard that holds them.
    for gw in gateways:
        for ch in down:
            res = await cluster.result(gw, "publish", channel=ch, data={"id": f"final/{gw.name}"})
            assert res["offset"] > 0

    async def nodes_back() -> bool:
        for gw in gateways:
            names = {n["name"] for n in (await cluster.result(gw, "info"))["nodes"]}
            if names != {g.name for g in gateways}:
                return False
        return True

    await until(nodes_back, "/api/info to list the live nodes again")
    late = await cluster.connect(gateways[-1], f"late-{uuid.uuid4().hex[:8]}")
    await cluster.subscribe(late, down[0])

    async def control_works() -> bool:
        body = await cluster.call(gateways[0], "unsubscribe", user=late.user, channel=down[0])
        assert body == {"result": {}}, body
        return late.sub(down[0]).state == SubscriptionState.UNSUBSCRIBED

    await until(control_works, "an unsubscribe sent to one process to reach another")

    # Logs and metrics say what happened.
    for gw in gateways:
        text = gw.log.read_text(errors="replace")
        assert "shard 0" in text and "connection lost, reconnecting" in text, gw.tail()
        assert "reconnected after" in text, gw.tail()
        async with cluster.http.get(f"http://127.0.0.1:{gw.port}/metrics") as resp:
            metrics = await resp.text()
        failed = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                  if s.name == "sentchat_errors_total" and s.labels.get("code") == "100"]
        assert failed and failed[0] > 0, (gw.name, failed)


async def _true(value: Any) -> Any:
    return value
