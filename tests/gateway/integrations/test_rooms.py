"""Incident war rooms and huddles over /v1 against a real gateway: who may open and resolve
an incident (RBAC negatives), the private channel, pinned summary, notifications through
DND for priority 1 (seen by a real centrifuge-python client), archive keeping history;
huddles' Join button, "In a huddle" status put back afterwards, end and duration."""

from __future__ import annotations

import secrets
import time
from typing import Any

from tests.gateway.integrations.conftest import IntegEnv


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_incident_war_room_opened_by_an_app_and_resolved(integ: IntegEnv) -> None:
    paged = await integ.user("pgd")
    sre = await integ.user("sre", title=f"SRE On-call {secrets.token_hex(2)}")
    sre_title = (await integ.ok("GET", f"/v1/users/{sre}", sre))["user"]["title"]
    outsider = await integ.user("out")
    app = await integ.app(f"Pager {secrets.token_hex(3)}")
    bot = bearer(app["bot_token"])
    # The paged responder is in Do Not Disturb: priority 1 reaches it anyway.
    await integ.ok("PUT", "/v1/status", paged, {"dnd_until": int(time.time()) + 3600})
    client, events = await integ.connect(paged)
    ticket = f"INC-{secrets.token_hex(3)}"
    r = await integ.http("POST", "/v1/incidents", body={
        "ticket_id": ticket, "title": "Database down", "priority": 1, "responders": [paged],
        "roles": [sre_title], "summary": "Primary is not answering", "link": "https://tickets.example/1"},
        headers=bot)
    assert r.status == 201, r.body
    inc = r.body["incident"]
    assert inc["ticket_id"] == ticket and inc["responders"] == sorted([paged, sre])
    assert r.body["notified"] == sorted([paged, sre])
    note = await events.next_where("publication", lambda c: c.pub.data.get("kind") == "incident")
    assert note.pub.data["urgent"] is True and note.pub.data["incident_id"] == inc["id"]
    ch = inc["channel_id"]
    listed = await integ.ok("GET", "/v1/channels", paged)
    room = next(c for c in listed["channels"] if c["id"] == ch)
    assert room["kind"] == "private" and room["name"] == f"inc-{ticket.lower()}" and room["member"]
    pins = await integ.ok("GET", f"/v1/channels/{ch}/pins", sre)
    assert [m["id"] for m in pins["messages"]] == [inc["summary_message_id"]]
    assert "Database down" in pins["messages"][0]["text"] and pins["messages"][0]["app_id"] == app["app"]["id"]
    # A private room: an outsider sees neither the channel nor the incident.
    assert (await integ.http("GET", f"/v1/channels/{ch}/messages", outsider)).status == 404
    assert (await integ.http("GET", f"/v1/incidents/{inc['id']}", outsider)).status == 404
    assert (await integ.ok("GET", f"/v1/incidents/{inc['id']}", sre))["incident"]["id"] == inc["id"]
    # The same ticket twice is refused.
    again = await integ.http("POST", "/v1/incidents", body={"ticket_id": ticket, "title": "x", "responders": [sre]},
                             headers=bot)
    assert again.status == 409 and again.body["error"]["code"] == "incident_exists"
    # Only admins or the app that opened it resolve it.
    other = await integ.app(f"Other {secrets.token_hex(3)}")
    assert (await integ.http("POST", f"/v1/incidents/{inc['id']}/resolve", body={},
                             headers=bearer(other["bot_token"]))).status == 404
    assert (await integ.http("POST", f"/v1/incidents/{inc['id']}/resolve", sre, {})).status == 403
    done = await integ.http("POST", f"/v1/incidents/{inc['id']}/resolve", body={"summary": "failover"}, headers=bot)
    assert done.status == 200, done.body
    assert done.body["incident"]["resolved"] and done.body["incident"]["resolved_by"] == app["app"]["bot_user_id"]
    twice = await integ.http("POST", f"/v1/incidents/{inc['id']}/resolve", body={}, headers=bot)
    assert twice.status == 409
    # Archived, history kept and readable by its members.
    page = await integ.ok("GET", f"/v1/channels/{ch}/messages", paged)
    texts = [m["text"] for m in page["messages"]]
    assert any("Database down" in t for t in texts) and "failover" in texts[-1]
    listed = await integ.ok("GET", "/v1/channels", paged, params={"include_archived": "true"})
    assert next(c for c in listed["channels"] if c["id"] == ch)["archived"]
    assert (await integ.http("POST", f"/v1/channels/{ch}/messages", paged, {"text": "late"})).status in (403, 409)


