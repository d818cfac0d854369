"""A connection token's `channels` claim goes through the chat membership check
(`acl = "chat"`) like any other way of subscribing: a non-member, or a member kicked since
the token was signed, is not subscribed to `chat:<id>` and receives nothing from it — while
the rest of the token (the connection, other channels) keeps working."""

from __future__ import annotations

import asyncio

from tests.gateway.chat.conftest import ChatEnv, rpc
from tests.sdk import api


async def test_token_channels_claim_needs_membership(chat: ChatEnv) -> None:
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    ca, _ = await chat.connect(alice)
    ch = (await rpc(ca, "channels.create", name=f"priv-{alice}", private=True))["channel"]
    await rpc(ca, "channels.invite", channel_id=ch["id"], user_ids=[carol])
    sub = ch["subscription"]

    # Both sign in with a token naming the channel (signed before anything changes).
    _, bev = await chat.connect(bob, channels=[sub])
    _, cev = await chat.connect(carol, channels=[sub])
    await cev.next_where("subscribed", lambda c: c.channel == sub)
    await rpc(ca, "messages.send", channel_id=ch["id"], text="members only")
    got = await cev.next_where("publication", lambda c: c.channel == sub)
    assert got.pub.data["message"]["text"] == "members only"

    # Carol is kicked; she reconnects with the same token.
    await rpc(ca, "channels.kick", channel_id=ch["id"], user_id=carol)
    await api(chat.srv, "disconnect", user=carol, disconnect={"code": 4001, "reason": "again"})
    await cev.next_where("connected", lambda c: True)
    await rpc(ca, "messages.send", channel_id=ch["id"], text="after the kick")
    await asyncio.sleep(0.5)

    for events in (bev, cev):
        texts = [c.pub.data.get("message", {}).get("text") for c in events.seen("publication")
                 if c.channel == sub]
        assert "after the kick" not in texts
    assert not any(c.channel == sub for c in bev.seen("subscribed"))
    # Carol's second connection did not subscribe to it; her personal channel still works.
    assert [c.channel for c in cev.seen("subscribed")].count(sub) == 1
    assert any(c.channel == f"personal:#{carol}" for c in cev.seen("subscribed"))
    # The node agrees: neither holds the channel now.
    for user in (bob, carol):
        for conn in chat.srv.node.users.get(user, ()):
            assert sub not in conn.session.subs
