"""The chat product on two gateway nodes sharing PostgreSQL and Redis: a message sent through
one node reaches subscribers on the other, a user connected to one node is online for the
other, and a kick on one node ends the subscription held on the other."""

from __future__ import annotations

from centrifuge import ReplyError

from tests.conftest import create_database, drop_database, start_server, stop_server
from tests.gateway.chat.conftest import ChatEnv, chat_settings, rpc
from tests.sdk import Sdk, eventually


async def test_two_nodes_share_the_chat(pg_dsn: str, redis_urls: list[str]) -> None:
    dsn = await create_database(pg_dsn, "chatc")
    settings = [chat_settings(dsn, redis__urls=redis_urls) for _ in range(2)]
    one = await start_server(settings[0])
    two = await start_server(settings[1])
    sdk = Sdk(protobuf=False)
    try:
        env1, env2 = ChatEnv(one, dsn, sdk), ChatEnv(two, dsn, sdk)
        alice, bob = await env1.user("alice"), await env2.user("bob")
        ca, _ = await env1.connect(alice)
        cb, _ = await env2.connect(bob)
        # Alice's only connection is on node one; node two sees her online, then offline.
        seen = (await rpc(cb, "users.get", user_id=alice))["user"]
        assert seen["status"]["online"] is True

        ch = (await rpc(ca, "channels.create", name=f"cl-{alice}", private=True, members=[bob]))["channel"]
        sub, sev = await sdk.subscribe(cb, ch["subscription"])
        sent = (await rpc(ca, "messages.send", channel_id=ch["id"], text="across nodes"))["message"]
        ev = (await sev.next("publication")).pub.data
        assert ev["type"] == "message.created" and ev["message"]["id"] == sent["id"]

        # Kicked through node one: node two ends bob's live subscription.
        await rpc(ca, "channels.kick", channel_id=ch["id"], user_id=bob)
        await sev.next("unsubscribed")
        try:
            await rpc(cb, "messages.list", channel_id=ch["id"])
            raise AssertionError("a kicked member still reads the private channel")
        except ReplyError as err:
            assert err.code == 404

        # Watching alice's status from node two: her going offline on node one, and coming
        # back on node two, arrive in real time.
        _, watch = await sdk.subscribe(cb, f"status:{alice}")
        await ca.disconnect()
        ev = (await watch.next("publication")).pub.data
        assert ev == {"type": "presence.changed", "user_id": alice, "online": False}

        async def offline() -> bool:
            return (await rpc(cb, "users.get", user_id=alice))["user"]["status"]["online"] is False

        await eventually(offline)
        await env2.connect(alice)
        ev = (await watch.next("publication")).pub.data
        assert ev == {"type": "presence.changed", "user_id": alice, "online": True}
    finally:
        await sdk.close()
        await stop_server(one)
        await stop_server(two)
        await drop_database(dsn)
