"""client.write_delay: frames are held and written per connection in one go; nothing is
lost or reordered, replies included, and held frames precede a close."""

from __future__ import annotations

import asyncio
from typing import Any

from centrifuge import Client

from centrifugo_bridge import codes
from tests.conftest import standard_settings
from tests.sdk import ClientEvents, SubEvents, api, uniq


async def test_held_frames_arrive_in_order_before_close(make_server: Any) -> None:
    srv = await make_server(standard_settings(write_delay="20ms"))
    assert srv.node.write_delay == 0.02
    channel = uniq("chat:delay")
    events = ClientEvents()
    client = Client(srv.ws_url, events=events, token=srv.token("slowpoke"), proxy=None)
    sub_events = SubEvents()
    sub = client.new_subscription(channel, sub_events)
    await client.connect()
    await sub.subscribe()
    await sub.ready(timeout=10)
    try:
        # Pushes and a client publish (its reply is held too) interleave.
        for n in range(100):
            await api(srv, "publish", channel=channel, data={"n": n})
        await sub.publish({"n": 100})
        got = [(await sub_events.next("publication")).pub.data["n"] for _ in range(101)]
        assert got == list(range(101))
        # Several frames went out in single writes: fewer writes than frames were held.
        conn = srv.node.connections[client.client_id]
        for n in range(101, 111):
            await srv.node.publish(channel, b'{"n": %d}' % n)
        assert conn.delayed is not None and len(conn.delayed) == 10
        # Closed right away (before the flush): the held publications still go out first.
        conn.close(codes.FORCE_DISCONNECT)
        more = [(await sub_events.next("publication")).pub.data["n"] for _ in range(10)]
        assert more == list(range(101, 111))
        assert conn.closed and conn.delayed is None
        await events.next("disconnected")
    finally:
        await client.disconnect()
    await asyncio.sleep(0)