async def test_low_priority_incident_respects_dnd_and_admins_open_them(integ: IntegEnv) -> None:
    admin = await integ.user("adm", role="admin")
    dnd = await integ.user("dnd")
    awake = await integ.user("awk")
    await integ.ok("PUT", "/v1/status", dnd, {"dnd_until": int(time.time()) + 3600})
    r = await integ.http("POST", "/v1/incidents", admin, {
        "ticket_id": f"T-{secrets.token_hex(3)}", "title": "Slow search", "priority": 3,
        "responders": [dnd, awake]})
    assert r.status == 201, r.body
    assert r.body["notified"] == [awake]
    assert r.body["incident"]["created_by"] == admin
    # The API key opens them too (as the incidents' own user) and resolves them.
    k = await integ.admin("POST", "/v1/incidents", {"ticket_id": f"K-{secrets.token_hex(3)}", "title": "Disk",
                                                    "priority": 2, "responders": [awake]})
    assert k.status == 201 and k.body["incident"]["created_by"] == "sentchat.incidents"
    assert (await integ.admin("POST", f"/v1/incidents/{k.body['incident']['id']}/resolve", {})).status == 200
    # A workspace admin resolves an incident it did not open.
    assert (await integ.http("POST", f"/v1/incidents/{r.body['incident']['id']}/resolve", admin, {})).status == 200


async def test_incident_rbac_and_validation(integ: IntegEnv) -> None:
    member = await integ.user("mem")
    guest = await integ.user("gst", role="guest")
    admin = await integ.user("adm", role="admin")
    responder = await integ.user("rsp")
    ch = await integ.channel(member)
    restricted = await integ.app(f"Restricted {secrets.token_hex(3)}", channels=[ch])
    disabled = await integ.app(f"Disabled {secrets.token_hex(3)}")
    await integ.admin("PATCH", f"/v1/apps/{disabled['app']['id']}", {"enabled": False})

    def body(**more: Any) -> dict[str, Any]:
        return {"ticket_id": f"R-{secrets.token_hex(3)}", "title": "t", "responders": [responder], **more}

    assert (await integ.http("POST", "/v1/incidents", body=body())).status == 401
    assert (await integ.http("POST", "/v1/incidents", member, body())).status == 403
    assert (await integ.http("POST", "/v1/incidents", guest, body())).status == 403
    assert (await integ.http("POST", "/v1/incidents", body=body(),
                             headers=bearer(restricted["bot_token"]))).status == 403
    assert (await integ.http("POST", "/v1/incidents", body=body(),
                             headers=bearer(disabled["bot_token"]))).status == 401
    for bad in (body(priority=0), body(priority=6), body(title=""), body(ticket_id="bad id!"),
                body(responders=[]), body(extra=1), body(link="ftp://x")):
        r = await integ.http("POST", "/v1/incidents", admin, bad)
        assert r.status == 400, (bad, r.body)
    r = await integ.http("POST", "/v1/incidents", admin, body(responders=["nobody-" + secrets.token_hex(3)]))
    assert r.status == 404 and r.body["error"]["code"] == "user_not_found"
    r = await integ.http("POST", "/v1/incidents", admin, body(responders=[], roles=["No Such Role x9"]))
    assert r.status == 404
    assert (await integ.http("GET", "/v1/incidents/I000000000000", admin)).status == 404
    assert (await integ.http("GET", "/v1/incidents", admin)).status == 405
    assert (await integ.http("POST", "/v1/incidents", admin, [1])).status == 400


