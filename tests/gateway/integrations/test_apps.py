"""Apps and bots: registration (token shown once, stored hashed; signing secret encrypted),
bot tokens on /v1 with their narrower RBAC, disabling and token rotation; incoming webhooks
through slack_sdk's WebhookClient; the Slack Web API subset through slack_sdk's WebClient."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from tests.gateway.integrations.conftest import IntegEnv


async def test_register_app_token_shown_once_and_stored_hashed(integ: IntegEnv) -> None:
    admin = await integ.user("adm", role="admin")
    ch = await integ.channel(admin)
    created = await integ.app("Ticketing", channels=[ch], events=["message"],
                              commands=[{"command": "/ticketing", "description": "Tickets"}])
    app, token, secret = created["app"], created["bot_token"], created["signing_secret"]
    assert token.startswith("xoxb-") and len(secret) == 64
    assert app["bot_user_id"].startswith("bot.") and app["channels"] == [ch]
    assert app["commands"][0]["command"] == "/ticketing"
    # Never shown again; stored as a hash, the secret encrypted (not in clear anywhere).
    got = (await integ.admin("GET", f"/v1/apps/{app['id']}")).body
    assert "bot_token" not in got and "signing_secret" not in got
    conn = await integ.db()
    try:
        row = await conn.fetchrow("SELECT token_hash, signing_secret_enc FROM integ_apps WHERE id = $1", app["id"])
    finally:
        await conn.close()
    assert bytes(row["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert secret.encode() not in bytes(row["signing_secret_enc"])
    # The bot joined its channel.
    listed = await integ.ok("GET", f"/v1/channels/{ch}/messages", admin)
    assert listed["messages"] == []
    # Admin only: a member's JWT is refused, anonymous too; bad input is a clear 400.
    member = await integ.user("mem")
    assert (await integ.http("POST", "/v1/apps", member, {"name": "x"})).status == 403
    assert (await integ.http("POST", "/v1/apps", body={"name": "x"})).status == 401
    for bad in ({"name": ""}, {"name": "ok", "events": ["nope"]}, {"name": "ok", "commands_url": "ftp://x"},
                {"name": "ok", "click_policy": "all"}, {"name": "ok", "unknown": 1},
                {"name": "ok", "commands": [{"command": "/me"}]}):
        r = await integ.admin("POST", "/v1/apps", bad)
        assert r.status == 400, (bad, r.body)
    assert (await integ.admin("POST", "/v1/apps", {"name": "Ticketing"})).status == 409
    # An admin user's JWT works as well as the API key.
    r = await integ.http("GET", "/v1/apps", admin)
    assert r.status == 200 and any(a["id"] == app["id"] for a in r.body["apps"])


async def test_bot_token_on_v1_with_narrower_rbac_disable_and_rotate(integ: IntegEnv) -> None:
    owner = await integ.user("own")
    allowed = await integ.channel(owner)
    other = await integ.channel(owner)
    created = await integ.app("Poster", channels=[allowed])
    app_id, token = created["app"]["id"], created["bot_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    r = await integ.http("POST", f"/v1/channels/{allowed}/messages", body={"text": "hello from a bot"},
                         headers=bearer)
    assert r.status == 201, r.body
    assert r.body["message"]["author_id"] == created["app"]["bot_user_id"]
    # Not its channel; not an operation bots may call; not an admin route.
    r = await integ.http("POST", f"/v1/channels/{other}/messages", body={"text": "x"}, headers=bearer)
    assert r.status in (403, 404), r.body
    assert (await integ.http("POST", f"/v1/channels/{allowed}/read", body={"message_id": 1},
                             headers=bearer)).status == 403
    assert (await integ.http("PUT", "/v1/status", body={"away": True}, headers=bearer)).status == 403
    assert (await integ.http("PUT", "/v1/admin/users/x", body={}, headers=bearer)).status == 401
    assert (await integ.http("GET", "/v1/apps", headers=bearer)).status in (401, 403)
    assert (await integ.http("POST", "/v1/channels", body={"name": "botmade"}, headers=bearer)).status == 403
    # A wrong token is 401.
    bad = {"Authorization": f"Bearer {token}x"}
    assert (await integ.http("GET", "/v1/channels", headers=bad)).status == 401
    # Disabled: the token stops at once; enabled again, it works.
    assert (await integ.admin("PATCH", f"/v1/apps/{app_id}", {"enabled": False})).status == 200
    assert (await integ.http("GET", "/v1/channels", headers=bearer)).status == 401
    assert (await integ.admin("PATCH", f"/v1/apps/{app_id}", {"enabled": True})).status == 200
    assert (await integ.http("GET", "/v1/channels", headers=bearer)).status == 200
    # Rotation: the old token is revoked, the new one works.
    new = (await integ.admin("POST", f"/v1/apps/{app_id}/token")).body["bot_token"]
    assert (await integ.http("GET", "/v1/channels", headers=bearer)).status == 401
    assert (await integ.http("GET", "/v1/channels", headers={"Authorization": f"Bearer {new}"})).status == 200


async def test_incoming_webhook_with_slack_sdk(integ: IntegEnv) -> None:
    owner = await integ.user("own")
    ch = await integ.channel(owner)
    app = (await integ.app("Alerts"))["app"]
    hook = (await integ.admin("POST", f"/v1/apps/{app['id']}/hooks", {"channel_id": ch})).body["hook"]
    client = WebhookClient(hook["url"])
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*New ticket* #123"}},
              {"type": "divider"},
              {"type": "context", "elements": [{"type": "mrkdwn", "text": "from the ticketing system"}]},
              {"type": "actions", "elements": [{"type": "button", "action_id": "open",
                                                "text": {"type": "plain_text", "text": "Open"}, "value": "123"}]},
              {"type": "image", "image_url": "https://example.com/a.png", "alt_text": "chart"}]
    # send_dict: WebhookClient.send() has no username / icon (legacy hook fields).
    resp = await asyncio.to_thread(client.send_dict, {
        "text": "New ticket <@" + owner + "> *#123*", "blocks": blocks,
        "username": "Ticket Bot", "icon_emoji": ":ticket:"})
    assert (resp.status_code, resp.body) == (200, "ok")
    page = await integ.ok("GET", f"/v1/channels/{ch}/messages", owner)
    msg = page["messages"][-1]
    assert msg["text"] == f"New ticket @{owner} **#123**"
    assert msg["app_id"] == app["id"] and msg["author_id"] == app["bot_user_id"]
    assert msg["bot_profile"] == {"username": "Ticket Bot", "icon_emoji": ":ticket:"}
    assert [b["type"] for b in msg["blocks"]] == ["section", "divider", "context", "actions", "image"]
    # Threading with the parent's ts.
    from gateway.integrations.slack import ts_of

    resp = await asyncio.to_thread(client.send_dict, {"text": "update", "thread_ts": ts_of(msg["id"])})
    assert resp.status_code == 200
    replies = await integ.ok("GET", f"/v1/messages/{msg['id']}/replies", owner)
    assert replies["messages"][-1]["text"] == "update"
    # Slack's answers to bad requests.
    assert hook["url"].count("/hooks/") == 1 and "/" not in hook["url"].split("/hooks/")[1]
    bad_token = hook["url"].rsplit(".", 1)[0] + ".wrong-token-0123456789"
    assert (await asyncio.to_thread(WebhookClient(bad_token).send, text="x")).status_code == 403
    assert (await asyncio.to_thread(client.send_dict, {"text": ""})).body == "no_text"
    r = await asyncio.to_thread(client.send, text="x", blocks=[{"type": "video"}])
    assert (r.status_code, r.body) == (400, "invalid_blocks")
    # Disabled app: its hooks stop at once.
    await integ.admin("PATCH", f"/v1/apps/{app['id']}", {"enabled": False})
    assert (await asyncio.to_thread(client.send, text="x")).status_code == 403
    await integ.admin("PATCH", f"/v1/apps/{app['id']}", {"enabled": True})


async def test_incoming_webhook_rate_limit_answers_429_with_retry_after(integ: IntegEnv) -> None:
    owner = await integ.user("own")
    ch = await integ.channel(owner)
    app = (await integ.app("Noisy"))["app"]
    hook = (await integ.admin("POST", f"/v1/apps/{app['id']}/hooks", {"channel_id": ch})).body["hook"]
    client = WebhookClient(hook["url"])
    statuses = []
    for i in range(8):  # burst 5 at 0.5/s in the test config
        r = await asyncio.to_thread(client.send, text=f"m{i}")
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"][0] if isinstance(r.headers["Retry-After"], list)
                       else r.headers["Retry-After"]) >= 1
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]


async def test_slack_web_api_subset_with_slack_sdk(integ: IntegEnv) -> None:
    owner = await integ.user("own")
    guest = await integ.user("gst")
    created = await integ.app("Web Bot")
    web = integ.web(created["bot_token"])
    bot = created["app"]["bot_user_id"]
    auth = await asyncio.to_thread(web.auth_test)
    assert auth["ok"] and auth["user_id"] == bot and auth["app_id"] == created["app"]["id"]
    ch = (await asyncio.to_thread(web.conversations_create, name="bot-room"))["channel"]
    assert ch["name"] == "bot-room" and ch["is_member"]
    await asyncio.to_thread(web.conversations_invite, channel=ch["id"], users=f"{owner},{guest}")
    info = await asyncio.to_thread(web.conversations_info, channel=ch["id"])
    assert info["channel"]["id"] == ch["id"]
    posted = await asyncio.to_thread(web.chat_postMessage, channel=ch["id"], text="Build *green*",
                                     blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "Build *green*"}}])
    ts = posted["ts"]
    assert posted["message"]["text"] == "Build **green**" or posted["message"]["text"].startswith("Build")
    await asyncio.to_thread(web.chat_update, channel=ch["id"], ts=ts, text="Build red")
    await asyncio.to_thread(web.reactions_add, channel=ch["id"], timestamp=ts, name="eyes")
    await asyncio.to_thread(web.pins_add, channel=ch["id"], timestamp=ts)
    reply = await asyncio.to_thread(web.chat_postMessage, channel=ch["id"], text="in thread", thread_ts=ts)
    hist = await asyncio.to_thread(web.conversations_history, channel=ch["id"])
    top = hist["messages"][0]
    assert top["ts"] == ts and top["text"] == "Build red" and top["reactions"][0]["name"] == "eyes"
    assert top["reply_count"] == 1 and reply["message"]["thread_ts"] == ts
    # Same service underneath: the chat sees the edit, the pin and the audit records.
    pins = await integ.ok("GET", f"/v1/channels/{ch['id']}/pins", owner)
    assert [m["text"] for m in pins["messages"]] == ["Build red"]
    listed = await asyncio.to_thread(web.conversations_list)
    assert ch["id"] in [c["id"] for c in listed["channels"]]
    user = await asyncio.to_thread(web.users_info, user=owner)
    assert user["user"]["id"] == owner
    await asyncio.to_thread(web.chat_postEphemeral, channel=ch["id"], user=owner, text="psst")
    await asyncio.to_thread(web.chat_delete, channel=ch["id"], ts=reply["ts"])
    # Slack's error strings.
    with pytest.raises(SlackApiError) as err:
        await asyncio.to_thread(web.chat_postMessage, channel="cnope", text="x")
    assert err.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as err:
        await asyncio.to_thread(web.reactions_add, channel=ch["id"], timestamp=ts, name="eyes")
    assert err.value.response["error"] == "already_reacted"
    with pytest.raises(SlackApiError) as err:
        await asyncio.to_thread(web.chat_postMessage, channel=ch["id"])
    assert err.value.response["error"] == "no_text"
    with pytest.raises(SlackApiError) as err:
        await asyncio.to_thread(integ.web("xoxb-nope").auth_test)
    assert err.value.response["error"] == "invalid_auth"
    # Someone else's message: the bot cannot edit it.
    mine = await integ.ok("POST", f"/v1/channels/{ch['id']}/messages", owner, {"text": "human"})
    from gateway.integrations.slack import ts_of

    with pytest.raises(SlackApiError) as err:
        await asyncio.to_thread(web.chat_update, channel=ch["id"], ts=ts_of(mine["message"]["id"]), text="x")
    assert err.value.response["error"] == "cant_update_message"
    await asyncio.to_thread(web.conversations_archive, channel=ch["id"])
    with pytest.raises(SlackApiError) as err:
        await asyncio.to_thread(web.chat_postMessage, channel=ch["id"], text="late")
    assert err.value.response["error"] in ("is_archived", "not_in_channel")
    # Audited like the chat's own writes.
    conn = await integ.db()
    try:
        actions = {r["action"] for r in await conn.fetch("SELECT action FROM audit_log WHERE actor = $1", bot)}
    finally:
        await conn.close()
    assert {"channel.create", "message.send", "message.edit", "reaction.add", "pin.add",
            "message.delete", "channel.archive"} <= actions
    # Form-encoded calls with the token in the body work too (Slack's oldest form).
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            f"{integ.slack_api}auth.test", data={"token": created["bot_token"]}) as resp:
        assert (await resp.json())["ok"] is True
    async with aiohttp.ClientSession() as http, http.post(f"{integ.slack_api}nope.method") as resp:
        assert (await resp.json())["error"] == "unknown_method"


async def test_cli_manages_apps_through_the_api(integ: IntegEnv, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gateway.integrations.cli import run
    from tests.conftest import API_KEY

    owner = await integ.user("own")
    ch = await integ.channel(owner)
    base = ["--url", integ.srv.http_url, "--api-key", API_KEY]
    code = await asyncio.to_thread(run, [*base, "create", "--name", "Cli App", "--channel", ch,
                                         "--command", "/cliapp", "--click-policy", "admins"])
    out = capsys.readouterr().out
    assert code == 0, out
    created = json.loads(out)
    app_id = created["app"]["id"]
    assert created["bot_token"].startswith("xoxb-") and created["app"]["click_policy"] == "admins"
    assert await asyncio.to_thread(run, [*base, "disable", app_id]) == 0
    assert json.loads(capsys.readouterr().out)["app"]["enabled"] is False
    bearer = {"Authorization": f"Bearer {created['bot_token']}"}
    assert (await integ.http("GET", "/v1/channels", headers=bearer)).status == 401
    assert await asyncio.to_thread(run, [*base, "hook", app_id, "--channel", ch]) == 0
    assert "/hooks/H" in capsys.readouterr().out
    assert await asyncio.to_thread(run, [*base, "list"]) == 0
    assert app_id in capsys.readouterr().out
    assert await asyncio.to_thread(run, ["--url", integ.srv.http_url, "--api-key", "wrong", "list"]) == 1


async def test_nul_in_webhook_and_web_api_is_a_400(integ: IntegEnv) -> None:
    """PostgreSQL text cannot hold NUL: a webhook or Web API call carrying one is refused
    in Slack's terms (400), never a 500, and nothing is posted."""
    import aiohttp

    owner = await integ.user("own")
    ch = await integ.channel(owner)
    created = await integ.app("Nul", channels=[ch])
    hook = (await integ.admin("POST", f"/v1/apps/{created['app']['id']}/hooks", {"channel_id": ch})).body["hook"]
    async with aiohttp.ClientSession() as http:
        async with http.post(hook["url"], json={"text": "a\u0000b"}) as resp:
            assert resp.status == 400 and await resp.text() == "invalid_payload"
        async with http.post(hook["url"], data={"payload": '{"text": "a\\u0000b"}'}) as resp:
            assert resp.status == 400
        async with http.post(f"{integ.slack_api}chat.postMessage", json={"channel": ch, "text": "a\u0000b"},
                             headers={"Authorization": f"Bearer {created['bot_token']}"}) as resp:
            body = await resp.json()
            assert resp.status == 400 and body == {"ok": False, "error": "invalid_arguments",
                                                   "detail": "NUL character not allowed"}
    page = await integ.ok("GET", f"/v1/channels/{ch}/messages", owner)
    assert not any("\u0000" in (m.get("text") or "") for m in page["messages"])
