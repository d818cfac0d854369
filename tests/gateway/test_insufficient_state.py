"""Insufficient state (a broker shard came back, a durable gap history cannot fill): a
client-side subscription is unsubscribed with 2500 and resubscribes by itself; a server-side
one cannot be resubscribed by the SDK, so its connection is closed with 3010 and the
reconnect's `connect` recovers it — as Centrifuge does. Real centrifuge-python clients."""

from __future__ import annotations

from tests.conftest import Server
from tests.sdk import ClientEvents, Sdk, uniq


async def test_client_side_resubscribes_server_side_reconnects(server: Server) -> None:
    sdk = Sdk(protobuf=False)
    try:
        side = uniq("chat:server-side")
        own = uniq("chat:client-side")
        events = ClientEvents()
        client, events = await sdk.connect(server, "alice", events=events, channels=[side])
        await events.next_where("subscribed", lambda c: c.channel == side)
        _, sub_events = await sdk.subscribe(client, own)

        server.node.shard_reset([own])
        again = await sub_events.next_where("subscribing", lambda c: c.code == 2500)
        assert again.code == 2500
        await sub_events.next_where("subscribed", lambda c: True)
        assert events.seen("connecting") == [] or all(c.code != 3010 for c in events.seen("connecting"))

        server.node.shard_reset([side])
        lost = await events.next_where("connecting", lambda c: c.code == 3010)
        assert lost.code == 3010
        resubscribed = await events.next_where("subscribed", lambda c: c.channel == side and c.was_recovering)
        assert resubscribed.recovered
    finally:
        await sdk.close()
