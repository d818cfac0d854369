"""Incident war rooms and huddles (issue 15, items 8 and 9), composed of chat operations.

An incident opens a private channel named from its ticket, invites the responders, posts and
pins a summary and notifies the responders (through Do Not Disturb for urgent priorities);
resolving it posts the outcome and archives the channel, whose history stays readable. A
huddle is a meeting started in a channel: a message with a Join button, participants shown
"In a huddle" while they are in (their previous status put back when they leave), and a
closing message with its duration.

Every step is the chat service's own operation (RBAC, audit records, ``chat:<id>`` events);
only the incidents' and huddles' own rows are written here (storage/incidents.py).
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson
from msgspec import Meta

from gateway.chat import rbac
from gateway.chat import schema as s
from gateway.chat.errors import ChatError, bad_request, conflict, forbidden, not_found
from gateway.chat.service import Actor, MessageExtra
from gateway.integrations import slack
from storage.incidents import RoomQueries, Row

if TYPE_CHECKING:
    from gateway.integrations.service import IntegrationService

INCIDENT_USER = "sentchat.incidents"
"""The user that opens war rooms for callers with the API key (a channel needs a member
admin; the API key is not a user)."""
HUDDLE_STATUS, HUDDLE_EMOJI = "In a huddle", ":headphones:"

TicketId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._#-]*$")]
Title = Annotated[str, Meta(min_length=1, max_length=200)]
OrgRole = Annotated[str, Meta(min_length=1, max_length=200)]


class IncidentSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /v1/incidents``: responders are user ids and/or org-chart roles (a user's
    ``title``, set with ``PUT /v1/admin/users/{id}``)."""

    ticket_id: TicketId
    title: Title
    priority: Annotated[int, Meta(ge=1, le=5)] = 3
    responders: Annotated[list[s.UserId], Meta(max_length=100)] = []
    roles: Annotated[list[OrgRole], Meta(max_length=10)] = []
    summary: Annotated[str, Meta(max_length=4000)] = ""
    link: Annotated[str, Meta(max_length=2000, pattern=r"^https?://\S+$")] | None = None


class ResolveSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    summary: Annotated[str, Meta(max_length=4000)] = ""


class HuddleSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    topic: Annotated[str, Meta(max_length=200)] = ""


class Caller(msgspec.Struct, frozen=True):
    """Who calls an incident route: a person, the API key, or an app's bot."""

    actor: Actor
    app_id: str | None = None
    api_key: bool = False


