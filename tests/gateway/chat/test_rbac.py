"""Negative RBAC tests: every rule through every path (RPC over the real centrifuge-python
client, the /v1/ HTTP API, Centrifugo subscribe / history / presence / recovery, and the
notifications on personal channels)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from centrifuge import Client, ReplyError, StreamPosition, SubscriptionState

from tests.gateway.chat.conftest import ChatEnv, rpc
from tests.sdk import TIMEOUT, ClientEvents, SubEvents, api

PERMISSION_DENIED = 103
SECRET_TEXT = "the merger closes friday"


async def rpc_code(aw: Awaitable[Any]) -> int:
    """The error code of an RPC (or other SDK call) that must fail."""
    with pytest.raises(ReplyError) as err:
        await aw
    return err.value.code


async def subscribe_refused(client: Client, channel: str, **kwargs: Any) -> int:
    """Subscribe through the SDK and return the code it was refused with."""
    events = SubEvents()
    sub = client.new_subscription(channel, events, **kwargs)
    await sub.subscribe()
    ctx = await events.next("unsubscribed")
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert not events.seen("publication")
    client.remove_subscription(sub)
    return ctx.code


@dataclass
class Private:
    """A private channel and a DM of alice and bob, with a message (and thread) in each;
    eve is in neither."""

    alice: str
    bob: str
    eve: str
    ca: Client
    cb: Client
    ce: Client
    eve_events: ClientEvents
    channel: dict[str, Any]
    dm: dict[str, Any]
    messages: dict[str, dict[str, Any]]  # channel id -> a message in it


async def private_setup(chat: ChatEnv) -> Private:
    alice, bob, eve = await chat.user("alice"), await chat.user("bob"), await chat.user("eve")
    ca, _ = await chat.connect(alice)
    cb, _ = await chat.connect(bob)
    ce, eve_events = await chat.connect(eve)
    channel = (await rpc(ca, "channels.create", name=f"p-{alice}", private=True, members=[bob]))["channel"]
    dm = (await rpc(ca, "dm.open", user_ids=[bob]))["channel"]
    messages = {}
    for ch in (channel, dm):
        msg = (await rpc(ca, "messages.send", channel_id=ch["id"], text=SECRET_TEXT))["message"]
        await rpc(cb, "messages.send", channel_id=ch["id"], text="reply", thread_parent=msg["id"])
        await rpc(ca, "pins.add", message_id=msg["id"])
        messages[ch["id"]] = msg
    return Private(alice, bob, eve, ca, cb, ce, eve_events, channel, dm, messages)


# ---- a non-member and a private channel / DM --------------------------------------------


async def test_non_member_reads_and_writes_nothing_through_rpc(chat: ChatEnv) -> None:
    p = await private_setup(chat)
    admin = await chat.user("adm", role="admin")
    cadm, _ = await chat.connect(admin)
    for ch in (p.channel, p.dm):
        cid, mid = ch["id"], p.messages[ch["id"]]["id"]
        # Workspace admins are non-members too: private content is for members only.
        for client in (p.ce, cadm):
            for method, params in [
                ("messages.list", {"channel_id": cid}),
                ("pins.list", {"channel_id": cid}),
                ("threads.replies", {"message_id": mid}),
                ("threads.follow", {"message_id": mid}),
                ("messages.send", {"channel_id": cid, "text": "let me in"}),
                ("messages.send", {"channel_id": cid, "text": "x", "thread_parent": mid}),
                ("messages.edit", {"message_id": mid, "text": "x"}),
                ("messages.delete", {"message_id": mid}),
                ("messages.history", {"message_id": mid}),
                ("reactions.add", {"message_id": mid, "emoji": ":eyes:"}),
                ("reactions.remove", {"message_id": mid, "emoji": ":eyes:"}),
                ("pins.add", {"message_id": mid}),
                ("pins.remove", {"message_id": mid}),
                ("read.mark", {"channel_id": cid, "message_id": mid}),
                ("channels.join", {"channel_id": cid}),
                ("channels.leave", {"channel_id": cid}),
                ("channels.set_topic", {"channel_id": cid, "topic": "mine"}),
                ("channels.mute", {"channel_id": cid, "muted": True}),
                ("channels.archive", {"channel_id": cid}),
                ("channels.invite", {"channel_id": cid, "user_ids": [p.eve]}),
                ("channels.kick", {"channel_id": cid, "user_id": p.bob}),
            ]:
                if method == "messages.history" and client is p.ce:
                    continue  # not an admin: refused before anything is looked up (403)
                # 404, exactly as for a channel that does not exist: no existence leak.
                assert await rpc_code(rpc(client, method, **params)) == 404, (ch["kind"], method)
            assert cid not in {c["id"] for c in (await rpc(client, "channels.list"))["channels"]}
            assert cid not in {c["channel_id"] for c in (await rpc(client, "unread.counts"))["channels"]}
        # Eve posting into the DM from elsewhere: a thread parent of another channel is no way in.
        mine = (await rpc(p.ce, "channels.create", name=f"e-{p.eve}-{ch['kind']}"))["channel"]
        assert await rpc_code(rpc(p.ce, "messages.send", channel_id=mine["id"], text="x",
                                  thread_parent=mid)) == 404
    # Nothing eve or the admin tried changed anything.
    page = await rpc(p.ca, "messages.list", channel_id=p.channel["id"])
    assert [m["text"] for m in page["messages"]] == [SECRET_TEXT]
    assert page["messages"][0]["reactions"] == {} and page["messages"][0]["version"] == 1


async def test_non_member_reads_nothing_through_http(chat: ChatEnv) -> None:
    p = await private_setup(chat)
    eye = quote(":eyes:", safe="")
    for ch in (p.channel, p.dm):
        cid, mid = ch["id"], p.messages[ch["id"]]["id"]
        for method, path, body in [
            ("GET", f"/v1/channels/{cid}/messages", None),
            ("GET", f"/v1/channels/{cid}/pins", None),
            ("GET", f"/v1/messages/{mid}/replies", None),
            ("PUT", f"/v1/messages/{mid}/follow", {}),
            ("POST", f"/v1/channels/{cid}/messages", {"text": "let me in"}),
            ("PATCH", f"/v1/messages/{mid}", {"text": "x"}),
            ("DELETE", f"/v1/messages/{mid}", None),
            ("PUT", f"/v1/messages/{mid}/reactions/{eye}", None),
            ("DELETE", f"/v1/messages/{mid}/reactions/{eye}", None),
            ("PUT", f"/v1/messages/{mid}/pin", None),
            ("DELETE", f"/v1/messages/{mid}/pin", None),
            ("POST", f"/v1/channels/{cid}/read", {"message_id": mid}),
            ("POST", f"/v1/channels/{cid}/join", None),
            ("PUT", f"/v1/channels/{cid}/topic", {"topic": "mine"}),
            ("POST", f"/v1/channels/{cid}/invite", {"user_ids": [p.eve]}),
            ("POST", f"/v1/channels/{cid}/archive", None),
        ]:
            r = await chat.http(method, path, p.eve, body)
            assert r.status == 404 and r.body["error"]["code"] == "not_found", (ch["kind"], method, path, r)
            assert SECRET_TEXT not in str(r.body)
        listed = (await chat.ok("GET", "/v1/channels", p.eve))["channels"]
        assert cid not in {c["id"] for c in listed}
        r = await chat.http("GET", f"/v1/messages/{mid}/versions", p.eve)
        assert r.status == 403


async def test_non_member_subscribe_history_presence_refused(chat: ChatEnv) -> None:
    p = await private_setup(chat)
    for ch in (p.channel, p.dm):
        name = ch["subscription"]
        assert await subscribe_refused(p.ce, name) == PERMISSION_DENIED
        # A subscription token for the channel does not override the membership check.
        token = chat.srv.token(p.eve, channel=name)
        assert await subscribe_refused(p.ce, name, token=token) == PERMISSION_DENIED
        assert await rpc_code(p.ce.history(name, limit=10)) == PERMISSION_DENIED
        assert await rpc_code(p.ce.presence(name)) == PERMISSION_DENIED
        assert await rpc_code(p.ce.presence_stats(name)) == PERMISSION_DENIED
        # Asked directly, the product answers no for each action the protocol asks about.
        check = chat.srv.node.access_providers["chat"]
        for action in ("subscribe", "history", "presence"):
            assert await check(p.eve, name, action) is False
            assert await check(p.bob, name, action) is True
    assert await chat.srv.node.access_providers["chat"](p.eve, "chat:cnosuchchannel", "subscribe") is False
    # The members themselves may.
    sub, _ = await chat.sdk.subscribe(p.cb, p.channel["subscription"])
    hist = await p.cb.history(p.channel["subscription"], limit=10)
    assert hist.publications
    await sub.unsubscribe()


async def test_kicked_member_loses_subscription_history_presence_and_recovery(chat: ChatEnv) -> None:
    p = await private_setup(chat)
    name = p.channel["subscription"]
    page = await rpc(p.cb, "messages.list", channel_id=p.channel["id"])
    position = StreamPosition(offset=page["position"]["offset"], epoch=page["position"]["epoch"])
    sub, sev = await chat.sdk.subscribe(p.cb, name)
    assert (await p.cb.presence_stats(name)).num_users >= 1
    await rpc(p.ca, "channels.kick", channel_id=p.channel["id"], user_id=p.bob)
    # The live subscription ends at once (server-side unsubscribe).
    await sev.next("unsubscribed")
    await rpc(p.ca, "messages.send", channel_id=p.channel["id"], text=f"after the kick: {SECRET_TEXT}")
    assert await rpc_code(p.cb.history(name, limit=10)) == PERMISSION_DENIED
    assert await rpc_code(p.cb.presence(name)) == PERMISSION_DENIED
    p.cb.remove_subscription(sub)

    # Recovery from a position bob held while a member: refused, nothing replayed.
    async def get_state(_channel: str) -> StreamPosition:
        return position

    assert await subscribe_refused(p.cb, name, get_state=get_state) == PERMISSION_DENIED
    # Also from a fresh connection (a reconnecting client recovering its saved position).
    fresh, _ = await chat.connect(p.bob)
    assert await subscribe_refused(fresh, name, get_state=get_state) == PERMISSION_DENIED
    assert not [pub for pub in sev.seen("publication") if "after the kick" in str(pub.pub.data)]
    assert await rpc_code(rpc(p.cb, "messages.list", channel_id=p.channel["id"])) == 404
    # The same recovery by a member succeeds and replays what bob was refused: the refusal
    # above is the membership check, not a position the server could not recover from.
    mine, mev = await chat.sdk.subscribe(p.ca, name, get_state=get_state)
    ctx = mev.seen("subscribed")[0]
    assert ctx.was_recovering and ctx.recovered
    replayed = [(await mev.next("publication")).pub.data for _ in range(2)]
    assert [e["type"] for e in replayed] == ["member.left", "message.created"]
    assert replayed[1]["message"]["text"].startswith("after the kick")
    await mine.unsubscribe()


async def test_demoted_to_guest_loses_public_channel_history_and_presence(chat: ChatEnv) -> None:
    """A subscriber who may no longer see the channel is refused history and presence by the
    product (the namespace alone would allow a subscriber), and its live subscription ends."""
    alice, bob = await chat.user("alice"), await chat.user("bob")
    ca, _ = await chat.connect(alice)
    cb, _ = await chat.connect(bob)
    ch = (await rpc(ca, "channels.create", name=f"pub-{alice}"))["channel"]
    name = ch["subscription"]
    sub, sev = await chat.sdk.subscribe(cb, name)  # public: visible to bob without joining
    await cb.history(name, limit=1)
    r = await chat.admin("PUT", f"/v1/admin/users/{bob}", {"role": "guest"})
    assert r.status == 200
    await sev.next("unsubscribed")
    assert await rpc_code(cb.history(name, limit=10)) == PERMISSION_DENIED
    assert await rpc_code(cb.presence(name)) == PERMISSION_DENIED
    cb.remove_subscription(sub)
    assert await subscribe_refused(cb, name) == PERMISSION_DENIED


async def test_client_cannot_publish_into_chat_channels(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    ca, _ = await chat.connect(alice)
    ch = (await rpc(ca, "channels.create", name=f"pubx-{alice}"))["channel"]
    sub, _ = await chat.sdk.subscribe(ca, ch["subscription"])
    # Even the channel's admin, subscribed: chat events come from the service only.
    assert await rpc_code(sub.publish({"type": "message.created", "message": {"text": "forged"}})) == 103
    assert await rpc_code(ca.publish(ch["subscription"], {"forged": True})) == 103
    assert (await rpc(ca, "messages.list", channel_id=ch["id"]))["messages"] == []
    await sub.unsubscribe()


# ---- messages: edit and delete ----------------------------------------------------------


async def test_edit_and_delete_someone_elses_message(chat: ChatEnv) -> None:
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    wsadmin = await chat.user("adm", role="admin")
    ca, _ = await chat.connect(alice)
    cb, _ = await chat.connect(bob)
    cc, _ = await chat.connect(carol)
    cw, _ = await chat.connect(wsadmin)
    ch = (await rpc(ca, "channels.create", name=f"ed-{alice}", members=[bob, carol]))["channel"]
    m1 = (await rpc(cb, "messages.send", channel_id=ch["id"], text="bob's 1"))["message"]
    m2 = (await rpc(cb, "messages.send", channel_id=ch["id"], text="bob's 2"))["message"]
    m3 = (await rpc(cb, "messages.send", channel_id=ch["id"], text="bob's 3"))["message"]

    # Nobody rewrites another's words: not a member, not the channel admin, not a workspace admin.
    for client in (cc, ca, cw):
        assert await rpc_code(rpc(client, "messages.edit", message_id=m1["id"], text="x")) == 403
    r = await chat.http("PATCH", f"/v1/messages/{m1['id']}", carol, {"text": "x"})
    assert r.status == 403 and r.body["error"]["code"] == "forbidden"
    # A plain member may not delete it ...
    assert await rpc_code(rpc(cc, "messages.delete", message_id=m1["id"])) == 403
    r = await chat.http("DELETE", f"/v1/messages/{m1['id']}", carol)
    assert r.status == 403
    # ... the channel admin may, and a workspace admin (not even a member) may.
    await rpc(ca, "messages.delete", message_id=m1["id"])
    assert (await chat.http("DELETE", f"/v1/messages/{m2['id']}", wsadmin)).status == 200
    # The author may delete its own.
    await rpc(cb, "messages.delete", message_id=m3["id"])
    page = (await rpc(cc, "messages.list", channel_id=ch["id"]))["messages"]
    assert [m["deleted"] for m in page] == [True, True, True]
    # Message versions are for workspace admins only.
    for client in (cb, cc, ca):
        assert await rpc_code(rpc(client, "messages.history", message_id=m1["id"])) == 403
    assert (await chat.http("GET", f"/v1/messages/{m1['id']}/versions", alice)).status == 403
    hist = await rpc(cw, "messages.history", message_id=m1["id"])
    assert [v["text"] for v in hist["versions"]] == ["bob's 1"]


async def test_workspace_admin_deletes_in_private_channel_only_as_member(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    wsadmin = await chat.user("adm", role="admin")
    ca, _ = await chat.connect(alice)
    cw, _ = await chat.connect(wsadmin)
    ch = (await rpc(ca, "channels.create", name=f"pd-{alice}", private=True, members=[bob]))["channel"]
    msg = (await rpc(ca, "messages.send", channel_id=ch["id"], text="x"))["message"]
    assert await rpc_code(rpc(cw, "messages.delete", message_id=msg["id"])) == 404
    await rpc(ca, "channels.invite", channel_id=ch["id"], user_ids=[wsadmin])
    await rpc(cw, "messages.delete", message_id=msg["id"])


# ---- guests -------------------------------------------------------------------------


async def test_guest_sees_only_channels_it_was_added_to(chat: ChatEnv) -> None:
    alice, guest = await chat.user("alice"), await chat.user("guest", role="guest")
    ca, _ = await chat.connect(alice)
    cg, _ = await chat.connect(guest)
    added = (await rpc(ca, "channels.create", name=f"ga-{alice}", members=[guest]))["channel"]
    other = (await rpc(ca, "channels.create", name=f"go-{alice}"))["channel"]
    private = (await rpc(ca, "channels.create", name=f"gp-{alice}", private=True))["channel"]
    await rpc(ca, "messages.send", channel_id=other["id"], text=SECRET_TEXT)

    listed = {c["id"] for c in (await rpc(cg, "channels.list"))["channels"]}
    assert added["id"] in listed and other["id"] not in listed and private["id"] not in listed
    http_listed = {c["id"] for c in (await chat.ok("GET", "/v1/channels", guest))["channels"]}
    assert http_listed == listed
    # The public channel it is not in is invisible: no reading, no joining, no subscribing.
    for method, params in [("channels.join", {"channel_id": other["id"]}),
                           ("messages.list", {"channel_id": other["id"]}),
                           ("pins.list", {"channel_id": other["id"]}),
                           ("channels.join", {"channel_id": private["id"]})]:
        assert await rpc_code(rpc(cg, method, **params)) == 404, method
    assert (await chat.http("POST", f"/v1/channels/{other['id']}/join", guest)).status == 404
    assert await subscribe_refused(cg, other["subscription"]) == PERMISSION_DENIED
    assert await rpc_code(cg.history(other["subscription"], limit=10)) == PERMISSION_DENIED
    # No channel creation, public or private, through either transport.
    for private_flag in (False, True):
        assert await rpc_code(rpc(cg, "channels.create", name=f"g-{guest}", private=private_flag)) == 403
        r = await chat.http("POST", "/v1/channels", guest, {"name": f"g-{guest}", "private": private_flag})
        assert r.status == 403 and r.body["error"]["code"] == "forbidden"
    # Where it was added, it takes part like a member.
    sub, _ = await chat.sdk.subscribe(cg, added["subscription"])
    await rpc(cg, "messages.send", channel_id=added["id"], text="hello from a guest")
    await sub.unsubscribe()


# ---- membership and channel administration ------------------------------------------------


async def test_plain_member_cannot_invite_kick_or_archive(chat: ChatEnv) -> None:
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    dave = await chat.user("dave")
    wsadmin = await chat.user("adm", role="admin")
    ca, _ = await chat.connect(alice)
    cb, _ = await chat.connect(bob)
    cw, _ = await chat.connect(wsadmin)
    for private in (False, True):
        ch = (await rpc(ca, "channels.create", name=f"k{int(private)}-{alice}", private=private,
                        members=[bob, carol]))["channel"]
        cid = ch["id"]
        assert await rpc_code(rpc(cb, "channels.invite", channel_id=cid, user_ids=[dave])) == 403
        assert await rpc_code(rpc(cb, "channels.kick", channel_id=cid, user_id=carol)) == 403
        assert await rpc_code(rpc(cb, "channels.kick", channel_id=cid, user_id=alice)) == 403
        assert await rpc_code(rpc(cb, "channels.archive", channel_id=cid)) == 403
        for path, body in [(f"/v1/channels/{cid}/invite", {"user_ids": [dave]}),
                           (f"/v1/channels/{cid}/kick", {"user_id": carol}),
                           (f"/v1/channels/{cid}/archive", None)]:
            r = await chat.http("POST", path, bob, body)
            assert r.status == 403 and r.body["error"]["code"] == "forbidden", path
        members = (await rpc(ca, "channels.list"))["channels"]
        assert next(c for c in members if c["id"] == cid)["archived"] is False
        # A workspace admin archives a public channel without being in it; a private one
        # it cannot even see.
        if private:
            assert await rpc_code(rpc(cw, "channels.archive", channel_id=cid)) == 404
        else:
            assert (await rpc(cw, "channels.archive", channel_id=cid))["channel"]["archived"] is True
    # DMs have no admins: nobody invites into or kicks from them.
    dm = (await rpc(ca, "dm.open", user_ids=[bob]))["channel"]
    assert await rpc_code(rpc(ca, "channels.invite", channel_id=dm["id"], user_ids=[carol])) == 403
    assert await rpc_code(rpc(ca, "channels.kick", channel_id=dm["id"], user_id=bob)) == 403
    assert await rpc_code(rpc(ca, "channels.archive", channel_id=dm["id"])) == 403


async def test_status_of_another_user_needs_the_api_key(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    admin = await chat.user("adm", role="owner")
    ca, _ = await chat.connect(alice)
    cadm, _ = await chat.connect(admin)
    for client in (ca, cadm):  # not even the workspace owner, without the API key
        assert await rpc_code(rpc(client, "presence.set_status", user_id=bob, text="hacked")) == 403
    r = await chat.http("PUT", "/v1/status", alice, {"user_id": bob, "text": "hacked"})
    assert r.status == 403
    seen = (await rpc(ca, "users.get", user_id=bob))["user"]
    assert seen["status"]["text"] == ""


# ---- notifications --------------------------------------------------------------------


async def test_private_content_never_reaches_non_members_as_notifications(chat: ChatEnv) -> None:
    p = await private_setup(chat)
    cid = p.channel["id"]
    personal = f"personal:#{p.eve}"
    # eve follows a thread while a member, then is kicked: no thread replies afterwards.
    await rpc(p.ca, "channels.invite", channel_id=cid, user_ids=[p.eve])
    root = (await rpc(p.ca, "messages.send", channel_id=cid, text="root"))["message"]
    await rpc(p.ce, "threads.follow", message_id=root["id"])
    await rpc(p.ca, "channels.kick", channel_id=cid, user_id=p.eve)
    await p.eve_events.next_where("publication", lambda c: c.channel == personal
                                  and c.pub.data.get("type") == "member.left")

    secret = f"@{p.eve} @channel @here {SECRET_TEXT}"
    await rpc(p.ca, "messages.send", channel_id=cid, text=secret)
    await rpc(p.cb, "messages.send", channel_id=cid, text=f"{SECRET_TEXT} in thread", thread_parent=root["id"])
    await rpc(p.ca, "messages.send", channel_id=p.dm["id"], text=f"@{p.eve} {SECRET_TEXT}")
    # A notification eve is entitled to, sent last: once it arrives, anything the earlier
    # sends pushed to eve's personal channel (they push before acknowledging) is in too.
    marker = (await rpc(p.ca, "dm.open", user_ids=[p.eve]))["channel"]
    sent = (await rpc(p.ca, "messages.send", channel_id=marker["id"], text="marker"))["message"]
    await p.eve_events.next_where("publication", lambda c: c.channel == personal
                                  and c.pub.data.get("message_id") == sent["id"], timeout=TIMEOUT)
    seen = [c.pub.data for c in p.eve_events.seen("publication") if c.channel == personal]
    assert not [d for d in seen if d.get("channel_id") in (cid, p.dm["id"])
                and d.get("type") == "notification"], seen
    assert SECRET_TEXT not in str(seen)
    # Nor is it in the personal channel's history, for a client that recovers later.
    hist = await api(chat.srv, "history", channel=personal, limit=100)
    assert "marker" in str(hist["publications"])  # the history is readable as text ...
    assert SECRET_TEXT not in str(hist["publications"])  # ... and holds no private content
