"""The chat product's `chat:<id>` channels under a reconnect storm: members following a busy
channel lose their sockets while messages keep arriving at ~100/s; every member ends with
every message event exactly once, in order, and every resubscribe recovered."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.gateway.chat.conftest import ChatEnv
from tests.gateway.test_recovery_storm import Follower, check_followers
from tests.sdk import api

MEMBERS = 12
MESSAGES = 200
RATE = 100.0


async def test_busy_chat_channel_storm_recovers_every_message(chat: ChatEnv) -> None:
    author = await chat.user("author")
    members = [await chat.user("m") for _ in range(MEMBERS)]
    ch = await chat.ok("POST", "/v1/channels", author, {"name": f"storm-{author}"})
    channel = ch["channel"]
    for m in members:
        await chat.ok("POST", f"/v1/channels/{channel['id']}/join", m)
    followers = [Follower(chat.srv.ws_url, chat.token(m), channel["subscription"], protobuf=False)
                 for m in members]
    await asyncio.gather(*(f.start() for f in followers))
    try:
        headers = {"Authorization": f"Bearer {chat.token(author)}"}
        url = f"{chat.srv.http_url}/v1/channels/{channel['id']}/messages"

        async def send(http: aiohttp.ClientSession, i: int) -> None:
            async with http.post(url, json={"text": f"message {i}"}, headers=headers) as resp:
                assert resp.status in (200, 201), await resp.text()

        async def stream() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            async with aiohttp.ClientSession() as http:
                tasks = []
                for i in range(MESSAGES):
                    delay = start + i / RATE - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.ensure_future(send(http, i)))
                await asyncio.gather(*tasks)

        sender = asyncio.ensure_future(stream())
        await asyncio.sleep(0.6)
        cut = followers[:8]
        for f in cut[:4]:
            chat.srv.node.connections[f.client.client_id].transport.abort()
        await asyncio.sleep(0.5)
        for f in cut[4:]:
            chat.srv.node.connections[f.client.client_id].transport.abort()
        await sender
        history = await api(chat.srv, "history", channel=channel["subscription"], limit=-1)
        offsets = [p["offset"] for p in history["publications"]]
        # Every member subscribed after the joins (their events are earlier offsets) and
        # before the first message: each must hear everything from there on.
        starts = {f.sub_events.seen("subscribed")[0].stream_position.offset for f in followers}
        assert len(starts) == 1
        start = starts.pop()
        stream = [o for o in offsets if o > start]
        assert len(stream) == MESSAGES
        await check_followers(followers, stream, cut)
    finally:
        await asyncio.gather(*(f.client.disconnect() for f in followers))