def duration_text(seconds: float) -> str:
    """``1h 2m``, ``12m 5s``, ``40s``."""
    total = max(0, int(round(seconds)))
    h, rest = divmod(total, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h {m}m"
    return f"{m}m {sec}s" if m else f"{sec}s"


def channel_name_for(ticket_id: str) -> str:
    """``INC-123`` -> ``inc-inc-123``: a chat channel name ([a-z0-9_-], 80 max)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", ticket_id.lower()).strip("-_") or "ticket"
    return f"inc-{slug}"[:80]


class Rooms:
    """Incidents and huddles over the integrations' chat service."""

    def __init__(self, integrations: IntegrationService) -> None:
        self.integ = integrations
        self.chat = integrations.chat
        self.settings = integrations.settings

    # ---- incidents --------------------------------------------------------------------

    def _incident_json(self, r: Row) -> dict[str, Any]:
        return {"id": r["id"], "ticket_id": r["ticket_id"], "title": r["title"], "priority": r["priority"],
                "channel_id": r["channel_id"], "responders": list(r["responders"]),
                "summary_message_id": r["summary_message_id"], "app_id": r["app_id"],
                "created_by": r["created_by"], "created_at": r["created_at"].timestamp(),
                "resolved": r["resolved_at"] is not None, "resolved_by": r["resolved_by"],
                "resolved_at": r["resolved_at"].timestamp() if r["resolved_at"] else None}

    async def _opener(self, caller: Caller) -> Actor:
        """The user whose chat operations open the war room: the bot, the admin, or (API
        key) the incidents' own user, created on first use."""
        if not caller.api_key:
            return caller.actor
        async with self.chat.db.write() as q:
            await q.upsert_user(INCIDENT_USER, display_name="Incidents", title="app", manager=None,
                                role=None, email_enc=None)
        return Actor(INCIDENT_USER, "member")

    async def create_incident(self, caller: Caller, spec: IncidentSpec) -> dict[str, Any]:
        if not spec.responders and not spec.roles:
            raise bad_request("responders or roles: at least one responder")
        people = set(spec.responders)
        async with self.chat.db.read() as q:
            if await RoomQueries(q.c).incident_by_ticket(spec.ticket_id) is not None:
                raise conflict("incident_exists", f"ticket {spec.ticket_id} has an incident already")
            if spec.roles:
                holders = await RoomQueries(q.c).users_with_titles(spec.roles)
                for role in spec.roles:
                    if role.lower() not in holders:
                        raise ChatError("user_not_found", f"nobody has the org-chart role {role!r}", 404)
                    people.update(holders[role.lower()])
        opener = await self._opener(caller)
        people.discard(opener.id)
        responders = sorted(people)
        urgent = 0 < spec.priority <= self.settings.incident_urgent_priority
        topic = f"P{spec.priority} {spec.title}"[:250]
        created = await self.chat.channels_create(opener, s.ChannelsCreate(
            name=channel_name_for(spec.ticket_id), private=True, topic=topic, members=responders))
        channel_id = created.channel.id
        # Responders by name, not @mention: the incident notification below is the one that
        # reaches them (through DND when urgent); a mention would add a second one.
        lines = [f"**Incident {spec.ticket_id}: {spec.title}**",
                 f"Priority P{spec.priority}{' (urgent)' if urgent else ''} · opened by {opener.id}",
                 f"Responders: {', '.join(responders) or '-'}"]
        if spec.link:
            lines.append(f"Ticket: {spec.link}")
        if spec.summary:
            lines += ["", spec.summary]
        extra = MessageExtra(app_id=caller.app_id) if caller.app_id else None
        summary = await self.chat.messages_send(
            opener, s.MessagesSend(channel_id=channel_id, text="\n".join(lines)), extra=extra)
        await self.chat.pins_add(opener, s.PinRef(message_id=summary.message.id))
        incident_id = "I" + secrets.token_hex(6).upper()
        async with self.chat.db.write() as q:
            row = await RoomQueries(q.c).create_incident(
                incident_id=incident_id, ticket_id=spec.ticket_id, title=spec.title,
                priority=spec.priority, channel_id=channel_id, responders=responders,
                summary_message_id=summary.message.id, app_id=caller.app_id, created_by=opener.id)
            if row is None:
                raise conflict("incident_exists", f"ticket {spec.ticket_id} has an incident already")
            await q.audit(actor=caller.actor.id, action="incident.create", target=f"incident:{incident_id}",
                          after={"ticket_id": spec.ticket_id, "priority": spec.priority,
                                 "channel_id": channel_id, "responders": responders})
            candidates = await q.notify_candidates_among(channel_id, responders)
        now = datetime.now(UTC)
        notified = []
        for r in candidates:
            in_dnd = r["dnd_until"] is not None and r["dnd_until"] > now
            if (in_dnd or r["muted"]) and not urgent:
                continue
            await self.chat._push(r["user_id"], {
                "type": "notification", "kind": "incident", "channel_id": channel_id,
                "incident_id": incident_id, "ticket_id": spec.ticket_id, "priority": spec.priority,
                "urgent": urgent, "message_id": summary.message.id, "from": opener.id,
                "text": f"P{spec.priority} {spec.title}"[:200]})
            notified.append(r["user_id"])
        return {"incident": self._incident_json(row), "notified": sorted(notified)}

    async def _incident_for(self, caller: Caller, incident_id: str, q: Any, *, lock: bool = False) -> Row:
        """The incident, if the caller may see it: admins and the API key, the app that
        opened it, or a member of its channel; "not found" for anyone else."""
        if not re.fullmatch(r"I[0-9A-F]{12}", incident_id):
            raise not_found("incident")
        row = await RoomQueries(q.c).incident(incident_id, lock=lock)
        if row is None:
            raise not_found("incident")
        if caller.api_key or rbac.is_workspace_admin(caller.actor.role) and caller.app_id is None:
            return row
        if caller.app_id is not None and caller.app_id == row["app_id"]:
            return row
        if await q.member_role(row["channel_id"], caller.actor.id) is None:
            raise not_found("incident")
        return row

    async def get_incident(self, caller: Caller, incident_id: str) -> dict[str, Any]:
        async with self.chat.db.read() as q:
            return {"incident": self._incident_json(await self._incident_for(caller, incident_id, q))}

    async def resolve_incident(self, caller: Caller, incident_id: str, spec: ResolveSpec) -> dict[str, Any]:
        """Post the outcome and archive the war room (its history stays); admins, the API
        key or the app that opened it."""
        async with self.chat.db.read() as q:
            row = await self._incident_for(caller, incident_id, q)
        may = caller.api_key or (caller.app_id is None and rbac.is_workspace_admin(caller.actor.role)) \
            or (caller.app_id is not None and caller.app_id == row["app_id"])
        if not may:
            raise forbidden("only workspace admins or the app that opened it resolve an incident")
        async with self.chat.db.write() as q:
            locked = await RoomQueries(q.c).incident(incident_id, lock=True)
            assert locked is not None  # noqa: S101 - read just above; incidents are never deleted
            if locked["resolved_at"] is not None:
                raise conflict("resolved", "the incident is resolved already")
            row = await RoomQueries(q.c).resolve_incident(incident_id, caller.actor.id)
            await q.audit(actor=caller.actor.id, action="incident.resolve", target=f"incident:{incident_id}",
                          after={"channel_id": row["channel_id"]})
        # The opener is the war room's channel admin: it posts the outcome and archives.
        opener = Actor(row["created_by"], "member")
        took = duration_text((row["resolved_at"] - row["created_at"]).total_seconds())
        text = f"**Resolved** by {caller.actor.id} after {took}."
        if spec.summary:
            text += "\n\n" + spec.summary
        extra = MessageExtra(app_id=row["app_id"]) if row["app_id"] else None
        await self.chat.messages_send(opener, s.MessagesSend(channel_id=row["channel_id"], text=text), extra=extra)
        await self.chat.channels_archive(opener, s.ChannelRef(channel_id=row["channel_id"]))
        return {"incident": self._incident_json(row)}

    # ---- huddles ----------------------------------------------------------------------

    def _huddle_json(self, r: Row, people: list[str], total: int) -> dict[str, Any]:
        ended = r["ended_at"]
        return {"id": r["id"], "channel_id": r["channel_id"], "url": r["url"], "message_id": r["message_id"],
                "started_by": r["started_by"], "started_at": r["started_at"].timestamp(),
                "ended_by": r["ended_by"], "ended_at": ended.timestamp() if ended else None,
                "participants": people, "participant_count": total,
                "duration": (ended - r["started_at"]).total_seconds() if ended else None}

    async def _huddle_view(self, huddle_id: str) -> dict[str, Any]:
        async with self.chat.db.read() as q:
            r = await RoomQueries(q.c).huddle(huddle_id)
            assert r is not None  # noqa: S101 - huddles are never deleted
            people, total = await RoomQueries(q.c).huddle_people(huddle_id)
        return self._huddle_json(r, people, total)

    async def _postable(self, actor: Actor, channel_id: str) -> Row:
        async with self.chat.db.read() as q:
            ch, role = await self.chat._visible(q, actor, channel_id)
        if not rbac.can_post(role, ch["archived"]):
            raise forbidden("only members of an active channel can use huddles")
        return ch

    async def start_huddle(self, actor: Actor, channel_id: str, spec: HuddleSpec) -> tuple[dict[str, Any], bool]:
        """A new huddle in the channel (the caller joins it), or the one already live there
        (joined); (huddle, created)."""
        template = self.settings.huddle_url_template
        if not template:
            raise ChatError("not_available", "huddles are not configured (integrations.huddle_url_template)", 503)
        await self._postable(actor, channel_id)
        async with self.chat.db.read() as q:
            live = await RoomQueries(q.c).live_huddle(channel_id)
        if live is not None:
            await self._join(actor, live["id"])
            return await self._huddle_view(live["id"]), False
        huddle_id = "h" + secrets.token_hex(8)
        url = template.replace("{id}", huddle_id).replace("{channel}", channel_id)
        async with self.chat.db.write() as q:
            row = await RoomQueries(q.c).create_huddle(huddle_id, channel_id, url, actor.id)
            if row is None:  # another start won the race: join that one
                live = await RoomQueries(q.c).live_huddle(channel_id)
            else:
                await q.audit(actor=actor.id, action="huddle.start", target=f"channel:{channel_id}",
                              after={"huddle_id": huddle_id, "url": url})
        if row is None:
            assert live is not None  # noqa: S101 - the unique index named it
            await self._join(actor, live["id"])
            return await self._huddle_view(live["id"]), False
        label = f"🎧 {actor.id} started a huddle" + (f": {spec.topic}" if spec.topic else "")
        blocks = slack.validate_blocks([
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{label}*"}},
            {"type": "actions", "block_id": "huddle", "elements": [
                {"type": "button", "action_id": "huddle_join", "style": "primary", "value": huddle_id,
                 "url": url, "text": {"type": "plain_text", "text": "Join"}}]}])
        # The meeting URL lives in the button, not the text: nothing to unfurl.
        sent = await self.chat.messages_send(actor, s.MessagesSend(channel_id=channel_id, text=label),
                                             extra=MessageExtra(blocks=orjson.dumps(blocks).decode()))
        async with self.chat.db.write() as q:
            await RoomQueries(q.c).set_huddle_message(huddle_id, sent.message.id)
        await self._join(actor, huddle_id)
        view = await self._huddle_view(huddle_id)
        await self.chat._emit(channel_id, {"type": "huddle.started", "huddle": view}, f"huddle.started:{huddle_id}")
        return view, True

    async def _live(self, actor: Actor, huddle_id: str) -> Row:
        if not re.fullmatch(r"h[0-9a-f]{16}", huddle_id):
            raise not_found("huddle")
        async with self.chat.db.read() as q:
            row = await RoomQueries(q.c).huddle(huddle_id)
            if row is None:
                raise not_found("huddle")
            try:
                await self.chat._visible(q, actor, row["channel_id"])
            except ChatError:
                raise not_found("huddle") from None
        return row

    async def get_huddle(self, actor: Actor, huddle_id: str) -> dict[str, Any]:
        await self._live(actor, huddle_id)
        return await self._huddle_view(huddle_id)

    async def _join(self, actor: Actor, huddle_id: str) -> bool:
        """Add the caller and show it "In a huddle" (its status is kept to put back)."""
        async with self.chat.db.write() as q:
            row = await RoomQueries(q.c).huddle(huddle_id, lock=True)
            assert row is not None  # noqa: S101 - checked by the caller
            if row["ended_at"] is not None:
                raise conflict("ended", "the huddle has ended")
            st = await q.status(actor.id)
            now = datetime.now(UTC)
            # An expired custom status is no status: nothing to put back.
            prev = st if st is not None and (st["status_until"] is None or st["status_until"] > now) else None
            joined = await RoomQueries(q.c).join_huddle(
                huddle_id, actor.id, prev_text=prev["status_text"] if prev is not None else "",
                prev_emoji=prev["status_emoji"] if prev is not None else "",
                prev_until=prev["status_until"] if prev is not None else None)
        if joined:
            await self.chat.presence_set_status(actor, s.SetStatus(text=HUDDLE_STATUS, emoji=HUDDLE_EMOJI, until=0))
            await self.chat._emit(row["channel_id"], {"type": "huddle.joined", "huddle_id": huddle_id,
                                                      "user_id": actor.id},
                                  f"huddle.joined:{huddle_id}:{actor.id}:{time.time_ns()}")
        return joined

    async def join_huddle(self, actor: Actor, huddle_id: str) -> dict[str, Any]:
        row = await self._live(actor, huddle_id)
        await self._postable(actor, row["channel_id"])
        await self._join(actor, huddle_id)
        return await self._huddle_view(huddle_id)

    async def _restore(self, rows: list[Row]) -> None:
        """Put back the status participants had, unless they changed it meanwhile."""
        for r in rows:
            user = Actor(r["user_id"], "member")
            async with self.chat.db.read() as q:
                st = await q.status(user.id)
            if st is None or st["status_text"] != HUDDLE_STATUS:
                continue
            until = int(r["prev_until"].timestamp()) if r["prev_until"] is not None else 0
            await self.chat.presence_set_status(user, s.SetStatus(text=r["prev_text"][:100],
                                                                  emoji=r["prev_emoji"][:64], until=until))

    async def leave_huddle(self, actor: Actor, huddle_id: str) -> dict[str, Any]:
        """The caller leaves; the last one out ends the huddle."""
        row = await self._live(actor, huddle_id)
        async with self.chat.db.write() as q:
            left = await RoomQueries(q.c).leave_huddle(huddle_id, [actor.id])
            people, _ = await RoomQueries(q.c).huddle_people(huddle_id)
        if not left:
            raise ChatError("not_member", "you are not in this huddle", 409)
        await self._restore(left)
        await self.chat._emit(row["channel_id"], {"type": "huddle.left", "huddle_id": huddle_id, "user_id": actor.id},
                              f"huddle.left:{huddle_id}:{actor.id}:{time.time_ns()}")
        if not people and row["ended_at"] is None:
            return await self._end(actor, huddle_id)
        return await self._huddle_view(huddle_id)

    async def end_huddle(self, actor: Actor, huddle_id: str) -> dict[str, Any]:
        """End it (its starter, a participant, a channel or workspace admin); every
        participant leaves, and the channel gets its end and duration."""
        row = await self._live(actor, huddle_id)
        async with self.chat.db.read() as q:
            people, _ = await RoomQueries(q.c).huddle_people(huddle_id)
            role = await q.member_role(row["channel_id"], actor.id)
        if actor.id != row["started_by"] and actor.id not in people and role != "admin" \
                and not rbac.is_workspace_admin(actor.role):
            raise forbidden("only the huddle's starter, its participants or admins end it")
        return await self._end(actor, huddle_id)

    async def _end(self, actor: Actor, huddle_id: str) -> dict[str, Any]:
        async with self.chat.db.write() as q:
            rq = RoomQueries(q.c)
            row = await rq.huddle(huddle_id, lock=True)
            assert row is not None  # noqa: S101 - checked by the caller
            if row["ended_at"] is not None:
                raise conflict("ended", "the huddle has ended")
            row = await rq.end_huddle(huddle_id, actor.id)
            left = await rq.leave_huddle(huddle_id)
            _, total = await rq.huddle_people(huddle_id)
            took = duration_text((row["ended_at"] - row["started_at"]).total_seconds())
            await q.audit(actor=actor.id, action="huddle.end", target=f"channel:{row['channel_id']}",
                          after={"huddle_id": huddle_id, "duration": took, "participants": total})
        await self._restore(left)
        ender = Actor(actor.id, actor.role)
        text = f"🎧 Huddle ended after {took} · {total} {'person' if total == 1 else 'people'}"
        try:
            await self.chat.messages_send(ender, s.MessagesSend(channel_id=row["channel_id"], text=text))
        except ChatError:
            # An admin ending a huddle in a channel it is not in: the starter's name posts it.
            await self.chat.messages_send(Actor(row["started_by"], "member"),
                                          s.MessagesSend(channel_id=row["channel_id"], text=text))
        if row["message_id"] is not None:
            # The Join button goes: the start message now says how it went.
            ended_blocks = slack.validate_blocks([{"type": "section", "text": {"type": "mrkdwn", "text": text}}])
            try:
                await self.chat.messages_edit(
                    Actor(row["started_by"], "member"), s.MessagesEdit(message_id=row["message_id"], text=text),
                    blocks=orjson.dumps(ended_blocks).decode(), set_blocks=True)
            except ChatError:
                pass  # the starter left the channel: its message keeps the old text
        view = await self._huddle_view(huddle_id)
        await self.chat._emit(row["channel_id"], {"type": "huddle.ended", "huddle": view}, f"huddle.ended:{huddle_id}")
        return view


__all__ = ["Caller", "HuddleSpec", "IncidentSpec", "ResolveSpec", "Rooms", "channel_name_for", "duration_text"]
