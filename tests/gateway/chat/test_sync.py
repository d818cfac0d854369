"""Client sync: `messages.list` (stream position read first) + subscribe with recovery from
that position, through the real centrifuge-python client's ``get_state``. A client that
drops for a while and comes back sees exactly the events it missed — new messages, edits,
deletes, reactions — none twice, none lost."""

from __future__ import annotations

import asyncio
from typing import Any

from centrifuge import Client, StreamPosition

from tests.gateway.chat.conftest import ChatEnv, rpc
from tests.sdk import ClientEvents, SubEvents, eventually


class Replica:
    """A client-side copy of a channel timeline, updated idempotently from events."""

    def __init__(self) -> None:
        self.messages: dict[int, dict[str, Any]] = {}
        self.offsets: list[int] = []
        self.events: list[tuple[str, Any]] = []

    def load(self, page: list[dict[str, Any]]) -> None:
        for m in page:
            self.put(m)

    def put(self, m: dict[str, Any]) -> None:
        have = self.messages.get(m["id"])
        if have is None or have["version"] <= m["version"]:
            self.messages[m["id"]] = m

    def apply(self, offset: int, ev: dict[str, Any]) -> None:
        self.offsets.append(offset)
        kind = ev["type"]
        if kind in ("message.created", "message.updated"):
            self.events.append((kind, (ev["message"]["id"], ev["message"]["version"])))
            self.put(ev["message"])
        elif kind == "message.deleted":
            self.events.append((kind, ev["message_id"]))
            m = self.messages.get(ev["message_id"])
            if m is not None and m["version"] <= ev["version"]:
                m.update(deleted=True, text="", version=ev["version"])
        elif kind in ("reaction.added", "reaction.removed"):
            self.events.append((kind, (ev["message_id"], ev["emoji"], ev["user_id"])))
            m = self.messages.get(ev["message_id"])
            if m is not None:
                users = m.setdefault("reactions", {}).setdefault(ev["emoji"], [])
                if kind == "reaction.added" and ev["user_id"] not in users:
                    users.append(ev["user_id"])
                elif kind == "reaction.removed" and ev["user_id"] in users:
                    users.remove(ev["user_id"])
                if not users:
                    del m["reactions"][ev["emoji"]]

    def view(self) -> dict[int, tuple[str, int, bool, dict[str, list[str]]]]:
        return {i: (m["text"], m["version"], m["deleted"], m.get("reactions") or {})
                for i, m in self.messages.items()}


async def server_view(client: Client, channel_id: str) -> dict[int, tuple[str, int, bool, dict[str, list[str]]]]:
    out: dict[int, Any] = {}
    after = 0
    while True:
        page = await rpc(client, "messages.list", channel_id=channel_id, after=after, limit=200) if after else \
            await rpc(client, "messages.list", channel_id=channel_id, limit=200)
        for m in page["messages"]:
            out[m["id"]] = (m["text"], m["version"], m["deleted"], m["reactions"])
        if not page["has_more"] or not page["messages"]:
            return out
        after = page["messages"][-1]["id"]


async def test_drop_and_come_back_sees_exactly_what_was_missed(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    ca, _ = await chat.connect(alice)
    ch = (await rpc(ca, "channels.create", name=f"sync-{alice}", members=[bob]))["channel"]
    early = [(await rpc(ca, "messages.send", channel_id=ch["id"], text=f"early {i}"))["message"]
             for i in range(5)]

    gate = asyncio.Event()
    bev = ClientEvents(hold_reconnect=gate)
    bob_client = Client(chat.srv.ws_url, token=chat.token(bob), events=bev, proxy=None,
                        max_reconnect_delay=0.5)
    chat.sdk.clients.append((bob_client, bev))
    replica = Replica()
    loads = 0

    async def get_state(_channel: str) -> StreamPosition:
        # messages.list reads the stream position before the page (lower bound).
        nonlocal loads
        loads += 1
        page = await rpc(bob_client, "messages.list", channel_id=ch["id"], limit=200)
        replica.load(page["messages"])
        # Racing writes between the page and the subscription arrive as recovered events.
        await rpc(ca, "messages.send", channel_id=ch["id"], text="racing the subscribe")
        return StreamPosition(offset=page["position"]["offset"], epoch=page["position"]["epoch"])

    class Events(SubEvents):
        async def on_publication(self, ctx: Any) -> None:
            replica.apply(ctx.pub.offset, ctx.pub.data)
            await super().on_publication(ctx)

    sev = Events()
    sub = bob_client.new_subscription(ch["subscription"], sev, get_state=get_state)
    await bob_client.connect()
    await sub.subscribe()
    first = await sev.next("subscribed")
    assert loads == 1 and first.recovered
    await rpc(ca, "messages.edit", message_id=early[0]["id"], text="early 0 (edited)")

    async def caught_up() -> bool:
        return replica.view() == await server_view(ca, ch["id"])

    await eventually(caught_up)

    # Bob is cut off and held offline; meanwhile messages are sent, edited, deleted, reacted to.
    chat.srv.node.connections[bob_client.client_id].transport.abort()
    await bev.next_where("connecting", lambda c: c.code != 0)
    missed = []
    for i in range(30):
        missed.append((await rpc(ca, "messages.send", channel_id=ch["id"], text=f"missed {i}"))["message"])
    for m in missed[:5]:
        await rpc(ca, "messages.edit", message_id=m["id"], text=m["text"] + " (edited)")
    for m in [*missed[5:8], early[1]]:
        await rpc(ca, "messages.delete", message_id=m["id"])
    await rpc(ca, "reactions.add", message_id=missed[10]["id"], emoji=":eyes:")
    await rpc(ca, "reactions.add", message_id=missed[11]["id"], emoji=":tada:")
    await rpc(ca, "reactions.remove", message_id=missed[11]["id"], emoji=":tada:")
    seen_before = len(replica.offsets)

    gate.set()
    back = await sev.next_where("subscribed", lambda c: c.was_recovering)
    assert back.recovered, "the missed events came back from the durable stream"
    assert loads == 1, "a recovered subscription does not reload the state"
    await eventually(caught_up)

    # Exactly the missed events, in order, none twice: 30 sends, 5 edits, 4 deletes, 3 reactions.
    after = replica.events[len(replica.events) - (len(replica.offsets) - seen_before):]
    assert [k for k, _ in after] == (["message.created"] * 30 + ["message.updated"] * 5
                                     + ["message.deleted"] * 4 + ["reaction.added"] * 2
                                     + ["reaction.removed"])
    assert replica.offsets == sorted(set(replica.offsets)), "no duplicated or reordered event"
    assert replica.offsets == list(range(replica.offsets[0], replica.offsets[0] + len(replica.offsets)))
    view = replica.view()
    assert view[missed[0]["id"]][0] == "missed 0 (edited)" and view[missed[0]["id"]][1] == 2
    assert view[early[1]["id"]][2] is True and view[missed[6]["id"]][2] is True
    assert view[missed[10]["id"]][3] == {":eyes:": [alice]} and view[missed[11]["id"]][3] == {}
    await sub.unsubscribe()
