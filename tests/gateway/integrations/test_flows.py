"""Slash commands, interactive messages and outgoing events against real slack_bolt apps
(their request verification left on) on local ports, plus the signature rules on their own."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from slack_bolt import App

from gateway.integrations import slack
from tests.gateway.chat.conftest import rpc
from tests.gateway.integrations.conftest import IntegEnv


async def until(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# ---- signatures ---------------------------------------------------------------------------


def test_signature_rules() -> None:
    body = b"command=%2Fticket&text=hi"
    now = 1_700_000_000.0
    h = slack.signed_headers("s3cret", body, now=now)
    ts, sig = h["X-Slack-Request-Timestamp"], h["X-Slack-Signature"]
    assert sig.startswith("v0=") and len(sig) == 67
    assert slack.verify("s3cret", ts, sig, body, tolerance=300, now=now)
    assert not slack.verify("wrong", ts, sig, body, tolerance=300, now=now)           # wrong secret
    assert not slack.verify("s3cret", ts, sig, body, tolerance=300, now=now + 301)    # stale / replayed later
    assert not slack.verify("s3cret", ts, sig, body + b"x", tolerance=300, now=now)   # body tampered
    assert not slack.verify("s3cret", str(int(ts) + 1), sig, body, tolerance=300, now=now)  # ts tampered
    assert not slack.verify("s3cret", "abc", sig, body, tolerance=300, now=now)
    # The same check slack_sdk's own verifier makes agrees with ours.
    from slack_sdk.signature import SignatureVerifier

    v = SignatureVerifier("s3cret", clock=type("C", (), {"now": staticmethod(lambda: now)})())
    assert v.is_valid(body, ts, sig)
    assert slack.message_id_of(slack.ts_of(1234567)) == 1234567 and slack.message_id_of("x") is None


# ---- slash commands -------------------------------------------------------------------------


async def test_slash_command_with_bolt_ack_respond_and_in_channel(integ: IntegEnv, bolt: Any) -> None:
    user = await integ.user("usr")
    ch = await integ.channel(user)
    created = await integ.app("Tickets", channels=[ch], commands=[
        {"command": "/ticket", "description": "Create a ticket", "usage_hint": "create <title>"}])
    app_id = created["app"]["id"]
    seen: list[dict[str, Any]] = []

    def setup(app: App) -> None:
        @app.command("/ticket")
        def ticket(ack: Any, respond: Any, command: dict[str, Any]) -> None:
            seen.append(command)
            if command["text"].startswith("public"):
                ack(response_type="in_channel", text=f"Ticket for everyone: {command['text']}")
                return
            ack()
            respond(f"Created ticket *{command['text']}*")

        @app.command("/slow")
        def slow(ack: Any) -> None:
            time.sleep(3)
            ack()

    runner = await bolt(created["bot_token"], created["signing_secret"], setup)
    await integ.admin("PATCH", f"/v1/apps/{app_id}", {"commands_url": runner.url, "commands": [
        {"command": "/ticket", "description": "Create a ticket"}, {"command": "/slow"}]})
    client, events = await integ.connect(user)
    listed = await rpc(client, "commands.list")
    assert {"/ticket", "/me", "/huddle"} <= {c["command"] for c in listed["commands"]}
    # Ephemeral: the immediate answer is empty (ack), the delayed one arrives on the
    # caller's personal channel through response_url.
    result = await rpc(client, "commands.run", channel_id=ch, command="/ticket", text="create printer jam")
    assert result["response_type"] == "ephemeral"
    ev = await events.next_where("publication", lambda c: c.pub.data.get("type") == "ephemeral")
    assert ev.pub.data["text"] == "Created ticket **create printer jam**"
    form = seen[0]
    assert form["user_id"] == user and form["channel_id"] == ch and form["api_app_id"] == app_id
    assert form["response_url"].startswith(f"{integ.srv.http_url}/hooks/r/") and form["team_id"]
    page = await integ.ok("GET", f"/v1/channels/{ch}/messages", user)
    assert not page["messages"]  # nothing ephemeral was stored
    # in_channel over /v1: posted by the bot.
    r = await integ.ok("POST", f"/v1/channels/{ch}/commands", user, {"command": "/ticket", "text": "public one"})
    assert r["response_type"] == "in_channel"
    page = await integ.ok("GET", f"/v1/channels/{ch}/messages", user)
    assert page["messages"][-1]["text"] == "Ticket for everyone: public one"
    assert page["messages"][-1]["author_id"] == created["app"]["bot_user_id"]
    # The response_url: at most 5 uses.
    url = form["response_url"]
    import aiohttp

    async with aiohttp.ClientSession() as http:
        codes = []
        for _ in range(5):
            async with http.post(url, json={"text": "again"}) as resp:
                codes.append(resp.status)
        assert codes == [200, 200, 200, 200, 404]  # bolt's respond() used the first
    # A slow app: a friendly ephemeral error after the deadline (2 s in the test config).
    started = time.monotonic()
    r = await integ.ok("POST", f"/v1/channels/{ch}/commands", user, {"command": "/slow"})
    assert r["response_type"] == "ephemeral" and "did not answer" in r["text"]
    assert time.monotonic() - started < 3
    # Unknown command, a channel the caller cannot see, bad input.
    assert (await integ.http("POST", f"/v1/channels/{ch}/commands", user, {"command": "/nope"})).status == 404
    stranger = await integ.user("str")
    private = await integ.channel(stranger, private=True)
    assert (await integ.http("POST", f"/v1/channels/{private}/commands", user,
                             {"command": "/ticket"})).status == 404
    assert (await integ.http("POST", f"/v1/channels/{ch}/commands", user, {"command": "ticket"})).status == 400


async def test_wrong_signing_secret_is_refused_by_bolt(integ: IntegEnv, bolt: Any) -> None:
    user = await integ.user("usr")
    ch = await integ.channel(user)
    created = await integ.app("Strict", channels=[ch], commands=[{"command": "/strict"}])
    called = threading.Event()

    def setup(app: App) -> None:
        @app.command("/strict")
        def strict(ack: Any) -> None:
            called.set()
            ack("never")

    # The bolt app knows another secret: SENTchat's signature does not verify there.
    runner = await bolt(created["bot_token"], "0" * 64, setup)
    await integ.admin("PATCH", f"/v1/apps/{created['app']['id']}", {"commands_url": runner.url})
    r = await integ.ok("POST", f"/v1/channels/{ch}/commands", user, {"command": "/strict"})
    assert "401" in r["text"] and not called.is_set()


async def test_builtin_commands(integ: IntegEnv) -> None:
    user = await integ.user("usr")
    other = await integ.user("oth")
    ch = await integ.channel(user)
    run = lambda cmd, text="": integ.ok("POST", f"/v1/channels/{ch}/commands", user,  # noqa: E731
                                        {"command": cmd, "text": text})
    await run("/me", "waves")
    await run("/shrug", "oh well")
    await run("/topic", "launch day")
    await run("/invite", f"@{other}")
    await run("/dnd", "30m")
    await run("/status", "lunch until 1h")
    await run("/mute")
    page = await integ.ok("GET", f"/v1/channels/{ch}/messages", user)
    assert [m["text"] for m in page["messages"]][-2:] == ["_waves_", "oh well ¯\\_(ツ)_/¯"]
    me = (await integ.ok("GET", f"/v1/users/{user}", user))["user"]
    assert me["status"]["dnd"] and me["status"]["text"] == "lunch"
    info = await integ.ok("GET", "/v1/channels", other)
    assert any(c["id"] == ch and c["member"] and c["topic"] == "launch day" for c in info["channels"])
    r = await run("/huddle")
    assert r["text"].startswith("Huddle started: https://meet.example.test/")
    r = await run("/huddle", "leave")  # the last one out ends it
    assert r["text"] == "You left the huddle"


# ---- interactive messages -----------------------------------------------------------------


async def test_approval_button_with_bolt_admins_only_replaces_message(integ: IntegEnv, bolt: Any) -> None:
    admin = await integ.user("adm", role="admin")
    member = await integ.user("mem")
    outsider = await integ.user("out")
    ch = await integ.channel(admin, member)
    created = await integ.app("Security", channels=[ch], click_policy="admins")
    clicks: list[dict[str, Any]] = []

    def setup(app: App) -> None:
        @app.action("block_ip")
        def block(ack: Any, body: dict[str, Any], respond: Any) -> None:
            ack()
            clicks.append(body)
            respond(replace_original=True, text=f"Blocked 10.0.0.9 (approved by <@{body['user']['id']}>)")

    runner = await bolt(created["bot_token"], created["signing_secret"], setup)
    await integ.admin("PATCH", f"/v1/apps/{created['app']['id']}", {"interactivity_url": runner.url})
    web = integ.web(created["bot_token"])
    posted = await asyncio.to_thread(web.chat_postMessage, channel=ch, text="Block this IP?", blocks=[
        {"type": "section", "block_id": "q", "text": {"type": "mrkdwn", "text": "Block *10.0.0.9*?"}},
        {"type": "actions", "block_id": "a", "elements": [
            {"type": "button", "action_id": "block_ip", "style": "danger", "value": "10.0.0.9",
             "text": {"type": "plain_text", "text": "Yes"}},
            {"type": "static_select", "action_id": "ttl", "options": [
                {"text": {"type": "plain_text", "text": "1h"}, "value": "1h"}]}]}])
    mid = slack.message_id_of(posted["ts"])
    # A member may read the channel but the app lets only admins click; an outsider of
    # a channel it cannot see gets "not found"; a made-up action too; forged values are
    # ignored (the button's own value goes to the app).
    r = await integ.http("POST", f"/v1/messages/{mid}/actions", member, {"action_id": "block_ip"})
    assert r.status == 403, r.body
    r = await integ.http("POST", f"/v1/messages/{mid}/actions", admin, {"action_id": "nope"})
    assert r.status == 404
    # An outsider of a private channel cannot click there: "not found", like the message.
    secret = await integ.channel(admin, private=True)
    other_app = await integ.app("Security-private", channels=[secret])
    hidden = await asyncio.to_thread(integ.web(other_app["bot_token"]).chat_postMessage, channel=secret,
                                     text="x", blocks=[{"type": "actions", "elements": [
                                         {"type": "button", "action_id": "go",
                                          "text": {"type": "plain_text", "text": "Go"}}]}])
    r = await integ.http("POST", f"/v1/messages/{slack.message_id_of(hidden['ts'])}/actions", outsider,
                         {"action_id": "go"})
    assert r.status == 404
    r = await integ.http("POST", f"/v1/messages/{mid}/actions", outsider, {"action_id": "block_ip"})
    assert r.status == 403  # public channel: readable, but admins only
    r = await integ.http("POST", f"/v1/messages/{mid}/actions", admin, {"action_id": "ttl", "value": "99y"})
    assert r.status == 400
    r = await integ.ok("POST", f"/v1/messages/{mid}/actions", admin,
                       {"action_id": "block_ip", "value": "forged"})
    assert r == {"ok": True}
    await until(lambda: bool(clicks))
    body = clicks[0]
    assert body["type"] == "block_actions" and body["user"]["id"] == admin
    assert body["actions"][0]["value"] == "10.0.0.9" and body["container"]["message_ts"] == posted["ts"]

    async def replaced() -> bool:
        m = (await integ.ok("GET", f"/v1/channels/{ch}/messages", admin))["messages"][-1]
        return m["text"].startswith("Blocked") and m["version"] == 2

    deadline = time.monotonic() + 10
    while not await replaced():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    msg = (await integ.ok("GET", f"/v1/channels/{ch}/messages", admin))["messages"][-1]
    assert msg["text"] == f"Blocked 10.0.0.9 (approved by @{admin})" and msg["blocks"] is None
    # Every click is audited (the refused ones are not clicks).
    conn = await integ.db()
    try:
        rows = await conn.fetch("SELECT actor, delta FROM audit_log WHERE action = 'app.action' "
                                "AND target = $1", f"message:{mid}")
    finally:
        await conn.close()
    assert [r["actor"] for r in rows] == [admin]


# ---- outgoing events ------------------------------------------------------------------------


async def test_app_mention_with_bolt_and_outbox_in_order_after_downtime(integ: IntegEnv, bolt: Any) -> None:
    user = await integ.user("usr")
    ch = await integ.channel(user)
    created = await integ.app("Helper", channels=[ch], events=["app_mention", "message", "reaction_added"])
    app_id, bot = created["app"]["id"], created["app"]["bot_user_id"]
    mentions: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []

    def setup(app: App) -> None:
        @app.event("app_mention")
        def mention(event: dict[str, Any], say: Any) -> None:
            mentions.append(event)
            say(f"Hi <@{event['user']}>!")

        @app.event("message")
        def message(event: dict[str, Any]) -> None:
            messages.append(event)

        @app.event("reaction_added")
        def reaction(event: dict[str, Any]) -> None:
            messages.append(event)

    # Listeners run before the answer (process_before_response): the order they record is
    # the order SENTchat delivered in, not a thread pool's.
    runner = await bolt(created["bot_token"], created["signing_secret"], setup, process_before_response=True)
    await integ.admin("PATCH", f"/v1/apps/{app_id}", {"events_url": runner.url})
    sent = await integ.ok("POST", f"/v1/channels/{ch}/messages", user, {"text": f"hey @{bot} help"})
    await until(lambda: bool(mentions))
    assert mentions[0]["text"] == f"hey <@{bot}> help" and mentions[0]["channel"] == ch
    # The bot's answer (say -> chat.postMessage) landed in the channel.
    deadline = time.monotonic() + 10
    while True:
        page = await integ.ok("GET", f"/v1/channels/{ch}/messages", user)
        if page["messages"][-1]["author_id"] == bot:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert page["messages"][-1]["text"] == f"Hi @{user}!"
    await asyncio.sleep(0.5)
    assert all(m.get("user") != bot for m in messages)  # an app does not hear itself
    # The app goes down: the sends are not delayed; once it is back, every event arrives,
    # in order.
    runner.stop()
    messages.clear()
    started = time.monotonic()
    for i in range(10):
        await integ.ok("POST", f"/v1/channels/{ch}/messages", user, {"text": f"m{i}"})
    await integ.ok("PUT", f"/v1/messages/{sent['message']['id']}/reactions/eyes", user)
    assert time.monotonic() - started < 5
    conn = await integ.db()
    try:
        # Wait for failed attempts (backoff 0.2 s .. 0.5 s; dead-lettered only after 10),
        # rather than a fixed sleep that a loaded machine outruns.
        deadline = time.monotonic() + 10
        while not await conn.fetchval(
                "SELECT coalesce(max(attempts), 0) FROM integ_outbox WHERE app_id = $1 AND state = 'pending'",
                app_id):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        pending = await conn.fetchval("SELECT count(*) FROM integ_outbox WHERE app_id = $1 AND state = 'pending'",
                                      app_id)
        assert pending >= 11
        back = await bolt(created["bot_token"], created["signing_secret"], setup, process_before_response=True)
        await integ.admin("PATCH", f"/v1/apps/{app_id}", {"events_url": back.url})
        await until(lambda: len(messages) >= 11, timeout=20)
        texts = [m.get("text") for m in messages if m["type"] == "message"]
        assert texts == [f"m{i}" for i in range(10)]
        assert messages[-1]["type"] == "reaction_added" and messages[-1]["reaction"] == "eyes"
    finally:
        await conn.close()


async def test_dead_app_is_dead_lettered_and_listed(integ: IntegEnv, bolt: Any) -> None:
    user = await integ.user("usr")
    ch = await integ.channel(user)
    created = await integ.app("Gone", channels=[ch], events=["message"])
    app_id = created["app"]["id"]
    # url_verification: an events URL that does not echo the challenge is refused...
    from tests.gateway.integrations.conftest import free_port

    dead_url = f"http://127.0.0.1:{free_port()}/events"
    r = await integ.admin("PATCH", f"/v1/apps/{app_id}", {"events_url": dead_url})
    assert r.status == 400 and "url_verification" in r.body["error"]["message"]
    r = await integ.admin("POST", "/v1/apps", {"name": "Early", "events_url": dead_url})
    assert r.status == 400
    # ...a real bolt app answers it (its verification on); then the app dies for good.
    runner = await bolt(created["bot_token"], created["signing_secret"], lambda app: None)
    assert (await integ.admin("PATCH", f"/v1/apps/{app_id}", {"events_url": runner.url})).status == 200
    runner.stop()
    await integ.ok("POST", f"/v1/channels/{ch}/messages", user, {"text": "anyone?"})
    deadline = time.monotonic() + 15
    while True:
        r = await integ.admin("GET", f"/v1/apps/{app_id}/outbox?state=dead")
        if r.body["events"]:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    ev = r.body["events"][0]
    assert ev["attempts"] == 10 and ev["event"]["text"] == "anyone?" and ev["last_error"]
    listed = await integ.admin("GET", "/v1/admin/outbox?state=dead")
    assert any(e["id"] == ev["id"] for e in listed.body["events"])
    member = await integ.user("mem")
    assert (await integ.http("GET", "/v1/admin/outbox", member)).status == 403
