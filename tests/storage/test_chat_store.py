"""The chat store (storage/chat.py) on the session's real PostgreSQL: the statements the chat
service relies on, read back from the tables, and the transaction rule of ``write()``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from storage.chat import ChatStore, NameTaken
from storage.migrate import migrate


@pytest.fixture
async def store(empty_dsn: str) -> AsyncIterator[ChatStore]:
    chat = await ChatStore.open(empty_dsn, pool_size=3)
    await migrate(chat.pool)
    try:
        yield chat
    finally:
        await chat.close()


async def _users(store: ChatStore, *ids: str) -> None:
    async with store.write() as q:
        for user in ids:
            await q.user_seen(user, display_name="", title="", manager="", email_enc=None, role="member")


async def test_first_sight_keeps_the_stored_role_and_fills_only_empty_fields(store: ChatStore) -> None:
    async with store.read() as q:
        assert await q.user_seen("ann", display_name="Ann", title="", manager="", email_enc=b"e1",
                                 role="owner") == "owner"
        # Seen again, listed as a member now: the stored role stays, set fields stay.
        assert await q.user_seen("ann", display_name="Other", title="CTO", manager="", email_enc=b"e2",
                                 role="member") == "owner"
        row = await q.user_with_status("ann")
        assert row is not None
        assert (row["display_name"], row["title"], bytes(row["email_enc"])) == ("Ann", "CTO", b"e1")
        assert row["away"] is None  # no status row yet
        assert await q.user_roles(["ann", "nobody"]) == {"ann": "owner"}


async def test_channels_members_and_name_clash(store: ChatStore) -> None:
    await _users(store, "ann", "bob", "cy")
    async with store.write() as q:
        ch = await q.create_channel("c1", kind="public", name="General", topic="t", created_by="ann")
        assert (ch["id"], ch["kind"], ch["archived"]) == ("c1", "public", False)
        await q.insert_members("c1", [("ann", "admin"), ("bob", "member")])
    with pytest.raises(NameTaken):
        async with store.write() as q:
            await q.create_channel("c2", kind="private", name="general", topic="", created_by="bob")
    async with store.write() as q:
        added = await q.join("c1", ["bob", "cy"])
        assert [r["user_id"] for r in added] == ["cy"]  # bob was in already
        assert await q.member_role("c1", "ann") == "admin"
        assert await q.member_role("c1", "nobody") is None
        assert await q.members_of(["c1"]) == {"c1": ["ann", "bob", "cy"]}
        assert isinstance(await q.remove_member("c1", "cy"), datetime)
        assert await q.remove_member("c1", "cy") is None
        assert await q.set_muted("c1", "bob", True) is True
        assert await q.set_muted("c1", "cy", True) is False
    async with store.read() as q:
        listed = await q.channels_of("cy", public=True, include_archived=False)
        assert [(r["id"], r["member_role"], r["muted"]) for r in listed] == [("c1", None, False)]
        assert await q.channels_of("cy", public=False, include_archived=False) == []
        assert await q.previewed_public_channels("cy") == ["c1"]
        assert (await q.archive("c1"))["archived"] is True
        assert await q.channels_of("bob", public=True, include_archived=False) == []


async def test_a_failed_write_leaves_nothing(store: ChatStore, empty_dsn: str) -> None:
    await _users(store, "ann")
    with pytest.raises(RuntimeError):
        async with store.write() as q:
            await q.create_channel("c9", kind="public", name="gone", topic="", created_by="ann")
            await q.audit(actor="ann", action="channel.create", target="channel:c9")
            raise RuntimeError("refused after the insert")
    async with store.read() as q:
        assert await q.channel("c9") is None
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 0
    finally:
        await conn.close()


async def test_messages_threads_reactions_and_unread(store: ChatStore) -> None:
    await _users(store, "ann", "bob")
    async with store.write() as q:
        await q.create_channel("c1", kind="public", name="dev", topic="", created_by="ann")
        await q.insert_members("c1", [("ann", "admin"), ("bob", "member")])

        async def send(text: str, key: str | None = None, parent: int | None = None,
                       mentions: list[str] | None = None) -> asyncpg.Record | None:
            return await q.insert_message(channel_id="c1", author="ann", client_msg_id=key, text=text,
                                          rendered="[]", thread_parent=parent, also_to_channel=False,
                                          mentions=mentions or [])

        first = await send("hello @bob", "k1", mentions=["bob"])
        assert first is not None
        # The same client_msg_id again: nothing inserted, the first one found by it.
        assert await send("hello again", "k1") is None
        found = await q.message_by_client_id("ann", "k1")
        assert found is not None and found["id"] == first["id"]
        reply = await send("in thread", parent=first["id"])
        assert reply is not None
        parent = await q.count_reply(first["id"], "bob", reply["created_at"])
        assert (parent["reply_count"], list(parent["reply_users"])) == (1, ["bob"])
        await q.follow([(first["id"], "ann"), (first["id"], "ann"), (first["id"], "bob")])
        await q.unfollow(first["id"], "ann")
        second = await send("second")
        assert second is not None
        await q.keep_version(second, "ann")
        edited = await q.edit_message(second["id"], text="second!", rendered="[]", mentions=[])
        assert (edited["text"], edited["version"]) == ("second!", 2)
        deleted = await q.delete_message(second["id"])
        assert (deleted["text"], deleted["deleted"], deleted["version"]) == ("", True, 3)
        assert isinstance(await q.add_reaction(first["id"], "bob", ":+1:"), datetime)
        assert await q.add_reaction(first["id"], "bob", ":+1:") is None
        await q.add_reaction(first["id"], "ann", ":+1:")
        assert isinstance(await q.pin("c1", first["id"], "ann"), datetime)
        assert await q.pin("c1", first["id"], "ann") is None
    async with store.read() as q:
        assert await q.followers(first["id"]) == {"bob"}
        assert [v["text"] for v in await q.versions(second["id"])] == ["second"]
        # In reaction order; both came in one transaction (the same now()), so by user id.
        assert await q.reactions([first["id"], second["id"]]) == {first["id"]: {":+1:": ["ann", "bob"]}}
        # The timeline leaves out thread-only replies.
        after = await q.timeline_after("c1", 0, 10)
        assert [r["id"] for r in after] == [first["id"], second["id"]]
        before = await q.timeline_before("c1", second["id"], 10)
        assert [r["id"] for r in before] == [first["id"]]
        assert [r["id"] for r in await q.replies(first["id"], 0, 10)] == [reply["id"]]
        assert [r["id"] for r in await q.pinned("c1")] == [first["id"]]
        assert [r["id"] for r in await q.messages([second["id"], first["id"]])] == [first["id"], second["id"]]
        unread = {r["channel_id"]: (r["unread"], r["mentions"]) for r in await q.unread("bob", 1001)}
        assert unread == {"c1": (1, 1)}  # the deleted one and the thread-only reply do not count
        assert await q.mark_read("c1", "bob", first["id"]) is True
        assert [r["unread"] for r in await q.unread("bob", 1001)] == [0]
        candidates = await q.notify_candidates("c1", exclude="ann")
        assert [r["user_id"] for r in candidates] == ["bob"]
        among = await q.notify_candidates_among("c1", ["bob", "nobody"])
        assert [r["user_id"] for r in among] == ["bob"]


async def test_status_fields_change_only_when_given(store: ChatStore) -> None:
    await _users(store, "ann")
    until = datetime(2100, 1, 1, tzinfo=UTC)
    async with store.write() as q:
        await q.set_status("ann", away=True, dnd_until=until, text="lunch", emoji=None, until=None,
                           set_dnd=True, set_until=False)
        await q.set_status("ann", away=None, dnd_until=None, text=None, emoji=":x:", until=None,
                           set_dnd=False, set_until=False)
        row = await q.status("ann")
    assert row is not None
    assert (row["away"], row["dnd_until"], row["status_text"], row["status_emoji"]) == \
        (True, until, "lunch", ":x:")
    async with store.write() as q:
        await q.upsert_user("ann", display_name=None, title="Lead", manager=None, role="admin",
                            email_enc=None)
        fields = await q.user_fields("ann")
    assert fields is not None and (fields["title"], fields["role"]) == ("Lead", "admin")