async def test_huddle_join_status_end_and_duration(integ: IntegEnv) -> None:
    host = await integ.user("hst")
    guest_of = await integ.user("prt")
    bystander = await integ.user("bys")
    outsider = await integ.user("out")
    ch = await integ.channel(host, guest_of, bystander, private=True)
    await integ.ok("PUT", "/v1/status", host, {"text": "focus", "emoji": ":brain:"})
    r = await integ.http("POST", f"/v1/channels/{ch}/huddles", host, {"topic": "standup"})
    assert r.status == 201, r.body
    h = r.body["huddle"]
    assert h["url"] == f"https://meet.example.test/{ch}/{h['id']}" and h["participants"] == [host]
    page = await integ.ok("GET", f"/v1/channels/{ch}/messages", host)
    start = next(m for m in page["messages"] if m["id"] == h["message_id"])
    button = start["blocks"][1]["elements"][0]
    assert button["url"] == h["url"] and button["text"]["text"] == "Join" and "standup" in start["text"]
    me = (await integ.ok("GET", f"/v1/users/{host}", host))["user"]["status"]
    assert me["text"] == "In a huddle" and me["emoji"] == ":headphones:"
    # A second start in the channel joins the live huddle.
    again = await integ.http("POST", f"/v1/channels/{ch}/huddles", guest_of, {})
    assert again.status == 200 and again.body["created"] is False
    assert again.body["huddle"]["participants"] == [host, guest_of]
    # Outsiders see nothing; a member who is not in it may not end it.
    assert (await integ.http("POST", f"/v1/huddles/{h['id']}/join", outsider)).status == 404
    assert (await integ.http("POST", f"/v1/huddles/{h['id']}/end", outsider)).status == 404
    assert (await integ.http("POST", f"/v1/huddles/{h['id']}/end", bystander)).status == 403
    assert (await integ.http("POST", f"/v1/huddles/{h['id']}/leave", bystander)).status == 409
    assert (await integ.http("POST", "/v1/huddles/bad/join", host)).status == 404
    left = await integ.ok("POST", f"/v1/huddles/{h['id']}/leave", guest_of)
    assert left["huddle"]["participants"] == [host]
    assert (await integ.ok("GET", f"/v1/users/{guest_of}", guest_of))["user"]["status"]["text"] == ""
    ended = (await integ.ok("POST", f"/v1/huddles/{h['id']}/end", host))["huddle"]
    assert ended["ended_by"] == host and ended["duration"] >= 0 and ended["participant_count"] == 2
    page = await integ.ok("GET", f"/v1/channels/{ch}/messages", host)
    assert page["messages"][-1]["text"].startswith("🎧 Huddle ended after ")
    assert "2 people" in page["messages"][-1]["text"]
    start = next(m for m in page["messages"] if m["id"] == h["message_id"])
    assert all(b["type"] != "actions" for b in start["blocks"])  # the Join button is gone
    me = (await integ.ok("GET", f"/v1/users/{host}", host))["user"]["status"]
    assert me["text"] == "focus" and me["emoji"] == ":brain:"  # put back
    assert (await integ.http("POST", f"/v1/huddles/{h['id']}/join", guest_of)).status == 409
    assert (await integ.http("POST", f"/v1/huddles/{h['id']}/end", host)).status == 409
    # A new huddle after the end; bots cannot start one; unknown fields are refused.
    assert (await integ.http("POST", f"/v1/channels/{ch}/huddles", host, {"x": 1})).status == 400
    app = await integ.app(f"Hud {secrets.token_hex(3)}", channels=[ch])
    assert (await integ.http("POST", f"/v1/channels/{ch}/huddles", body={},
                             headers=bearer(app["bot_token"]))).status == 403
    assert (await integ.http("POST", f"/v1/channels/{ch}/huddles", outsider, {})).status == 404
    fresh = await integ.http("POST", f"/v1/channels/{ch}/huddles", bystander, {})
    assert fresh.status == 201 and fresh.body["huddle"]["id"] != h["id"]
    await integ.ok("POST", f"/v1/huddles/{fresh.body['huddle']['id']}/end", bystander)
