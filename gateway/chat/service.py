"""The chat service layer: every operation once, whatever the transport (RPC or HTTP).

The service speaks domain (who may do what, which events follow); the SQL is
storage/chat.py's. Each write runs in one PostgreSQL transaction together with its audit
record; its real-time
event is then published into the channel's durable Centrifugo stream (``chat:<id>``) with an
idempotency key derived from the row (message id + version, ...), so a retry after a crash
or a lost reply republishes nothing twice, and a client that reads a page with
``messages.list`` and subscribes with recovery from the page's ``position`` sees every later
event exactly once per (event, id, version).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import orjson

from centrifugo_bridge.channels import personal_channel
from gateway.chat import directory, rbac, render
from gateway.chat import schema as s
from gateway.chat.errors import ChatError, bad_request, conflict, forbidden, not_found
from gateway.chat.ids import user_id_problem
from storage.chat import ChatQueries, ChatStore, NameTaken, Row

if TYPE_CHECKING:
    from gateway.chat.search import SearchService
    from gateway.config import ChatSettings
    from gateway.extension import Engine
    from storage.crypto import FieldCipher

log = logging.getLogger(__name__)

ROLE_CACHE_SECONDS = 2.0
NOTIFY_TEXT_CHARS = 200
PRESENCE_CHUNK = 200
"""Presence reads in flight at once for `@here` (bounded: a channel can have thousands)."""
UNREAD_CAP = 1000
# Going offline: how long the closed connection's presence may take to disappear.
OFFLINE_CHECKS = 10
OFFLINE_CHECK_INTERVAL = 0.1


class Actor(NamedTuple):
    """Who is calling: a user id (JWT ``sub``) and its workspace role."""

    id: str
    role: str


class MessageExtra(NamedTuple):
    """What an app's message carries beyond text (gateway/integrations): Block Kit blocks
    and the author's look (JSON strings, validated by the caller), and the app's id."""

    blocks: str | None = None
    app_id: str | None = None
    bot_profile: str | None = None


EventHook = Callable[[ChatQueries, str, str, dict[str, Any]], Awaitable[None]]
"""(queries of the write's transaction, event kind, channel id, facts) -> None: called
inside the transaction of a chat write, so that what it writes (the integrations' outbox)
commits or rolls back with the write itself. Kinds: ``message``, ``reaction_added``,
``member_joined_channel``."""


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _from_unix(seconds: int | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


class ChatService:
    """Operations of the chat product; ``engine`` publishes their events."""

    def __init__(self, engine: Engine, settings: ChatSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.namespace = settings.namespace
        self.status_namespace = settings.status_namespace
        self.store: ChatStore | None = None
        self.cipher: FieldCipher | None = None
        self._roles: dict[str, tuple[float, str]] = {}
        self._profiles: dict[str, bytes] = {}
        # Set by the integrations when they load: events for apps (their outbox).
        self.event_hook: EventHook | None = None
        # Set by the integrations when they load: link previews of a message just sent or
        # edited (it must return at once; the fetching runs as a spawned job).
        self.link_hook: Callable[[s.Message], None] | None = None
        self._dsn = ""
        self._search: SearchService | None = None
        self._search_lock = asyncio.Lock()

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self, dsn: str) -> None:
        """Open the pool (the schema is migrated by the node's storage start)."""
        from storage.crypto import FieldCipher

        self.cipher = FieldCipher.from_settings(self.settings)
        self.store = await ChatStore.open(dsn, self.settings.pool_size)
        self._dsn = dsn
        # In the background: a changed language re-indexes every message in batches.
        self.engine.spawn(self._apply_search_language(dsn))

    async def _apply_search_language(self, dsn: str) -> None:
        """Make message search stem in ``chat.search_language`` (docs/search.md)."""
        import asyncpg

        from storage.search import SearchIndexer

        conn = await asyncpg.connect(dsn)
        try:
            await SearchIndexer(conn).set_language(self.settings.search_language)
        except ValueError as exc:
            log.error("config key chat.search_language: %s; search keeps its language", exc)
        finally:
            await conn.close()

    async def stop(self) -> None:
        """Close the pools (the extension stops the service after its last job)."""
        if self.store is not None:
            await self.store.close()
        if self._search is not None:
            await self._search.store.close()
            self._search = None

    # ---- search (gateway/chat/search.py) ----------------------------------------------

    async def _searcher(self) -> SearchService:
        """The search service, its pool opened by the first search (on
        ``storage.search_dsn``, a read replica, when set): a chat nobody searches carries
        no second pool."""
        if self._search is None:
            async with self._search_lock:
                if self._search is None:
                    from gateway.chat.search import SearchService
                    from storage.search import SearchStore

                    dsn = self.engine.settings.storage.search_dsn or self._dsn
                    store = await SearchStore.open(dsn, max(2, self.settings.pool_size // 2))
                    self._search = SearchService(store, self._to_message, self._to_channel)
        return self._search

    async def search_messages(self, actor: Actor, p: s.SearchMessages) -> s.SearchMessagesResult:
        """Messages the caller may read matching a query (docs/search.md)."""
        return await (await self._searcher()).messages(actor, p)

    async def search_channels(self, actor: Actor, p: s.SearchNames) -> s.SearchChannelsResult:
        """Channels the caller may see, by name prefix, substring or likeness."""
        return await (await self._searcher()).channels(actor, p)

    async def search_users(self, actor: Actor, p: s.SearchNames) -> s.SearchUsersResult:
        """People by id or display name prefix, substring or likeness."""
        return await (await self._searcher()).people(actor, p)

    @property
    def db(self) -> ChatStore:
        assert self.store is not None, "ChatService.start() first"  # noqa: S101
        return self.store

    # ---- identity ---------------------------------------------------------------------

    def channel_name(self, channel_id: str) -> str:
        """The Centrifugo channel carrying a chat channel's events."""
        return f"{self.namespace}{self.engine.rules.namespace_boundary}{channel_id}"

    def personal(self, user: str) -> str:
        rules = self.engine.rules
        return personal_channel(user, self.engine.settings.client.personal_channel_namespace,
                                rules.user_boundary, rules.namespace_boundary)

    def status_channel(self, user: str) -> str:
        return f"{self.status_namespace}{self.engine.rules.namespace_boundary}{user}"

    async def actor(self, user: str, profile: dict[str, Any] | None = None) -> Actor:
        """The caller, created on first sight (role ``owner`` when listed in
        ``chat.owners``, else ``member``); profile fields from the token fill empty ones."""
        if not user:
            raise ChatError("unauthorized", "anonymous users cannot use the chat", 401)
        now = time.monotonic()
        if user not in self._roles:
            problem = user_id_problem(user)
            if problem is not None:
                # Never a user row for it; the reason goes to the log, not to the caller.
                log.warning("chat refused the token's user id %r: %s", user[:40], problem)
                raise ChatError("unauthorized", "the token's user id is not a valid chat user id", 401)
        cached = self._roles.get(user)
        if cached is not None and cached[0] > now:
            return Actor(user, cached[1])
        role = "owner" if user in self.settings.owners else "member"
        p = profile or {}
        name = str(p.get("name") or p.get("display_name") or "")[:200]
        title = str(p.get("title") or "")[:200]
        manager = str(p.get("manager") or "")[:64]
        email = p.get("email")
        email_enc = (self._encrypt_email(user, str(email)[:254]) if email else None)
        async with self.db.read() as q:
            stored = await q.user_seen(user, display_name=name, title=title, manager=manager,
                                       email_enc=email_enc, role=role)
        self._roles[user] = (now + ROLE_CACHE_SECONDS, stored)
        return Actor(user, stored)

    # ---- the web client's directory operations (directory.py) ---------------------------

    async def users_me(self, actor: Actor, p: s.NoParams) -> s.UserResult:
        return await directory.users_me(self, actor, p)

    async def channels_get(self, actor: Actor, p: s.ChannelRef) -> s.ChannelResult:
        return await directory.channels_get(self, actor, p)

    async def channels_members(self, actor: Actor, p: directory.ChannelMembers) -> directory.MembersPage:
        return await directory.channels_members(self, actor, p)

    async def users_search(self, actor: Actor, p: directory.UsersSearch) -> directory.UsersPage:
        return await directory.users_search(self, actor, p)

    def forget_role(self, user: str) -> None:
        """Drop the cached workspace role of ``user`` (an admin changed it)."""
        self._roles.pop(user, None)

    def _encrypt_email(self, user: str, email: str) -> bytes:
        assert self.cipher is not None  # noqa: S101
        return self.cipher.encrypt(email, aad=f"chat_users.email:{user}")

    def _decrypt_email(self, user: str, blob: bytes | None) -> str | None:
        if blob is None or self.cipher is None:
            return None
        return self.cipher.decrypt(bytes(blob), aad=f"chat_users.email:{user}")

    # ---- access (Centrifugo subscribe / history / presence) -----------------------------

    async def check_access(self, user: str, channel: str, action: str) -> bool:
        """Asked by the protocol layer before a subscription, history or presence read of
        a ``chat:`` channel: allowed exactly when the user may see the chat channel."""
        prefix = self.namespace + self.engine.rules.namespace_boundary
        if not user or not channel.startswith(prefix):
            return False
        try:
            actor = await self.actor(user)
            async with self.db.read() as q:
                await self._visible(q, actor, channel[len(prefix):])
        except ChatError:
            return False
        return True

    # ---- shared lookups ---------------------------------------------------------------

    async def _channel(self, q: ChatQueries, channel_id: str, *, lock: bool = False) -> Row:
        row = await q.channel(channel_id, lock=lock)
        if row is None:
            raise not_found("channel")
        return row

    async def _visible(self, q: ChatQueries, actor: Actor, channel_id: str, *,
                       lock: bool = False) -> tuple[Row, str | None]:
        """The channel and the caller's role in it; "not found" when it may not see it."""
        ch = await self._channel(q, channel_id, lock=lock)
        role = await q.member_role(channel_id, actor.id)
        if not rbac.can_see(actor.role, ch["kind"], role):
            raise not_found("channel")
        return ch, role

    async def _message(self, q: ChatQueries, actor: Actor, message_id: int, *,
                       lock: bool = False) -> tuple[Row, Row, str | None]:
        row = await q.message(message_id, lock=lock)
        if row is None:
            raise not_found("message")
        try:
            ch, role = await self._visible(q, actor, row["channel_id"])
        except ChatError:
            raise not_found("message") from None
        return row, ch, role

    async def _require_users(self, q: ChatQueries, ids: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(ids))
        found = await q.user_roles(wanted)
        missing = [u for u in wanted if u not in found]
        if missing:
            raise ChatError("user_not_found", f"unknown user(s): {', '.join(missing[:10])}", 404)
        return found

    @staticmethod
    def _to_message(r: Row, reactions: dict[str, list[str]] | None = None) -> s.Message:
        return s.Message(
            id=r["id"], channel_id=r["channel_id"], author_id=r["author_id"], text=r["text"],
            rendered=msgspec.convert(orjson.loads(r["rendered"]), list[s.Snippet]),
            version=r["version"], deleted=r["deleted"], created_at=r["created_at"].timestamp(),
            edited_at=_ts(r["edited_at"]), client_msg_id=r["client_msg_id"],
            thread_parent=r["thread_parent"], also_to_channel=r["also_to_channel"],
            reply_count=r["reply_count"], reply_users=list(r["reply_users"]),
            last_reply_at=_ts(r["last_reply_at"]), reactions=reactions or {},
            blocks=orjson.loads(r["blocks"]) if r.get("blocks") else None,
            app_id=r.get("app_id"),
            bot_profile=orjson.loads(r["bot_profile"]) if r.get("bot_profile") else None,
            previews=orjson.loads(r["previews"]) if r.get("previews") else None)

    async def _messages(self, q: ChatQueries, rows: list[Row]) -> list[s.Message]:
        reactions = await q.reactions([r["id"] for r in rows])
        return [self._to_message(r, reactions.get(r["id"])) for r in rows]

    def _to_channel(self, r: Row, member_role: str | None, muted: bool = False,
                    members: list[str] | None = None) -> s.Channel:
        return s.Channel(
            id=r["id"], kind=r["kind"], name=r["name"], topic=r["topic"], archived=r["archived"],
            created_by=r["created_by"], created_at=r["created_at"].timestamp(),
            member=member_role is not None, member_role=member_role, muted=muted, members=members,
            subscription=self.channel_name(r["id"]))

    # ---- real time --------------------------------------------------------------------

    async def _emit(self, channel_id: str, event: dict[str, Any], key: str) -> None:
        """Publish an event into the channel's durable stream; acknowledged after commit.
        The key makes a retried emit of the same change a no-op."""
        event.setdefault("channel_id", channel_id)
        await self.engine.publish(self.channel_name(channel_id), orjson.dumps(event),
                                  idempotency_key=key, source="chat")

    async def _push(self, user: str, event: dict[str, Any]) -> None:
        """An event on the user's personal channel (notifications, membership changes)."""
        try:
            await self.engine.publish(self.personal(user), orjson.dumps(event), source="chat")
        except Exception:  # a notification is best effort; the write it reports committed
            log.warning("personal push to %s failed", user, exc_info=True)

    async def _online(self, user: str) -> bool:
        try:
            presence = await self.engine.presence(self.personal(user))
        except Exception:
            log.warning("presence read for %s failed", user, exc_info=True)
            return False
        return bool(presence)

    async def _online_among(self, user_ids: list[str]) -> set[str]:
        """Which of ``user_ids`` are online: their presence reads run concurrently, a chunk
        at a time (one round trip per chunk on a Redis broker's pipelined connection,
        instead of one per member for ``@here`` in a big channel)."""
        online: set[str] = set()
        for i in range(0, len(user_ids), PRESENCE_CHUNK):
            chunk = user_ids[i:i + PRESENCE_CHUNK]
            found = await asyncio.gather(*(self._online(u) for u in chunk))
            online.update(u for u, yes in zip(chunk, found, strict=True) if yes)
        return online

    async def announce_online(self, user: str, online: bool) -> None:
        """``presence.changed`` on ``status:<user>``. Going offline is announced only when
        no node holds a connection of the user any more (the personal channel's presence,
        whose removal of the closed connection lands shortly after the close)."""
        if not online:
            for _ in range(OFFLINE_CHECKS):
                if self.engine.connected_here(user):
                    return  # reconnected here meanwhile
                if not await self._online(user):
                    break
                await asyncio.sleep(OFFLINE_CHECK_INTERVAL)
            else:
                return  # connected elsewhere
        try:
            await self.engine.publish(self.status_channel(user), orjson.dumps(
                {"type": "presence.changed", "user_id": user, "online": online}), source="chat")
        except Exception:
            log.warning("presence announcement for %s failed", user, exc_info=True)

    # ---- channels ---------------------------------------------------------------------

    async def channels_list(self, actor: Actor, p: s.ChannelsList) -> s.ChannelsResult:
        """Channels the caller is in, plus (for non-guests) public ones it may join."""
        public = actor.role != "guest" and not p.joined_only
        async with self.db.read() as q:
            rows = await q.channels_of(actor.id, public=public, include_archived=p.include_archived)
            # The members of every DM listed, in one query (not one per DM).
            people = await q.members_of([r["id"] for r in rows if r["kind"] in ("dm", "group_dm")])
        return s.ChannelsResult(channels=[
            self._to_channel(r, r["member_role"], r["muted"], people.get(r["id"]))
            for r in rows])

    async def channels_create(self, actor: Actor, p: s.ChannelsCreate) -> s.ChannelResult:
        if not rbac.can_create(actor.role):
            raise forbidden("guests cannot create channels")
        channel_id = "c" + secrets.token_hex(8)
        kind = "private" if p.private else "public"
        others = sorted(set(p.members) - {actor.id})
        async with self.db.write() as q:
            await self._require_users(q, others)
            try:
                row = await q.create_channel(channel_id, kind=kind, name=p.name, topic=p.topic,
                                             created_by=actor.id)
            except NameTaken:
                raise conflict("name_taken", f"a channel named {p.name!r} exists") from None
            await q.insert_members(channel_id, [(actor.id, "admin"), *((u, "member") for u in others)])
            await q.audit(actor=actor.id, action="channel.create", target=f"channel:{channel_id}",
                               after={"kind": kind, "name": p.name, "topic": p.topic,
                                      "members": [actor.id, *others]})
        for user in [actor.id, *others]:
            await self._emit(channel_id, {"type": "member.joined", "user_id": user, "by": actor.id},
                             f"member.joined:{channel_id}:{user}:{row['created_at'].timestamp()}")
            if user != actor.id:
                await self._push(user, {"type": "member.joined", "channel_id": channel_id,
                                        "user_id": user, "by": actor.id})
        return s.ChannelResult(self._to_channel(row, "admin"))

    async def _add_members(self, actor: Actor, channel_id: str, users: list[str], *,
                           invited: bool) -> s.ChannelResult:
        async with self.db.write() as q:
            ch, role = await self._visible(q, actor, channel_id, lock=True)
            if invited:
                if not rbac.can_manage_members(actor.role, ch["kind"], role):
                    raise forbidden("only channel admins can invite")
                await self._require_users(q, users)
            elif not rbac.can_join(actor.role, ch["kind"]):
                raise forbidden("this channel cannot be joined without an invitation")
            if ch["archived"]:
                raise conflict("archived", "the channel is archived")
            added = await q.join(channel_id, users)
            for r in added:
                await self._hook(q, "member_joined_channel", channel_id,
                                 {"user_id": r["user_id"], "by": actor.id, "at": r["joined_at"]})
                await q.audit(actor=actor.id, action="member.add", target=f"channel:{channel_id}",
                              after={"user_id": r["user_id"], "invited": invited})
            my_role = await q.member_role(channel_id, actor.id)
        for r in added:
            await self._emit(channel_id, {"type": "member.joined", "user_id": r["user_id"], "by": actor.id},
                             f"member.joined:{channel_id}:{r['user_id']}:{r['joined_at'].timestamp()}")
            await self._push(r["user_id"], {"type": "member.joined", "channel_id": channel_id,
                                            "user_id": r["user_id"], "by": actor.id})
        return s.ChannelResult(self._to_channel(ch, my_role))

    async def channels_join(self, actor: Actor, p: s.ChannelRef) -> s.ChannelResult:
        return await self._add_members(actor, p.channel_id, [actor.id], invited=False)

    async def channels_invite(self, actor: Actor, p: s.ChannelsInvite) -> s.ChannelResult:
        return await self._add_members(actor, p.channel_id, sorted(set(p.user_ids)), invited=True)

    async def _remove_member(self, actor: Actor, channel_id: str, user: str, *, kicked: bool) -> s.Ok:
        async with self.db.write() as q:
            ch, role = await self._visible(q, actor, channel_id, lock=True)
            if kicked:
                if not rbac.can_manage_members(actor.role, ch["kind"], role):
                    raise forbidden("only channel admins can remove members")
            elif role is None:
                raise ChatError("not_member", "not a member of this channel", 409)
            elif ch["kind"] == "dm":
                raise bad_request("a direct message cannot be left")
            joined_at = await q.remove_member(channel_id, user)
            if joined_at is None:
                raise ChatError("not_member", f"{user} is not a member of this channel", 409)
            await q.audit(actor=actor.id, action="member.kick" if kicked else "member.leave",
                          target=f"channel:{channel_id}", before={"user_id": user})
        # Live subscriptions end on every node; a private channel stops flowing at once.
        await self.engine.control({"op": "unsubscribe", "user": user,
                                   "channel": self.channel_name(channel_id), "client": ""})
        await self._emit(channel_id, {"type": "member.left", "user_id": user, "by": actor.id,
                                      "kicked": kicked},
                         f"member.left:{channel_id}:{user}:{joined_at.timestamp()}")
        await self._push(user, {"type": "member.left", "channel_id": channel_id, "user_id": user,
                                "by": actor.id, "kicked": kicked})
        return s.Ok()

    async def channels_leave(self, actor: Actor, p: s.ChannelRef) -> s.Ok:
        return await self._remove_member(actor, p.channel_id, actor.id, kicked=False)

    async def channels_kick(self, actor: Actor, p: s.ChannelsKick) -> s.Ok:
        return await self._remove_member(actor, p.channel_id, p.user_id, kicked=True)

    async def _update_channel(self, actor: Actor, channel_id: str, *, topic: str | None = None,
                              archive: bool = False) -> s.ChannelResult:
        before: dict[str, Any]
        after: dict[str, Any]
        async with self.db.write() as q:
            ch, role = await self._visible(q, actor, channel_id, lock=True)
            if archive:
                if not rbac.can_archive(actor.role, ch["kind"], role):
                    raise forbidden("only channel or workspace admins can archive")
                if ch["archived"]:
                    return s.ChannelResult(self._to_channel(ch, role))
                row = await q.archive(channel_id)
                before, after, action = {"archived": False}, {"archived": True}, "channel.archive"
            else:
                _require_post(role, ch, "set its topic")
                row = await q.set_topic(channel_id, topic)
                before, after, action = {"topic": ch["topic"]}, {"topic": topic}, "channel.set_topic"
            seq = await q.audit(actor=actor.id, action=action, target=f"channel:{channel_id}",
                                before=before, after=after)
        await self._emit(channel_id, {"type": "channel.updated", "by": actor.id,
                                      "channel": msgspec.to_builtins(self._to_channel(row, None))},
                         f"channel.updated:{channel_id}:{seq}")
        return s.ChannelResult(self._to_channel(row, role))

    async def channels_archive(self, actor: Actor, p: s.ChannelRef) -> s.ChannelResult:
        return await self._update_channel(actor, p.channel_id, archive=True)

    async def channels_set_topic(self, actor: Actor, p: s.ChannelsSetTopic) -> s.ChannelResult:
        return await self._update_channel(actor, p.channel_id, topic=p.topic)

    async def channels_mute(self, actor: Actor, p: s.SetMuted) -> s.Ok:
        async with self.db.write() as q:
            if not await q.set_muted(p.channel_id, actor.id, p.muted):
                raise not_found("channel")
            await q.audit(actor=actor.id, action="member.mute", target=f"channel:{p.channel_id}",
                          after={"muted": p.muted})
        return s.Ok()

    async def dm_open(self, actor: Actor, p: s.DmOpen) -> s.ChannelResult:
        """The DM (2 people) or group DM (3-8) of exactly these people, created once."""
        people = sorted(set(p.user_ids) | {actor.id})
        if len(people) < 2:
            raise bad_request("a direct message needs someone else")
        if len(people) > 8:
            raise bad_request("a group direct message has at most 8 people")
        channel_id = "d" + hashlib.sha256("\n".join(people).encode()).hexdigest()[:24]
        kind = "dm" if len(people) == 2 else "group_dm"
        async with self.db.write() as q:
            await self._require_users(q, people)
            row = await q.create_dm(channel_id, kind=kind, created_by=actor.id)
            if row is not None:
                await q.insert_members(channel_id, [(u, "member") for u in people])
                await q.audit(actor=actor.id, action="dm.open", target=f"channel:{channel_id}",
                              after={"members": people})
            else:
                row = await self._channel(q, channel_id)
        return s.ChannelResult(self._to_channel(row, "member", members=people))

    # ---- messages ---------------------------------------------------------------------

    async def _hook(self, q: ChatQueries, kind: str, channel_id: str, facts: dict[str, Any]) -> None:
        if self.event_hook is not None:
            await self.event_hook(q, kind, channel_id, facts)

    async def messages_send(self, actor: Actor, p: s.MessagesSend, *,
                            extra: MessageExtra | None = None) -> s.MessageResult:
        """Store the message, then publish its event; idempotent on ``client_msg_id``.
        ``extra``: an app's blocks and look (never from a client's parameters)."""
        rendered = orjson.dumps(render.render_snippets(p.text)).decode()
        users, at_channel, at_here = render.mentions(p.text)
        tags = sorted(users | ({"@channel"} if at_channel else set()) | ({"@here"} if at_here else set()))
        parent = None
        async with self.db.write() as q:
            ch, role = await self._visible(q, actor, p.channel_id)
            _require_post(role, ch, "post")
            if p.thread_parent is not None:
                parent = await q.message(p.thread_parent, lock=True)
                if parent is None or parent["channel_id"] != p.channel_id or parent["deleted"]:
                    raise not_found("thread parent")
                if parent["thread_parent"] is not None:
                    raise bad_request("replies go to the thread's first message")
            elif p.also_to_channel:
                raise bad_request("also_to_channel needs thread_parent")
            row = await q.insert_message(
                channel_id=p.channel_id, author=actor.id, client_msg_id=p.client_msg_id, text=p.text,
                rendered=rendered, thread_parent=p.thread_parent, also_to_channel=p.also_to_channel,
                mentions=tags, blocks=extra.blocks if extra else None,
                app_id=extra.app_id if extra else None,
                bot_profile=extra.bot_profile if extra else None)
            created = row is not None
            if row is None:
                row = await q.message_by_client_id(actor.id, p.client_msg_id)
                assert row is not None  # noqa: S101 - the insert met this very row
                if row["channel_id"] != p.channel_id or row["thread_parent"] != p.thread_parent:
                    raise conflict("client_msg_id_reused", "client_msg_id already used for another message")
                if p.thread_parent is not None:
                    parent = await q.message(p.thread_parent)
            else:
                mid = row["id"]
                if parent is not None:
                    parent = await q.count_reply(parent["id"], actor.id, row["created_at"])
                    await q.follow([(parent["id"], parent["author_id"]), (parent["id"], actor.id)])
                if p.thread_parent is None or p.also_to_channel:
                    await q.set_last_message(p.channel_id, mid)
                    # What one writes oneself is read.
                    await q.read_up_to(p.channel_id, actor.id, mid)
                await self._hook(q, "message", p.channel_id, {"row": row, "mentions": users})
                await q.audit(actor=actor.id, action="message.send", target=f"message:{mid}",
                              after={"channel_id": p.channel_id, "text": p.text,
                                     "thread_parent": p.thread_parent})
        message = self._to_message(row)
        body = msgspec.to_builtins(message)
        if parent is not None:
            await self._emit(p.channel_id, {
                "type": "thread.reply", "message": body, "parent_id": parent["id"],
                "reply_count": parent["reply_count"], "reply_users": list(parent["reply_users"]),
                "last_reply_at": _ts(parent["last_reply_at"])}, f"thread.reply:{row['id']}")
        else:
            await self._emit(p.channel_id, {"type": "message.created", "message": body},
                             f"message.created:{row['id']}")
        if created and self.link_hook is not None and "://" in p.text:
            self.link_hook(message)
        if created:
            # Notifications are best effort and may fan out to every member: the sender's
            # acknowledgement does not wait for them.
            self.engine.spawn(self._notify(actor, ch, message, users, at_channel, at_here, parent))
        return s.MessageResult(message=message, created=created)

    async def _notify(self, actor: Actor, ch: Row, message: s.Message, users: set[str],
                      at_channel: bool, at_here: bool, parent: Row | None) -> None:
        """Notifications on personal channels: mentions, DMs, replies in followed threads;
        none for muted channels or users in Do Not Disturb (unread counts are unaffected)."""
        direct = ch["kind"] in ("dm", "group_dm")
        everyone = at_channel or at_here or direct
        # The common case, a plain message in a channel, notifies nobody: reading every
        # member row (1,000 in a big channel) on each send would only be thrown away.
        if not everyone and not users and parent is None:
            return
        async with self.db.read() as q:
            followers: set[str] = set()
            if parent is not None:
                followers = await q.followers(parent["id"])
            if everyone:
                rows = await q.notify_candidates(ch["id"], exclude=actor.id)
            else:
                # Only the mentioned users and the thread's followers can be notified.
                targets = sorted((users | followers) - {actor.id})
                if not targets:
                    return
                rows = await q.notify_candidates_among(ch["id"], targets)
        now = datetime.now(UTC)
        online: set[str] = set()
        if at_here and not at_channel:
            online = await self._online_among([r["user_id"] for r in rows if r["user_id"] not in users])
        for r in rows:
            uid = r["user_id"]
            if uid in users or at_channel:
                kind = "mention"
            elif uid in online:
                kind = "mention"
            elif direct and (parent is None or message.also_to_channel):
                kind = "dm"
            elif uid in followers:
                kind = "thread_reply"
            else:
                continue
            if r["muted"] or (r["dnd_until"] is not None and r["dnd_until"] > now):
                continue
            await self._push(uid, {
                "type": "notification", "kind": kind, "channel_id": ch["id"], "message_id": message.id,
                "thread_parent": message.thread_parent, "from": actor.id,
                "text": message.text[:NOTIFY_TEXT_CHARS]})

    async def messages_edit(self, actor: Actor, p: s.MessagesEdit, *, blocks: str | None = None,
                            set_blocks: bool = False) -> s.MessageResult:
        """New text; ``set_blocks``: an app replacing its message's blocks too."""
        rendered = orjson.dumps(render.render_snippets(p.text)).decode()
        users, at_channel, at_here = render.mentions(p.text)
        tags = sorted(users | ({"@channel"} if at_channel else set()) | ({"@here"} if at_here else set()))
        async with self.db.write() as q:
            row, ch, role = await self._message(q, actor, p.message_id, lock=True)
            if not rbac.can_edit(actor.id, row["author_id"]):
                raise forbidden("only the author can edit a message")
            _require_post(role, ch, "edit")
            if row["deleted"]:
                raise not_found("message")
            changed = row["text"] != p.text or set_blocks
            old_text = row["text"]
            if changed:
                await q.keep_version(row, actor.id)
                row = await q.edit_message(p.message_id, text=p.text, rendered=rendered, mentions=tags,
                                           blocks=blocks, set_blocks=set_blocks)
                await q.audit(actor=actor.id, action="message.edit", target=f"message:{row['id']}",
                              before={"text": old_text}, after={"text": p.text})
        message = (await self._messages_by_ids([row["id"]]))[0]
        if row["version"] > 1:
            # Unchanged text is a retry: re-emitting the same version is deduplicated.
            await self._emit(row["channel_id"], {"type": "message.updated", "message": msgspec.to_builtins(message)},
                             f"message.updated:{row['id']}:{row['version']}")
            if changed and self.link_hook is not None and "://" in p.text:
                self.link_hook(message)
        return s.MessageResult(message=message, created=changed)

    async def attach_previews(self, message_id: int, version: int,
                              previews: list[dict[str, Any]]) -> bool:
        """Attach link previews to the version of a message they were made for, and push
        ``message.updated``; False when the message was edited or deleted meanwhile (the
        edit makes its own previews)."""
        async with self.db.write() as q:
            row = await q.set_previews(message_id, version, orjson.dumps(previews).decode())
        if row is None:
            return False
        message = (await self._messages_by_ids([message_id]))[0]
        await self._emit(row["channel_id"], {"type": "message.updated", "message": msgspec.to_builtins(message),
                                             "previews": True},
                         f"message.previews:{message_id}:{version}")
        return True

    async def messages_delete(self, actor: Actor, p: s.MessageRef) -> s.Ok:
        async with self.db.write() as q:
            row, ch, role = await self._message(q, actor, p.message_id, lock=True)
            if not rbac.can_delete(actor.id, actor.role, row["author_id"], role):
                raise forbidden("only the author or an admin can delete a message")
            if not row["deleted"]:
                await q.keep_version(row, actor.id)
                row = await q.delete_message(p.message_id)
                await q.audit(actor=actor.id, action="message.delete", target=f"message:{p.message_id}",
                              before={"author_id": row["author_id"]}, after={"deleted": True})
        await self._emit(row["channel_id"], {"type": "message.deleted", "message_id": row["id"],
                                             "version": row["version"], "by": actor.id},
                         f"message.deleted:{row['id']}")
        return s.Ok()

    async def _messages_by_ids(self, ids: list[int]) -> list[s.Message]:
        async with self.db.read() as q:
            return await self._messages(q, await q.messages(ids))

    async def messages_list(self, actor: Actor, p: s.MessagesList) -> s.MessagePage:
        """A page of the channel timeline (ascending ids) and the stream position read
        before the page, for subscribe-with-recovery."""
        if p.before is not None and p.after is not None:
            raise bad_request("use either before or after")
        async with self.db.read() as q:
            await self._visible(q, actor, p.channel_id)
            state = await self.engine.history(self.channel_name(p.channel_id), 0, None, False)
            if p.after is not None:
                rows = await q.timeline_after(p.channel_id, p.after, p.limit + 1)
                more = len(rows) > p.limit
                rows = rows[: p.limit]
            else:
                cap = p.before if p.before is not None else 2**62
                rows = await q.timeline_before(p.channel_id, cap, p.limit + 1)
                more = len(rows) > p.limit
                rows = list(reversed(rows[: p.limit]))
            messages = await self._messages(q, rows)
        return s.MessagePage(messages=messages, has_more=more,
                             position=s.Position(offset=state.offset, epoch=state.epoch))

    async def messages_history(self, actor: Actor, p: s.MessageRef) -> s.VersionsResult:
        if not rbac.can_read_versions(actor.role):
            raise forbidden("only workspace admins can read message versions")
        async with self.db.read() as q:
            # Admins moderate what they can see: a private channel's or a DM's messages
            # stay its members' (can_see), so an admin outside it gets "not found".
            row, _, _ = await self._message(q, actor, p.message_id)
            versions = await q.versions(p.message_id)
            message = (await self._messages(q, [row]))[0]
        return s.VersionsResult(message=message, versions=[
            s.MessageVersion(version=v["version"], text=v["text"], editor_id=v["editor_id"],
                             replaced_at=v["replaced_at"].timestamp()) for v in versions])

    async def threads_replies(self, actor: Actor, p: s.ThreadsReplies) -> s.MessagePage:
        async with self.db.read() as q:
            parent, _, _ = await self._message(q, actor, p.message_id)
            rows = await q.replies(parent["id"], p.after or 0, p.limit + 1)
            more = len(rows) > p.limit
            messages = await self._messages(q, [parent, *rows[: p.limit]])
        return s.MessagePage(messages=messages, has_more=more)

    async def threads_follow(self, actor: Actor, p: s.ThreadsFollow) -> s.Ok:
        async with self.db.write() as q:
            row, _, _ = await self._message(q, actor, p.message_id)
            if row["thread_parent"] is not None:
                raise bad_request("follow the thread's first message")
            if p.follow:
                await q.follow([(p.message_id, actor.id)])
            else:
                await q.unfollow(p.message_id, actor.id)
            await q.audit(actor=actor.id, action="thread.follow" if p.follow else "thread.unfollow",
                          target=f"message:{p.message_id}")
        return s.Ok()

    # ---- reactions and pins -----------------------------------------------------------

    async def _react(self, actor: Actor, p: s.Reaction, add: bool) -> s.Ok:
        async with self.db.write() as q:
            row, ch, role = await self._message(q, actor, p.message_id)
            _require_post(role, ch, "react")
            if row["deleted"]:
                raise forbidden("only members of an active channel can react")
            if add:
                changed = await q.add_reaction(p.message_id, actor.id, p.emoji)
            else:
                changed = await q.remove_reaction(p.message_id, actor.id, p.emoji)
            if changed is not None:
                if add:
                    await self._hook(q, "reaction_added", row["channel_id"], {
                        "user_id": actor.id, "emoji": p.emoji, "message": row, "at": changed})
                await q.audit(actor=actor.id, action="reaction.add" if add else "reaction.remove",
                              target=f"message:{p.message_id}", after={"emoji": p.emoji})
        if changed is not None:
            kind = "reaction.added" if add else "reaction.removed"
            await self._emit(row["channel_id"], {"type": kind, "message_id": p.message_id,
                                                 "emoji": p.emoji, "user_id": actor.id},
                             f"{kind}:{p.message_id}:{actor.id}:{p.emoji}:{changed.timestamp()}")
        return s.Ok()

    async def reactions_add(self, actor: Actor, p: s.Reaction) -> s.Ok:
        return await self._react(actor, p, True)

    async def reactions_remove(self, actor: Actor, p: s.Reaction) -> s.Ok:
        return await self._react(actor, p, False)

    async def _pin(self, actor: Actor, p: s.PinRef, add: bool) -> s.Ok:
        async with self.db.write() as q:
            row, ch, role = await self._message(q, actor, p.message_id)
            _require_post(role, ch, "pin")
            if row["deleted"]:
                raise forbidden("only members of an active channel can pin")
            if add:
                changed = await q.pin(ch["id"], p.message_id, actor.id)
            else:
                changed = await q.unpin(ch["id"], p.message_id)
            if changed is not None:
                await q.audit(actor=actor.id, action="pin.add" if add else "pin.remove",
                              target=f"message:{p.message_id}")
        if changed is not None:
            kind = "pin.added" if add else "pin.removed"
            await self._emit(ch["id"], {"type": kind, "message_id": p.message_id, "by": actor.id},
                             f"{kind}:{p.message_id}:{changed.timestamp()}")
        return s.Ok()

    async def pins_add(self, actor: Actor, p: s.PinRef) -> s.Ok:
        return await self._pin(actor, p, True)

    async def pins_remove(self, actor: Actor, p: s.PinRef) -> s.Ok:
        return await self._pin(actor, p, False)

    async def pins_list(self, actor: Actor, p: s.ChannelRef) -> s.PinsResult:
        async with self.db.read() as q:
            await self._visible(q, actor, p.channel_id)
            return s.PinsResult(messages=await self._messages(q, await q.pinned(p.channel_id)))

    # ---- read state -------------------------------------------------------------------

    async def read_mark(self, actor: Actor, p: s.ReadMark) -> s.Ok:
        async with self.db.read() as q:
            done = await q.mark_read(p.channel_id, actor.id, p.message_id)
        if not done:
            raise not_found("channel")
        # The user's other devices move their marker too.
        await self._push(actor.id, {"type": "read.marked", "channel_id": p.channel_id,
                                    "message_id": p.message_id})
        return s.Ok()

    async def unread_counts(self, actor: Actor, p: s.NoParams) -> s.UnreadResult:
        """Unread timeline messages (others', not deleted; thread-only replies excluded)
        and how many of them mention the caller, per channel the caller is in."""
        # Counted up to UNREAD_CAP + 1 per channel (shown as "1000+").
        async with self.db.read() as q:
            rows = await q.unread(actor.id, UNREAD_CAP + 1)
        return s.UnreadResult(channels=[
            s.UnreadCount(channel_id=r["channel_id"], unread=min(r["unread"], UNREAD_CAP),
                          mentions=min(r["mentions"], UNREAD_CAP), last_read_id=r["last_read_id"],
                          more=r["unread"] > UNREAD_CAP) for r in rows])

    # ---- users and status -------------------------------------------------------------

    async def presence_set_status(self, actor: Actor, p: s.SetStatus, *, app: bool = False) -> s.UserResult:
        """Set away / DND / custom status; ``app`` (HTTP API key) may set anyone's."""
        target = actor.id
        if p.user_id is not None and p.user_id != actor.id:
            if not app:
                raise forbidden("only applications (API key) set another user's status")
            target = p.user_id
        async with self.db.write() as q:
            if app:
                await self._require_users(q, [target])
            before = await q.status(target)
            await q.set_status(target, away=p.away, dnd_until=_from_unix(p.dnd_until), text=p.text,
                               emoji=p.emoji, until=_from_unix(p.until),
                               set_dnd=p.dnd_until is not None,
                               set_until=p.until is not None or p.text is not None)
            await q.audit(actor=actor.id, action="status.set", target=f"user:{target}",
                          before=msgspec.to_builtins(dict(before)) if before is not None else None,
                          after=msgspec.to_builtins(p))
        user = await self._user(target, actor)
        await self.engine.publish(self.status_channel(target), orjson.dumps(
            {"type": "status.changed", "user_id": target, "status": msgspec.to_builtins(user.status)}),
            source="chat")
        return s.UserResult(user=user)

    async def _user(self, user_id: str, viewer: Actor) -> s.User:
        async with self.db.read() as q:
            r = await q.user_with_status(user_id)
        if r is None:
            raise ChatError("user_not_found", f"unknown user: {user_id}", 404)
        now = datetime.now(UTC)
        until = r["status_until"]
        live = until is None or until > now
        dnd_until = r["dnd_until"]
        status = s.Status(
            online=await self._online(user_id), away=bool(r["away"]),
            dnd=dnd_until is not None and dnd_until > now,
            dnd_until=_ts(dnd_until) if dnd_until is not None and dnd_until > now else None,
            text=(r["status_text"] or "") if live else "", emoji=(r["status_emoji"] or "") if live else "",
            until=_ts(until) if live else None)
        see_email = viewer.id == user_id or rbac.is_workspace_admin(viewer.role)
        return s.User(id=r["id"], display_name=r["display_name"], title=r["title"], manager=r["manager"],
                      role=r["role"], status=status,
                      email=self._decrypt_email(r["id"], r["email_enc"]) if see_email else None)

    async def users_get(self, actor: Actor, p: s.UserRef) -> s.UserResult:
        return s.UserResult(user=await self._user(p.user_id, actor))

    async def admin_users_upsert(self, actor: Actor, p: s.AdminUserUpsert) -> s.UserResult:
        """Org-chart fields and workspace role, from another application (API key)."""
        async with self.db.write() as q:
            before = await q.user_fields(p.user_id)
            email_enc = self._encrypt_email(p.user_id, p.email) if p.email is not None else None
            await q.upsert_user(p.user_id, display_name=p.display_name, title=p.title,
                                manager=p.manager, role=p.role, email_enc=email_enc)
            after = msgspec.to_builtins(p)
            if "email" in after:
                after["email"] = "<encrypted>"
            await q.audit(actor=actor.id, action="user.upsert", target=f"user:{p.user_id}",
                          before=msgspec.to_builtins(dict(before)) if before is not None else None, after=after)
        self._roles.pop(p.user_id, None)
        if p.role == "guest" and (before is None or before["role"] != "guest"):
            await self._end_public_previews(p.user_id)
        return s.UserResult(user=await self._user(p.user_id, actor))

    async def _end_public_previews(self, user: str) -> None:
        """A user just made a guest sees only the channels it is in: its live subscriptions
        to public channels it was only previewing end now, on every node (the access check
        refuses them from here on, but would not stop a subscription already running)."""
        async with self.db.read() as q:
            channel_ids = await q.previewed_public_channels(user)
        for channel_id in channel_ids:
            await self.engine.control({"op": "unsubscribe", "user": user,
                                       "channel": self.channel_name(channel_id), "client": ""})


def _require_post(role: str | None, ch: Any, action: str) -> None:
    """Members may post (react, pin, edit, set the topic) in an active channel: 403 for a
    non-member, the documented stable 409 ``archived`` for an archived channel."""
    if not rbac.can_post(role, False):
        raise forbidden(f"only members of an active channel can {action}")
    if ch["archived"]:
        raise conflict("archived", "the channel is archived")
