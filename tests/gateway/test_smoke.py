"""The simplest end-to-end path with the real centrifuge-python client."""

from __future__ import annotations

import asyncio

from centrifuge import Client, PublicationContext, SubscriptionEventHandler

from tests.conftest import Server


class Collect(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.pubs: asyncio.Queue[PublicationContext] = asyncio.Queue()

    async def on_publication(self, ctx: PublicationContext) -> None:
        await self.pubs.put(ctx)


async def test_connect_subscribe_publish_receive(server: Server) -> None:
    client = Client(server.ws_url, token=server.token("alice", info={"name": "Alice"}))
    events = Collect()
    sub = client.new_subscription("chat:smoke", events)
    await client.connect()
    await sub.subscribe()
    await sub.publish({"text": "hi"})
    ctx = await asyncio.wait_for(events.pubs.get(), 5)
    assert ctx.pub.data == {"text": "hi"}
    assert ctx.pub.info.user == "alice"
    assert ctx.pub.info.conn_info == {"name": "Alice"}
    assert ctx.pub.offset == 1
    await client.disconnect()
