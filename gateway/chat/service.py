"""The chat service layer: every operation once, whatever the transport (RPC or HTTP).

Each write runs in one PostgreSQL transaction together with its audit record; its real-time
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
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg
import msgspec
import orjson

from centrifugo_bridge.channels import personal_channel
from gateway.chat import rbac, render
from gateway.chat import schema as s
from gateway.chat.errors import ChatError, bad_request, conflict, forbidden, not_found
from storage import audit

if TYPE_CHECKING:
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

_CHANNEL = "SELECT * FROM chat_channels WHERE id = $1"
_CHANNEL_FOR_UPDATE = _CHANNEL + " FOR UPDATE"
_MESSAGE = "SELECT * FROM chat_messages WHERE id = $1"
_MESSAGE_FOR_UPDATE = _MESSAGE + " FOR UPDATE"


class Actor(NamedTuple):
    """Who is calling: a user id (JWT ``sub``) and its workspace role."""

    id: str
    role: str


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
        self.pool: asyncpg.Pool | None = None
        self.cipher: FieldCipher | None = None
        self._roles: dict[str, tuple[float, str]] = {}
        self._profiles: dict[str, bytes] = {}

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self, dsn: str) -> None:
        """Open the pool (the schema is migrated by the node's storage start)."""
        from storage.crypto import FieldCipher

        self.cipher = FieldCipher.from_settings(self.settings)
        self.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=self.settings.pool_size)

    async def stop(self) -> None:
        """Close the pool (the extension stops the service after its last job)."""
        if self.pool is not None:
            await self.pool.close()

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None, "ChatService.start() first"  # noqa: S101
        return self.pool

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
        row = await self.db.fetchrow(
            """
            INSERT INTO chat_users (id, display_name, title, manager, email_enc, role)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (id) DO UPDATE SET
                display_name = CASE WHEN chat_users.display_name = '' THEN EXCLUDED.display_name
                                    ELSE chat_users.display_name END,
                title = CASE WHEN chat_users.title = '' THEN EXCLUDED.title ELSE chat_users.title END,
                manager = CASE WHEN chat_users.manager = '' THEN EXCLUDED.manager ELSE chat_users.manager END,
                email_enc = COALESCE(chat_users.email_enc, EXCLUDED.email_enc)
            RETURNING role
            """, user, name, title, manager, email_enc, role)
        assert row is not None  # noqa: S101
        self._roles[user] = (now + ROLE_CACHE_SECONDS, row["role"])
        return Actor(user, row["role"])

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
            async with self.db.acquire() as c:
                await self._visible(c, actor, channel[len(prefix):])
        except ChatError:
            return False
        return True

    # ---- shared lookups ---------------------------------------------------------------

    async def _channel(self, c: asyncpg.Connection, channel_id: str, *, lock: bool = False) -> asyncpg.Record:
        sql = _CHANNEL_FOR_UPDATE if lock else _CHANNEL
        row = await c.fetchrow(sql, channel_id)
        if row is None:
            raise not_found("channel")
        return row

    async def _member_role(self, c: asyncpg.Connection, channel_id: str, user: str) -> str | None:
        return await c.fetchval(
            "SELECT role FROM chat_members WHERE channel_id = $1 AND user_id = $2", channel_id, user)

    async def _visible(self, c: asyncpg.Connection, actor: Actor, channel_id: str, *,
                       lock: bool = False) -> tuple[asyncpg.Record, str | None]:
        """The channel and the caller's role in it; "not found" when it may not see it."""
        ch = await self._channel(c, channel_id, lock=lock)
        role = await self._member_role(c, channel_id, actor.id)
        if not rbac.can_see(actor.role, ch["kind"], role):
            raise not_found("channel")
        return ch, role

    async def _message(self, c: asyncpg.Connection, actor: Actor, message_id: int, *,
                       lock: bool = False) -> tuple[asyncpg.Record, asyncpg.Record, str | None]:
        row = await c.fetchrow(_MESSAGE_FOR_UPDATE if lock else _MESSAGE, message_id)
        if row is None:
            raise not_found("message")
        try:
            ch, role = await self._visible(c, actor, row["channel_id"])
        except ChatError:
            raise not_found("message") from None
        return row, ch, role

    async def _require_users(self, c: asyncpg.Connection, ids: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(ids))
        rows = await c.fetch("SELECT id, role FROM chat_users WHERE id = ANY($1::text[])", wanted)
        found = {r["id"]: r["role"] for r in rows}
        missing = [u for u in wanted if u not in found]
        if missing:
            raise ChatError("user_not_found", f"unknown user(s): {', '.join(missing[:10])}", 404)
        return found

    async def _reactions(self, c: asyncpg.Connection, ids: list[int]) -> dict[int, dict[str, list[str]]]:
        if not ids:
            return {}
        rows = await c.fetch(
            """SELECT message_id, emoji, array_agg(user_id ORDER BY created_at, user_id) AS users
               FROM chat_reactions WHERE message_id = ANY($1::bigint[])
               GROUP BY message_id, emoji ORDER BY message_id, min(created_at), emoji""", ids)
        out: dict[int, dict[str, list[str]]] = {}
        for r in rows:
            out.setdefault(r["message_id"], {})[r["emoji"]] = list(r["users"])
        return out

    @staticmethod
    def _to_message(r: asyncpg.Record, reactions: dict[str, list[str]] | None = None) -> s.Message:
        return s.Message(
            id=r["id"], channel_id=r["channel_id"], author_id=r["author_id"], text=r["text"],
            rendered=msgspec.convert(orjson.loads(r["rendered"]), list[s.Snippet]),
            version=r["version"], deleted=r["deleted"], created_at=r["created_at"].timestamp(),
            edited_at=_ts(r["edited_at"]), client_msg_id=r["client_msg_id"],
            thread_parent=r["thread_parent"], also_to_channel=r["also_to_channel"],
            reply_count=r["reply_count"], reply_users=list(r["reply_users"]),
            last_reply_at=_ts(r["last_reply_at"]), reactions=reactions or {})

    async def _messages(self, c: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[s.Message]:
        reactions = await self._reactions(c, [r["id"] for r in rows])
        return [self._to_message(r, reactions.get(r["id"])) for r in rows]

    def _to_channel(self, r: asyncpg.Record, member_role: str | None, muted: bool = False,
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
        async with self.db.acquire() as c:
            rows = await c.fetch(
                """SELECT ch.*, m.role AS member_role, coalesce(m.muted, false) AS muted
                   FROM chat_channels ch
                   LEFT JOIN chat_members m ON m.channel_id = ch.id AND m.user_id = $1
                   WHERE (m.user_id IS NOT NULL OR ($2 AND ch.kind = 'public'))
                     AND ($3 OR NOT ch.archived)
                   ORDER BY ch.kind, ch.name, ch.id""", actor.id, public, p.include_archived)
            # The members of every DM listed, in one query (not one per DM).
            dms = [r["id"] for r in rows if r["kind"] in ("dm", "group_dm")]
            people: dict[str, list[str]] = {m["channel_id"]: list(m["users"]) for m in await c.fetch(
                """SELECT channel_id, array_agg(user_id ORDER BY user_id) AS users FROM chat_members
                   WHERE channel_id = ANY($1::text[]) GROUP BY channel_id""", dms)} if dms else {}
        return s.ChannelsResult(channels=[
            self._to_channel(r, r["member_role"], r["muted"], people.get(r["id"]))
            for r in rows])

    async def channels_create(self, actor: Actor, p: s.ChannelsCreate) -> s.ChannelResult:
        if not rbac.can_create(actor.role):
            raise forbidden("guests cannot create channels")
        channel_id = "c" + secrets.token_hex(8)
        kind = "private" if p.private else "public"
        others = sorted(set(p.members) - {actor.id})
        async with self.db.acquire() as c, c.transaction():
            await self._require_users(c, others)
            try:
                row = await c.fetchrow(
                    """INSERT INTO chat_channels (id, kind, name, topic, created_by)
                       VALUES ($1, $2, $3, $4, $5) RETURNING *""",
                    channel_id, kind, p.name, p.topic, actor.id)
            except asyncpg.UniqueViolationError:
                raise conflict("name_taken", f"a channel named {p.name!r} exists") from None
            assert row is not None  # noqa: S101
            await c.executemany(
                "INSERT INTO chat_members (channel_id, user_id, role) VALUES ($1, $2, $3)",
                [(channel_id, actor.id, "admin"), *((channel_id, u, "member") for u in others)])
            await audit.append(c, actor=actor.id, action="channel.create", target=f"channel:{channel_id}",
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
        async with self.db.acquire() as c, c.transaction():
            ch, role = await self._visible(c, actor, channel_id, lock=True)
            if invited:
                if not rbac.can_manage_members(actor.role, ch["kind"], role):
                    raise forbidden("only channel admins can invite")
                await self._require_users(c, users)
            elif not rbac.can_join(actor.role, ch["kind"]):
                raise forbidden("this channel cannot be joined without an invitation")
            if ch["archived"]:
                raise conflict("archived", "the channel is archived")
            added = await c.fetch(
                """INSERT INTO chat_members (channel_id, user_id)
                   SELECT $1, u FROM unnest($2::text[]) AS u
                   ON CONFLICT DO NOTHING RETURNING user_id, joined_at""", channel_id, users)
            for r in added:
                await audit.append(c, actor=actor.id, action="member.add", target=f"channel:{channel_id}",
                                   after={"user_id": r["user_id"], "invited": invited})
            my_role = await self._member_role(c, channel_id, actor.id)
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
        async with self.db.acquire() as c, c.transaction():
            ch, role = await self._visible(c, actor, channel_id, lock=True)
            if kicked:
                if not rbac.can_manage_members(actor.role, ch["kind"], role):
                    raise forbidden("only channel admins can remove members")
            elif role is None:
                raise ChatError("not_member", "not a member of this channel", 409)
            elif ch["kind"] == "dm":
                raise bad_request("a direct message cannot be left")
            removed = await c.fetchrow(
                "DELETE FROM chat_members WHERE channel_id = $1 AND user_id = $2 RETURNING joined_at",
                channel_id, user)
            if removed is None:
                raise ChatError("not_member", f"{user} is not a member of this channel", 409)
            await audit.append(c, actor=actor.id, action="member.kick" if kicked else "member.leave",
                               target=f"channel:{channel_id}", before={"user_id": user})
        # Live subscriptions end on every node; a private channel stops flowing at once.
        await self.engine.control({"op": "unsubscribe", "user": user,
                                 "channel": self.channel_name(channel_id), "client": ""})
        await self._emit(channel_id, {"type": "member.left", "user_id": user, "by": actor.id,
                                      "kicked": kicked},
                         f"member.left:{channel_id}:{user}:{removed['joined_at'].timestamp()}")
        await self._push(user, {"type": "member.left", "channel_id": channel_id, "user_id": user,
                                "by": actor.id, "kicked": kicked})
        return s.Ok()

    async def channels_leave(self, actor: Actor, p: s.ChannelRef) -> s.Ok:
        return await self._remove_member(actor, p.channel_id, actor.id, kicked=False)

    async def channels_kick(self, actor: Actor, p: s.ChannelsKick) -> s.Ok:
        return await self._remove_member(actor, p.channel_id, p.user_id, kicked=True)

    async def _update_channel(self, actor: Actor, channel_id: str, *, topic: str | None = None,
                              archive: bool = False) -> s.ChannelResult:
        async with self.db.acquire() as c, c.transaction():
            ch, role = await self._visible(c, actor, channel_id, lock=True)
            if archive:
                if not rbac.can_archive(actor.role, ch["kind"], role):
                    raise forbidden("only channel or workspace admins can archive")
                if ch["archived"]:
                    return s.ChannelResult(self._to_channel(ch, role))
                row = await c.fetchrow("UPDATE chat_channels SET archived = true WHERE id = $1 RETURNING *",
                                       channel_id)
                before, after, action = {"archived": False}, {"archived": True}, "channel.archive"
            else:
                if not rbac.can_post(role, ch["archived"]):
                    raise forbidden("only members of an active channel can set its topic")
                row = await c.fetchrow("UPDATE chat_channels SET topic = $2 WHERE id = $1 RETURNING *",
                                       channel_id, topic)
                before, after, action = {"topic": ch["topic"]}, {"topic": topic}, "channel.set_topic"
            assert row is not None  # noqa: S101
            seq = await audit.append(c, actor=actor.id, action=action, target=f"channel:{channel_id}",
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
        async with self.db.acquire() as c, c.transaction():
            done = await c.fetchval(
                """UPDATE chat_members SET muted = $3 WHERE channel_id = $1 AND user_id = $2
                   RETURNING true""", p.channel_id, actor.id, p.muted)
            if not done:
                raise not_found("channel")
            await audit.append(c, actor=actor.id, action="member.mute", target=f"channel:{p.channel_id}",
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
        async with self.db.acquire() as c, c.transaction():
            await self._require_users(c, people)
            row = await c.fetchrow(
                """INSERT INTO chat_channels (id, kind, created_by) VALUES ($1, $2, $3)
                   ON CONFLICT (id) DO NOTHING RETURNING *""", channel_id, kind, actor.id)
            created = row is not None
            if created:
                await c.executemany("INSERT INTO chat_members (channel_id, user_id) VALUES ($1, $2)",
                                    [(channel_id, u) for u in people])
                await audit.append(c, actor=actor.id, action="dm.open", target=f"channel:{channel_id}",
                                   after={"members": people})
            else:
                row = await self._channel(c, channel_id)
        return s.ChannelResult(self._to_channel(row, "member", members=people))

    # ---- messages ---------------------------------------------------------------------

    async def messages_send(self, actor: Actor, p: s.MessagesSend) -> s.MessageResult:
        """Store the message, then publish its event; idempotent on ``client_msg_id``."""
        rendered = orjson.dumps(render.render_snippets(p.text)).decode()
        users, at_channel, at_here = render.mentions(p.text)
        tags = sorted(users | ({"@channel"} if at_channel else set()) | ({"@here"} if at_here else set()))
        parent = None
        async with self.db.acquire() as c, c.transaction():
            ch, role = await self._visible(c, actor, p.channel_id)
            if not rbac.can_post(role, ch["archived"]):
                raise forbidden("only members of an active channel can post")
            if p.thread_parent is not None:
                parent = await c.fetchrow("SELECT * FROM chat_messages WHERE id = $1 FOR UPDATE",
                                          p.thread_parent)
                if parent is None or parent["channel_id"] != p.channel_id or parent["deleted"]:
                    raise not_found("thread parent")
                if parent["thread_parent"] is not None:
                    raise bad_request("replies go to the thread's first message")
            elif p.also_to_channel:
                raise bad_request("also_to_channel needs thread_parent")
            row = await c.fetchrow(
                """INSERT INTO chat_messages (channel_id, author_id, client_msg_id, text, rendered,
                                              thread_parent, also_to_channel, mentions)
                   VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)
                   ON CONFLICT (author_id, client_msg_id) WHERE client_msg_id IS NOT NULL DO NOTHING
                   RETURNING *""",
                p.channel_id, actor.id, p.client_msg_id, p.text, rendered, p.thread_parent,
                p.also_to_channel, tags)
            created = row is not None
            if not created:
                row = await c.fetchrow(
                    "SELECT * FROM chat_messages WHERE author_id = $1 AND client_msg_id = $2",
                    actor.id, p.client_msg_id)
                assert row is not None  # noqa: S101
                if row["channel_id"] != p.channel_id or row["thread_parent"] != p.thread_parent:
                    raise conflict("client_msg_id_reused", "client_msg_id already used for another message")
                if p.thread_parent is not None:
                    parent = await c.fetchrow("SELECT * FROM chat_messages WHERE id = $1", p.thread_parent)
            else:
                mid = row["id"]
                if parent is not None:
                    parent = await c.fetchrow(
                        """UPDATE chat_messages SET reply_count = reply_count + 1,
                               reply_users = CASE WHEN $2 = ANY(reply_users) THEN reply_users
                                                  ELSE reply_users || $2 END,
                               last_reply_at = $3
                           WHERE id = $1 RETURNING *""", parent["id"], actor.id, row["created_at"])
                    await c.executemany(
                        "INSERT INTO chat_thread_follows VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        [(parent["id"], parent["author_id"]), (parent["id"], actor.id)])
                if p.thread_parent is None or p.also_to_channel:
                    await c.execute("UPDATE chat_channels SET last_message_id = $2 WHERE id = $1",
                                    p.channel_id, mid)
                    # What one writes oneself is read.
                    await c.execute(
                        """UPDATE chat_members SET last_read_id = greatest(last_read_id, $3)
                           WHERE channel_id = $1 AND user_id = $2""", p.channel_id, actor.id, mid)
                await audit.append(c, actor=actor.id, action="message.send", target=f"message:{mid}",
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
        if created:
            # Notifications are best effort and may fan out to every member: the sender's
            # acknowledgement does not wait for them.
            self.engine.spawn(self._notify(actor, ch, message, users, at_channel, at_here, parent))
        return s.MessageResult(message=message, created=created)

    async def _notify(self, actor: Actor, ch: asyncpg.Record, message: s.Message, users: set[str],
                      at_channel: bool, at_here: bool, parent: asyncpg.Record | None) -> None:
        """Notifications on personal channels: mentions, DMs, replies in followed threads;
        none for muted channels or users in Do Not Disturb (unread counts are unaffected)."""
        direct = ch["kind"] in ("dm", "group_dm")
        everyone = at_channel or at_here or direct
        # The common case, a plain message in a channel, notifies nobody: reading every
        # member row (1,000 in a big channel) on each send would only be thrown away.
        if not everyone and not users and parent is None:
            return
        async with self.db.acquire() as c:
            followers: set[str] = set()
            if parent is not None:
                followers = {r["user_id"] for r in await c.fetch(
                    "SELECT user_id FROM chat_thread_follows WHERE message_id = $1", parent["id"])}
            if everyone:
                rows = await c.fetch(
                    """SELECT m.user_id, m.muted, st.dnd_until
                       FROM chat_members m LEFT JOIN chat_user_status st ON st.user_id = m.user_id
                       WHERE m.channel_id = $1 AND m.user_id <> $2""", ch["id"], actor.id)
            else:
                # Only the mentioned users and the thread's followers can be notified.
                targets = sorted((users | followers) - {actor.id})
                if not targets:
                    return
                rows = await c.fetch(
                    """SELECT m.user_id, m.muted, st.dnd_until
                       FROM chat_members m LEFT JOIN chat_user_status st ON st.user_id = m.user_id
                       WHERE m.channel_id = $1 AND m.user_id = ANY($2::text[])""", ch["id"], targets)
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

    async def messages_edit(self, actor: Actor, p: s.MessagesEdit) -> s.MessageResult:
        rendered = orjson.dumps(render.render_snippets(p.text)).decode()
        users, at_channel, at_here = render.mentions(p.text)
        tags = sorted(users | ({"@channel"} if at_channel else set()) | ({"@here"} if at_here else set()))
        async with self.db.acquire() as c, c.transaction():
            row, ch, role = await self._message(c, actor, p.message_id, lock=True)
            if not rbac.can_edit(actor.id, row["author_id"]):
                raise forbidden("only the author can edit a message")
            if not rbac.can_post(role, ch["archived"]):
                raise forbidden("only members of an active channel can edit")
            if row["deleted"]:
                raise not_found("message")
            changed = row["text"] != p.text
            old_text = row["text"]
            if changed:
                await c.execute(
                    """INSERT INTO chat_message_versions (message_id, version, text, rendered, editor_id)
                       VALUES ($1, $2, $3, $4, $5)""",
                    row["id"], row["version"], row["text"], row["rendered"], actor.id)
                row = await c.fetchrow(
                    """UPDATE chat_messages SET text = $2, rendered = $3::jsonb, mentions = $4,
                           version = version + 1, edited_at = now()
                       WHERE id = $1 RETURNING *""", p.message_id, p.text, rendered, tags)
                assert row is not None  # noqa: S101
                await audit.append(c, actor=actor.id, action="message.edit", target=f"message:{row['id']}",
                                   before={"text": old_text}, after={"text": p.text})
        message = (await self._messages_by_ids([row["id"]]))[0]
        if row["version"] > 1:
            # Unchanged text is a retry: re-emitting the same version is deduplicated.
            await self._emit(row["channel_id"], {"type": "message.updated", "message": msgspec.to_builtins(message)},
                             f"message.updated:{row['id']}:{row['version']}")
        return s.MessageResult(message=message, created=changed)

    async def messages_delete(self, actor: Actor, p: s.MessageRef) -> s.Ok:
        async with self.db.acquire() as c, c.transaction():
            row, ch, role = await self._message(c, actor, p.message_id, lock=True)
            if not rbac.can_delete(actor.id, actor.role, row["author_id"], role):
                raise forbidden("only the author or an admin can delete a message")
            if not row["deleted"]:
                await c.execute(
                    """INSERT INTO chat_message_versions (message_id, version, text, rendered, editor_id)
                       VALUES ($1, $2, $3, $4, $5)""",
                    row["id"], row["version"], row["text"], row["rendered"], actor.id)
                row = await c.fetchrow(
                    """UPDATE chat_messages SET text = '', rendered = '[]', deleted = true,
                           version = version + 1, edited_at = now()
                       WHERE id = $1 RETURNING *""", p.message_id)
                assert row is not None  # noqa: S101
                await audit.append(c, actor=actor.id, action="message.delete",
                                   target=f"message:{p.message_id}",
                                   before={"author_id": row["author_id"]}, after={"deleted": True})
        await self._emit(row["channel_id"], {"type": "message.deleted", "message_id": row["id"],
                                             "version": row["version"], "by": actor.id},
                         f"message.deleted:{row['id']}")
        return s.Ok()

    async def _messages_by_ids(self, ids: list[int]) -> list[s.Message]:
        async with self.db.acquire() as c:
            rows = await c.fetch("SELECT * FROM chat_messages WHERE id = ANY($1::bigint[]) ORDER BY id", ids)
            return await self._messages(c, list(rows))

    async def messages_list(self, actor: Actor, p: s.MessagesList) -> s.MessagePage:
        """A page of the channel timeline (ascending ids) and the stream position read
        before the page, for subscribe-with-recovery."""
        if p.before is not None and p.after is not None:
            raise bad_request("use either before or after")
        async with self.db.acquire() as c:
            await self._visible(c, actor, p.channel_id)
            state = await self.engine.history(self.channel_name(p.channel_id), 0, None, False)
            timeline = "channel_id = $1 AND (thread_parent IS NULL OR also_to_channel)"
            if p.after is not None:
                rows = await c.fetch(f"SELECT * FROM chat_messages WHERE {timeline} AND id > $2 "  # noqa: S608
                                     "ORDER BY id LIMIT $3", p.channel_id, p.after, p.limit + 1)
                more = len(rows) > p.limit
                rows = rows[: p.limit]
            else:
                cap = p.before if p.before is not None else 2**62
                rows = await c.fetch(f"SELECT * FROM chat_messages WHERE {timeline} AND id < $2 "  # noqa: S608
                                     "ORDER BY id DESC LIMIT $3", p.channel_id, cap, p.limit + 1)
                more = len(rows) > p.limit
                rows = list(reversed(rows[: p.limit]))
            messages = await self._messages(c, list(rows))
        return s.MessagePage(messages=messages, has_more=more,
                             position=s.Position(offset=state.offset, epoch=state.epoch))

    async def messages_history(self, actor: Actor, p: s.MessageRef) -> s.VersionsResult:
        if not rbac.can_read_versions(actor.role):
            raise forbidden("only workspace admins can read message versions")
        async with self.db.acquire() as c:
            # Admins moderate what they can see: a private channel's or a DM's messages
            # stay its members' (can_see), so an admin outside it gets "not found".
            row, _, _ = await self._message(c, actor, p.message_id)
            versions = await c.fetch(
                "SELECT * FROM chat_message_versions WHERE message_id = $1 ORDER BY version", p.message_id)
            message = (await self._messages(c, [row]))[0]
        return s.VersionsResult(message=message, versions=[
            s.MessageVersion(version=v["version"], text=v["text"], editor_id=v["editor_id"],
                             replaced_at=v["replaced_at"].timestamp()) for v in versions])

    async def threads_replies(self, actor: Actor, p: s.ThreadsReplies) -> s.MessagePage:
        async with self.db.acquire() as c:
            parent, _, _ = await self._message(c, actor, p.message_id)
            rows = await c.fetch(
                """SELECT * FROM chat_messages WHERE thread_parent = $1 AND id > $2
                   ORDER BY id LIMIT $3""", parent["id"], p.after or 0, p.limit + 1)
            more = len(rows) > p.limit
            messages = await self._messages(c, [parent, *rows[: p.limit]])
        return s.MessagePage(messages=messages, has_more=more)

    async def threads_follow(self, actor: Actor, p: s.ThreadsFollow) -> s.Ok:
        async with self.db.acquire() as c, c.transaction():
            row, _, _ = await self._message(c, actor, p.message_id)
            if row["thread_parent"] is not None:
                raise bad_request("follow the thread's first message")
            if p.follow:
                await c.execute("INSERT INTO chat_thread_follows VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                p.message_id, actor.id)
            else:
                await c.execute("DELETE FROM chat_thread_follows WHERE message_id = $1 AND user_id = $2",
                                p.message_id, actor.id)
            await audit.append(c, actor=actor.id, action="thread.follow" if p.follow else "thread.unfollow",
                               target=f"message:{p.message_id}")
        return s.Ok()

    # ---- reactions and pins -----------------------------------------------------------

    async def _react(self, actor: Actor, p: s.Reaction, add: bool) -> s.Ok:
        async with self.db.acquire() as c, c.transaction():
            row, ch, role = await self._message(c, actor, p.message_id)
            if not rbac.can_post(role, ch["archived"]) or row["deleted"]:
                raise forbidden("only members of an active channel can react")
            if add:
                changed = await c.fetchrow(
                    """INSERT INTO chat_reactions (message_id, user_id, emoji) VALUES ($1, $2, $3)
                       ON CONFLICT DO NOTHING RETURNING created_at""", p.message_id, actor.id, p.emoji)
            else:
                changed = await c.fetchrow(
                    """DELETE FROM chat_reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3
                       RETURNING created_at""", p.message_id, actor.id, p.emoji)
            if changed is not None:
                await audit.append(c, actor=actor.id, action="reaction.add" if add else "reaction.remove",
                                   target=f"message:{p.message_id}", after={"emoji": p.emoji})
        if changed is not None:
            kind = "reaction.added" if add else "reaction.removed"
            await self._emit(row["channel_id"], {"type": kind, "message_id": p.message_id,
                                                 "emoji": p.emoji, "user_id": actor.id},
                             f"{kind}:{p.message_id}:{actor.id}:{p.emoji}:{changed['created_at'].timestamp()}")
        return s.Ok()

    async def reactions_add(self, actor: Actor, p: s.Reaction) -> s.Ok:
        return await self._react(actor, p, True)

    async def reactions_remove(self, actor: Actor, p: s.Reaction) -> s.Ok:
        return await self._react(actor, p, False)

    async def _pin(self, actor: Actor, p: s.PinRef, add: bool) -> s.Ok:
        async with self.db.acquire() as c, c.transaction():
            row, ch, role = await self._message(c, actor, p.message_id)
            if not rbac.can_post(role, ch["archived"]) or row["deleted"]:
                raise forbidden("only members of an active channel can pin")
            if add:
                changed = await c.fetchrow(
                    """INSERT INTO chat_pins (channel_id, message_id, pinned_by) VALUES ($1, $2, $3)
                       ON CONFLICT DO NOTHING RETURNING pinned_at""", ch["id"], p.message_id, actor.id)
            else:
                changed = await c.fetchrow(
                    "DELETE FROM chat_pins WHERE channel_id = $1 AND message_id = $2 RETURNING pinned_at",
                    ch["id"], p.message_id)
            if changed is not None:
                await audit.append(c, actor=actor.id, action="pin.add" if add else "pin.remove",
                                   target=f"message:{p.message_id}")
        if changed is not None:
            kind = "pin.added" if add else "pin.removed"
            await self._emit(ch["id"], {"type": kind, "message_id": p.message_id, "by": actor.id},
                             f"{kind}:{p.message_id}:{changed['pinned_at'].timestamp()}")
        return s.Ok()

    async def pins_add(self, actor: Actor, p: s.PinRef) -> s.Ok:
        return await self._pin(actor, p, True)

    async def pins_remove(self, actor: Actor, p: s.PinRef) -> s.Ok:
        return await self._pin(actor, p, False)

    async def pins_list(self, actor: Actor, p: s.ChannelRef) -> s.PinsResult:
        async with self.db.acquire() as c:
            await self._visible(c, actor, p.channel_id)
            rows = await c.fetch(
                """SELECT m.* FROM chat_pins p JOIN chat_messages m ON m.id = p.message_id
                   WHERE p.channel_id = $1 ORDER BY p.pinned_at, m.id""", p.channel_id)
            return s.PinsResult(messages=await self._messages(c, list(rows)))

    # ---- read state -------------------------------------------------------------------

    async def read_mark(self, actor: Actor, p: s.ReadMark) -> s.Ok:
        async with self.db.acquire() as c:
            done = await c.fetchval(
                """UPDATE chat_members SET last_read_id = $3 WHERE channel_id = $1 AND user_id = $2
                   RETURNING true""", p.channel_id, actor.id, p.message_id)
        if not done:
            raise not_found("channel")
        # The user's other devices move their marker too.
        await self._push(actor.id, {"type": "read.marked", "channel_id": p.channel_id,
                                    "message_id": p.message_id})
        return s.Ok()

    async def unread_counts(self, actor: Actor, p: s.NoParams) -> s.UnreadResult:
        """Unread timeline messages (others', not deleted; thread-only replies excluded)
        and how many of them mention the caller, per channel the caller is in."""
        async with self.db.acquire() as c:
            # Counted up to UNREAD_CAP + 1 per channel (shown as "1000+"): a member far behind
            # in a channel of millions must not cost a scan of millions.
            rows = await c.fetch(
                """SELECT m.channel_id, m.last_read_id, u.unread, u.mentions
                   FROM chat_members m
                   CROSS JOIN LATERAL (
                       SELECT count(*) AS unread,
                              count(*) FILTER (WHERE x.mentions && ARRAY[$1, '@channel', '@here']) AS mentions
                       FROM (SELECT mentions FROM chat_messages
                             WHERE channel_id = m.channel_id AND id > m.last_read_id
                               AND (thread_parent IS NULL OR also_to_channel)
                               AND NOT deleted AND author_id <> $1
                             ORDER BY id LIMIT $2) x) u
                   WHERE m.user_id = $1 ORDER BY m.channel_id""", actor.id, UNREAD_CAP + 1)
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
        async with self.db.acquire() as c, c.transaction():
            if app:
                await self._require_users(c, [target])
            before = await c.fetchrow("SELECT * FROM chat_user_status WHERE user_id = $1", target)
            await c.execute(
                """INSERT INTO chat_user_status (user_id, away, dnd_until, status_text, status_emoji,
                                                 status_until)
                   VALUES ($1, coalesce($2, false), $3, coalesce($4, ''), coalesce($5, ''), $6)
                   ON CONFLICT (user_id) DO UPDATE SET
                       away = coalesce($2, chat_user_status.away),
                       dnd_until = CASE WHEN $7 THEN $3 ELSE chat_user_status.dnd_until END,
                       status_text = coalesce($4, chat_user_status.status_text),
                       status_emoji = coalesce($5, chat_user_status.status_emoji),
                       status_until = CASE WHEN $8 THEN $6 ELSE chat_user_status.status_until END,
                       updated_at = now()""",
                target, p.away, _from_unix(p.dnd_until), p.text, p.emoji, _from_unix(p.until),
                p.dnd_until is not None, p.until is not None)
            await audit.append(c, actor=actor.id, action="status.set", target=f"user:{target}",
                               before=msgspec.to_builtins(dict(before)) if before is not None else None,
                               after=msgspec.to_builtins(p))
        user = await self._user(target, actor)
        await self.engine.publish(self.status_channel(target), orjson.dumps(
            {"type": "status.changed", "user_id": target, "status": msgspec.to_builtins(user.status)}),
            source="chat")
        return s.UserResult(user=user)

    async def _user(self, user_id: str, viewer: Actor) -> s.User:
        async with self.db.acquire() as c:
            r = await c.fetchrow(
                """SELECT u.*, st.away, st.dnd_until, st.status_text, st.status_emoji, st.status_until
                   FROM chat_users u LEFT JOIN chat_user_status st ON st.user_id = u.id
                   WHERE u.id = $1""", user_id)
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
        async with self.db.acquire() as c, c.transaction():
            before = await c.fetchrow("SELECT display_name, title, manager, role FROM chat_users WHERE id = $1",
                                      p.user_id)
            email_enc = self._encrypt_email(p.user_id, p.email) if p.email is not None else None
            await c.execute(
                """INSERT INTO chat_users (id, display_name, title, manager, role, email_enc)
                   VALUES ($1, coalesce($2, ''), coalesce($3, ''), coalesce($4, ''), coalesce($5, 'member'), $6)
                   ON CONFLICT (id) DO UPDATE SET
                       display_name = coalesce($2, chat_users.display_name),
                       title = coalesce($3, chat_users.title),
                       manager = coalesce($4, chat_users.manager),
                       role = coalesce($5, chat_users.role),
                       email_enc = coalesce($6, chat_users.email_enc),
                       updated_at = now()""",
                p.user_id, p.display_name, p.title, p.manager, p.role, email_enc)
            after = msgspec.to_builtins(p)
            if "email" in after:
                after["email"] = "<encrypted>"
            await audit.append(c, actor=actor.id, action="user.upsert", target=f"user:{p.user_id}",
                               before=msgspec.to_builtins(dict(before)) if before is not None else None, after=after)
        self._roles.pop(p.user_id, None)
        if p.role == "guest" and (before is None or before["role"] != "guest"):
            await self._end_public_previews(p.user_id)
        return s.UserResult(user=await self._user(p.user_id, actor))

    async def _end_public_previews(self, user: str) -> None:
        """A user just made a guest sees only the channels it is in: its live subscriptions
        to public channels it was only previewing end now, on every node (the access check
        refuses them from here on, but would not stop a subscription already running)."""
        async with self.db.acquire() as c:
            rows = await c.fetch(
                """SELECT ch.id FROM chat_channels ch WHERE ch.kind = 'public' AND NOT EXISTS (
                       SELECT 1 FROM chat_members m WHERE m.channel_id = ch.id AND m.user_id = $1)""",
                user)
        for r in rows:
            await self.engine.control({"op": "unsubscribe", "user": user,
                                     "channel": self.channel_name(r["id"]), "client": ""})
