"""Every chat operation through the real centrifuge-python client (RPC over the WebSocket),
with its real-time events arriving on the channel's Centrifugo subscription."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from centrifuge import ReplyError

from tests.conftest import API_KEY
from tests.gateway.chat.conftest import ChatEnv, rpc
from tests.sdk import TIMEOUT


async def events_of(sub_events, n: int, timeout: float = TIMEOUT) -> list[dict]:
    out = []
    for _ in range(n):
        ctx = await sub_events.next("publication", timeout)
        out.append(ctx.pub.data)
    return out


async def test_channel_lifecycle_and_messages(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    ca, _ = await chat.connect(alice)
    cb, _ = await chat.connect(bob)
    ch = (await rpc(ca, "channels.create", name=f"eng-{alice}", topic="engineering"))["channel"]
    assert ch["kind"] == "public" and ch["member_role"] == "admin"
    assert ch["subscription"] == f"chat:{ch['id']}"

    listed = (await rpc(cb, "channels.list"))["channels"]
    assert any(c["id"] == ch["id"] and not c["member"] for c in listed)
    joined = (await rpc(cb, "channels.join", channel_id=ch["id"]))["channel"]
    assert joined["member"] and joined["member_role"] == "member"

    sub, sev = await chat.sdk.subscribe(cb, ch["subscription"])
    sent = await rpc(ca, "messages.send", channel_id=ch["id"], text="hello **world**",
                     client_msg_id="m1")
    assert sent["created"] is True
    msg = sent["message"]
    (ev,) = await events_of(sev, 1)
    assert ev["type"] == "message.created" and ev["message"]["id"] == msg["id"]
    assert ev["message"]["text"] == "hello **world**"

    # A retry with the same client_msg_id returns the same message and publishes nothing new.
    again = await rpc(ca, "messages.send", channel_id=ch["id"], text="hello **world**", client_msg_id="m1")
    assert again["created"] is False and again["message"]["id"] == msg["id"]

    edited = (await rpc(ca, "messages.edit", message_id=msg["id"], text="hello again"))["message"]
    assert edited["version"] == 2 and edited["edited_at"]
    (ev,) = await events_of(sev, 1)
    assert ev["type"] == "message.updated" and ev["message"]["text"] == "hello again"

    await rpc(cb, "reactions.add", message_id=msg["id"], emoji=":+1:")
    (ev,) = await events_of(sev, 1)
    assert ev == {"type": "reaction.added", "message_id": msg["id"], "emoji": ":+1:", "user_id": bob,
                  "channel_id": ch["id"]}
    page = await rpc(cb, "messages.list", channel_id=ch["id"])
    assert [m["id"] for m in page["messages"]] == [msg["id"]]
    assert page["messages"][0]["reactions"] == {":+1:": [bob]}
    assert page["position"]["epoch"] and page["position"]["offset"] >= 3
    await rpc(cb, "reactions.remove", message_id=msg["id"], emoji=":+1:")
    (ev,) = await events_of(sev, 1)
    assert ev["type"] == "reaction.removed"

    await rpc(cb, "pins.add", message_id=msg["id"])
    (ev,) = await events_of(sev, 1)
    assert ev["type"] == "pin.added"
    pins = await rpc(ca, "pins.list", channel_id=ch["id"])
    assert [m["id"] for m in pins["messages"]] == [msg["id"]]
    await rpc(cb, "pins.remove", message_id=msg["id"])
    assert (await events_of(sev, 1))[0]["type"] == "pin.removed"
    assert (await rpc(ca, "pins.list", channel_id=ch["id"]))["messages"] == []

    topic = (await rpc(cb, "channels.set_topic", channel_id=ch["id"], topic="new topic"))["channel"]
    assert topic["topic"] == "new topic"
    (ev,) = await events_of(sev, 1)
    assert ev["type"] == "channel.updated" and ev["channel"]["topic"] == "new topic"

    await rpc(ca, "messages.delete", message_id=msg["id"])
    (ev,) = await events_of(sev, 1)
    assert ev["type"] == "message.deleted" and ev["message_id"] == msg["id"]
    page = await rpc(cb, "messages.list", channel_id=ch["id"])
    assert page["messages"][0]["deleted"] is True and page["messages"][0]["text"] == ""

    await rpc(cb, "channels.leave", channel_id=ch["id"])
    # Leaving a public channel: the subscription stays possible (public), membership is gone.
    listed = {c["id"]: c for c in (await rpc(cb, "channels.list"))["channels"]}
    assert listed[ch["id"]]["member"] is False

    arch = (await rpc(ca, "channels.archive", channel_id=ch["id"]))["channel"]
    assert arch["archived"] is True
    with pytest.raises(ReplyError) as err:
        await rpc(ca, "messages.send", channel_id=ch["id"], text="too late")
    # The documented stable code for an archived channel, not a permission error.
    assert err.value.code == 409
    await sub.unsubscribe()


async def test_message_versions_are_kept_for_admins(chat: ChatEnv) -> None:
    admin, alice = await chat.user("adm", role="admin"), await chat.user("alice")
    ca, _ = await chat.connect(alice)
    cadm, _ = await chat.connect(admin)
    ch = (await rpc(ca, "channels.create", name=f"v-{alice}"))["channel"]
    msg = (await rpc(ca, "messages.send", channel_id=ch["id"], text="v1"))["message"]
    await rpc(ca, "messages.edit", message_id=msg["id"], text="v2")
    await rpc(ca, "messages.edit", message_id=msg["id"], text="v3")
    await rpc(ca, "messages.delete", message_id=msg["id"])
    hist = await rpc(cadm, "messages.history", message_id=msg["id"])
    assert [v["text"] for v in hist["versions"]] == ["v1", "v2", "v3"]
    assert hist["message"]["deleted"] is True and hist["message"]["version"] == 4
    with pytest.raises(ReplyError) as err:
        await rpc(ca, "messages.history", message_id=msg["id"])
    assert err.value.code == 403


async def test_private_channel_invite_kick(chat: ChatEnv) -> None:
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    ca, _ = await chat.connect(alice)
    cb, bev = await chat.connect(bob)
    ch = (await rpc(ca, "channels.create", name=f"secret-{alice}", private=True))["channel"]
    assert ch["kind"] == "private"
    # Invisible to non-members: not listed, not joinable (not found, not forbidden).
    assert all(c["id"] != ch["id"] for c in (await rpc(cb, "channels.list"))["channels"])
    with pytest.raises(ReplyError) as err:
        await rpc(cb, "channels.join", channel_id=ch["id"])
    assert err.value.code == 404

    await rpc(ca, "channels.invite", channel_id=ch["id"], user_ids=[bob, carol])
    note = await bev.next_where("publication", lambda c: c.channel == f"personal:#{bob}")
    assert note.pub.data["type"] == "member.joined" and note.pub.data["channel_id"] == ch["id"]
    sub, sev = await chat.sdk.subscribe(cb, ch["subscription"])
    await rpc(ca, "messages.send", channel_id=ch["id"], text="welcome")
    assert (await events_of(sev, 1))[0]["type"] == "message.created"

    # Bob (a member, not a channel admin) may not kick; alice (channel admin) may.
    with pytest.raises(ReplyError) as err:
        await rpc(cb, "channels.kick", channel_id=ch["id"], user_id=carol)
    assert err.value.code == 403
    await rpc(ca, "channels.kick", channel_id=ch["id"], user_id=bob)
    # The kicked member's live subscription ends at once.
    await sev.next("unsubscribed")
    with pytest.raises(ReplyError) as err:
        await rpc(cb, "messages.list", channel_id=ch["id"])
    assert err.value.code == 404


async def test_dm_open_and_group_dm(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    others = [await chat.user("g") for _ in range(6)]
    ca, _ = await chat.connect(alice)
    cb, bev = await chat.connect(bob)
    dm = (await rpc(ca, "dm.open", user_ids=[bob]))["channel"]
    assert dm["kind"] == "dm" and sorted(dm["members"]) == sorted([alice, bob])
    assert (await rpc(cb, "dm.open", user_ids=[alice]))["channel"]["id"] == dm["id"]
    await rpc(ca, "messages.send", channel_id=dm["id"], text="psst")
    note = await bev.next_where("publication", lambda c: c.channel == f"personal:#{bob}"
                                and c.pub.data.get("type") == "notification")
    assert note.pub.data["kind"] == "dm" and note.pub.data["from"] == alice
    group = (await rpc(ca, "dm.open", user_ids=[bob, *others]))["channel"]
    assert group["kind"] == "group_dm" and len(group["members"]) == 8
    listed = {c["id"]: c for c in (await rpc(cb, "channels.list"))["channels"]}
    assert listed[dm["id"]]["members"] == sorted([alice, bob])
    assert listed[group["id"]]["members"] == sorted([alice, bob, *others])
    with pytest.raises(ReplyError) as err:
        await rpc(ca, "dm.open", user_ids=[bob, *others, await chat.user("x")])
    assert err.value.code == 400
    with pytest.raises(ReplyError) as err:
        await rpc(ca, "channels.leave", channel_id=dm["id"])
    assert err.value.code == 400


async def test_threads_replies_follow_and_unreads(chat: ChatEnv) -> None:
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    ca, _ = await chat.connect(alice)
    cb, _ = await chat.connect(bob)
    cc, cev = await chat.connect(carol)
    ch = (await rpc(ca, "channels.create", name=f"t-{alice}", members=[bob, carol]))["channel"]
    root = (await rpc(ca, "messages.send", channel_id=ch["id"], text="root"))["message"]
    await rpc(cc, "threads.follow", message_id=root["id"])
    r1 = (await rpc(cb, "messages.send", channel_id=ch["id"], text="reply 1",
                    thread_parent=root["id"]))["message"]
    assert r1["thread_parent"] == root["id"]
    note = await cev.next_where("publication", lambda c: c.pub.data.get("type") == "notification")
    assert note.pub.data["kind"] == "thread_reply" and note.pub.data["message_id"] == r1["id"]
    await rpc(cb, "messages.send", channel_id=ch["id"], text="reply 2 also in channel",
              thread_parent=root["id"], also_to_channel=True)
    thread = await rpc(cc, "threads.replies", message_id=root["id"])
    assert [m["text"] for m in thread["messages"]] == ["root", "reply 1", "reply 2 also in channel"]
    parent = thread["messages"][0]
    assert parent["reply_count"] == 2 and parent["reply_users"] == [bob] and parent["last_reply_at"]
    # Carol's unreads: root + the reply also sent to the channel; the thread-only reply not.
    counts = {c["channel_id"]: c for c in (await rpc(cc, "unread.counts"))["channels"]}
    assert counts[ch["id"]]["unread"] == 2
    timeline = (await rpc(cc, "messages.list", channel_id=ch["id"]))["messages"]
    await rpc(cc, "read.mark", channel_id=ch["id"], message_id=timeline[-1]["id"])
    counts = {c["channel_id"]: c for c in (await rpc(cc, "unread.counts"))["channels"]}
    assert counts[ch["id"]]["unread"] == 0
    # Replies go to the first message of a thread, never to a reply.
    with pytest.raises(ReplyError) as err:
        await rpc(cb, "messages.send", channel_id=ch["id"], text="x", thread_parent=r1["id"])
    assert err.value.code == 400


async def test_mentions_mute_and_dnd(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    ca, _ = await chat.connect(alice)
    cb, bev = await chat.connect(bob)
    ch = (await rpc(ca, "channels.create", name=f"m-{alice}", members=[bob]))["channel"]
    first = (await rpc(ca, "messages.send", channel_id=ch["id"], text=f"hi @{bob}"))["message"]
    note = await bev.next_where("publication", lambda c: c.pub.data.get("type") == "notification")
    assert note.pub.data["kind"] == "mention" and note.pub.data["message_id"] == first["id"]

    await rpc(cb, "channels.mute", channel_id=ch["id"], muted=True)
    await rpc(ca, "messages.send", channel_id=ch["id"], text=f"muted @{bob}")
    await rpc(cb, "channels.mute", channel_id=ch["id"], muted=False)
    await rpc(cb, "presence.set_status", dnd_until=int(time.time()) + 3600)
    await rpc(ca, "messages.send", channel_id=ch["id"], text="dnd @channel")
    await rpc(cb, "presence.set_status", dnd_until=0)
    last = (await rpc(ca, "messages.send", channel_id=ch["id"], text=f"back @{bob}"))["message"]
    note = await bev.next_where("publication", lambda c: c.pub.data.get("type") == "notification")
    # The muted and DND messages produced no notification; the next one did.
    assert note.pub.data["message_id"] == last["id"]
    counts = {c["channel_id"]: c for c in (await rpc(cb, "unread.counts"))["channels"]}
    assert counts[ch["id"]]["unread"] == 4 and counts[ch["id"]]["mentions"] == 4


async def test_status_users_get_and_code_snippets(chat: ChatEnv) -> None:
    alice = await chat.user("alice", display_name="Alice A", email="alice@example.com", title="Eng")
    bob = await chat.user("bob")
    ca, _ = await chat.connect(alice)
    cb, _ = await chat.connect(bob)
    sub, sev = await chat.sdk.subscribe(cb, f"status:{alice}")
    until = int(time.time()) + 600
    res = await rpc(ca, "presence.set_status", text="In a meeting", emoji=":calendar:", until=until, away=True)
    assert res["user"]["status"]["text"] == "In a meeting"
    ev = (await sev.next("publication")).pub.data
    assert ev["type"] == "status.changed" and ev["status"]["text"] == "In a meeting"
    assert ev["status"]["away"] is True and ev["status"]["until"] == until
    seen = (await rpc(cb, "users.get", user_id=alice))["user"]
    assert seen["display_name"] == "Alice A" and seen["status"]["online"] is True
    assert seen["email"] is None  # other people's e-mail stays private
    own = (await rpc(ca, "users.get", user_id=alice))["user"]
    assert own["email"] == "alice@example.com"

    ch = (await rpc(ca, "channels.create", name=f"code-{alice}"))["channel"]
    text = "look:\n```python\ndef f(x):\n    return x\n```\nand\n```nosuchlang\n<b>\n```"
    msg = (await rpc(ca, "messages.send", channel_id=ch["id"], text=text))["message"]
    py, plain = msg["rendered"]
    assert py["lang"] == "python" and '<span class="k">def</span>' in py["html"]
    assert plain["lang"] == "text" and "&lt;b&gt;" in plain["html"]
    await sub.unsubscribe()


async def test_bad_params_are_clear_errors(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    ca, _ = await chat.connect(alice)
    for method, params in [
        ("channels.create", {"name": "Bad Name!"}),
        ("channels.create", {"name": "ok", "unknown": 1}),
        ("messages.send", {"channel_id": "c1", "text": ""}),
        ("messages.send", {"channel_id": "c1", "text": "x" * 40_001}),
        ("messages.list", {"channel_id": "c1", "limit": 1000}),
        ("reactions.add", {"message_id": "x", "emoji": "a"}),
    ]:
        with pytest.raises(ReplyError) as err:
            await ca.rpc(method, params)
        assert err.value.code == 400, (method, params)
        assert err.value.message.startswith("bad_request: ")
    with pytest.raises(ReplyError) as err:
        await ca.rpc("no.such.method", {})
    assert err.value.code == 104  # Centrifugo's "method not found"
    await asyncio.sleep(0)


async def test_unread_counts_stop_at_a_cap(chat: ChatEnv) -> None:
    """A member far behind gets "1000+" (``more``), not a scan of the whole channel."""
    alice, bob = await chat.user("alice"), await chat.user("bob")
    cb, _ = await chat.connect(bob)
    ca, _ = await chat.connect(alice)
    ch = (await rpc(ca, "channels.create", name=f"cap-{alice}", members=[bob]))["channel"]
    db = await chat.db()
    try:
        # Bulk history straight into the table (what an import would do).
        await db.execute("""INSERT INTO chat_messages (channel_id, author_id, text, mentions)
                            SELECT $1, $2, 'm' || g, CASE WHEN g % 2 = 0 THEN ARRAY[$3] ELSE '{}' END
                            FROM generate_series(1, 1005) g""", ch["id"], alice, bob)
    finally:
        await db.close()
    counts = {c["channel_id"]: c for c in (await rpc(cb, "unread.counts"))["channels"]}
    assert counts[ch["id"]]["unread"] == 1000 and counts[ch["id"]]["more"] is True
    assert counts[ch["id"]]["mentions"] == 500
    page = await rpc(cb, "messages.list", channel_id=ch["id"], limit=1)
    await rpc(cb, "read.mark", channel_id=ch["id"], message_id=page["messages"][0]["id"] - 10)
    counts = {c["channel_id"]: c for c in (await rpc(cb, "unread.counts"))["channels"]}
    assert counts[ch["id"]]["unread"] == 10 and counts[ch["id"]]["more"] is False


async def test_at_here_notifies_only_online_members(chat: ChatEnv) -> None:
    """`@here` is a mention for members with a connection right now, and nothing for the
    others (their personal channel's history stays without it)."""
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    ca, _ = await chat.connect(alice)
    cb, bev = await chat.connect(bob)
    ch = (await rpc(ca, "channels.create", name=f"h-{alice}", members=[bob, carol]))["channel"]
    here = (await rpc(ca, "messages.send", channel_id=ch["id"], text="@here standup"))["message"]
    note = await bev.next_where("publication", lambda c: c.pub.data.get("type") == "notification")
    assert (note.pub.data["kind"], note.pub.data["message_id"]) == ("mention", here["id"])
    # Carol was offline: a direct mention sent afterwards is the only notification she has.
    direct = (await rpc(ca, "messages.send", channel_id=ch["id"], text=f"@{carol} ping"))["message"]
    pubs: list[dict] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.post(f"{chat.srv.api_url}/history", headers={"X-API-Key": API_KEY},
                                 json={"channel": f"personal:#{carol}", "limit": 10}) as resp:
                pubs = [p for p in (await resp.json())["result"].get("publications", [])
                        if p["data"].get("type") == "notification"]
            if pubs:
                break
            await asyncio.sleep(0.05)
        # A wrongly sent @here notification could still be on its way: look once more.
        await asyncio.sleep(0.3)
        async with http.post(f"{chat.srv.api_url}/history", headers={"X-API-Key": API_KEY},
                             json={"channel": f"personal:#{carol}", "limit": 10}) as resp:
            pubs = [p for p in (await resp.json())["result"].get("publications", [])
                    if p["data"].get("type") == "notification"]
    assert [p["data"]["message_id"] for p in pubs] == [direct["id"]]
