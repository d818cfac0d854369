"""Every chat operation through the JSON HTTP API under /v1/ (bearer JWTs, the API key for
the admin route and for apps acting on a user's status), with the statuses REST clients
expect, and the OpenAPI document validated as OpenAPI 3.1."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import aiohttp
from openapi_spec_validator import validate

from gateway.chat.binding import OPS
from tests.conftest import API_KEY
from tests.gateway.chat.conftest import ChatEnv, Reply, rpc


async def raw_post(chat: ChatEnv, path: str, user: str, data: bytes) -> tuple[int, Any]:
    """POST bytes as they are (chat.http always sends valid JSON)."""
    headers = {"Authorization": f"Bearer {chat.token(user)}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(
            f"{chat.srv.http_url}{path}", data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def error(r: Reply, status: int, code: str) -> dict[str, Any]:
    """Assert a JSON error with this status and stable code; returns the error object."""
    assert r.status == status, (r.status, r.body)
    assert isinstance(r.body, dict) and set(r.body) == {"error"}, r.body
    assert r.body["error"]["code"] == code, r.body
    assert isinstance(r.body["error"]["message"], str) and r.body["error"]["message"]
    return r.body["error"]


# ---- the OpenAPI document -----------------------------------------------------------


async def test_openapi_is_valid_3_1_and_lists_every_operation(chat: ChatEnv) -> None:
    r = await chat.http("GET", "/v1/openapi.json")
    assert r.status == 200
    doc = r.body
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any structural or schema error
    listed = {(method.upper(), path): entry["operationId"]
              for path, item in doc["paths"].items() for method, entry in item.items()}
    assert listed == {(op.http_method, op.path): op.name for op in OPS}
    for path, item in doc["paths"].items():
        for entry in item.values():
            assert entry["responses"]["default"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}, path
    admin = doc["paths"]["/v1/admin/users/{user_id}"]["put"]
    assert admin["security"] == [{"apiKey": []}]
    assert doc["paths"]["/v1/channels"]["post"]["responses"].keys() >= {"201"}
    error(await chat.http("POST", "/v1/openapi.json", body={}), 405, "method_not_allowed")


# ---- authentication and routing -----------------------------------------------------


async def test_missing_invalid_and_expired_tokens_are_401(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    error(await chat.http("GET", "/v1/channels"), 401, "unauthorized")
    for auth in ("Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz",
                 f"Bearer {chat.token(alice)}x",      # signature broken
                 f"Token {chat.token(alice)}"):        # wrong scheme
        error(await chat.http("GET", "/v1/channels", headers={"Authorization": auth}), 401, "unauthorized")
    expired = chat.srv.token(alice, ttl=-60)
    err = error(await chat.http("GET", "/v1/channels", headers={"Authorization": f"Bearer {expired}"}),
                401, "unauthorized")
    assert "expired" in err["message"]
    # A subscription token (one channel) does not open the user's whole API.
    sub_token = chat.srv.token(alice, channel="chat:anything")
    err = error(await chat.http("GET", "/v1/channels", headers={"Authorization": f"Bearer {sub_token}"}),
                401, "unauthorized")
    assert "subscription token" in err["message"]
    # Authentication comes before input validation: an anonymous caller learns nothing
    # about what a valid body looks like.
    error(await chat.http("POST", "/v1/channels", body={"name": "Bad Name!"}), 401, "unauthorized")
    error(await chat.http("POST", "/v1/channels", body=[1, 2]), 401, "unauthorized")
    # The API key is no user: it only opens the admin route and the status of others.
    error(await chat.http("GET", "/v1/channels", headers={"X-API-Key": API_KEY}), 401, "unauthorized")


async def test_unknown_routes_404_and_wrong_methods_405(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    error(await chat.http("GET", "/v1/nothing-here", alice), 404, "not_found")
    r = await chat.http("DELETE", "/v1/channels", alice)
    err = error(r, 405, "method_not_allowed")
    assert "GET" in err["message"] and "POST" in err["message"]
    assert r.headers["Allow"] == "GET, POST"  # RFC 9110: a 405 lists what the path takes
    r = await chat.http("GET", "/v1/channels/c1/join", alice)
    error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST"
    error(await chat.http("POST", "/v1/status", alice, {}), 405, "method_not_allowed")
    r = await chat.http("POST", "/v1/openapi.json")
    error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET, HEAD"
    # Other answers carry no Allow header.
    assert "Allow" not in (await chat.http("GET", "/v1/nothing-here", alice)).headers


async def test_bad_input_is_400_bad_request(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    ch = (await chat.ok("POST", "/v1/channels", alice, {"name": f"bad-{alice}"}))["channel"]
    for method, path, body, params in [
        ("POST", "/v1/channels", {"name": "Bad Name!"}, None),
        ("POST", "/v1/channels", {"name": "ok", "surprise": 1}, None),
        ("POST", "/v1/channels", [1, 2], None),
        ("POST", f"/v1/channels/{ch['id']}/messages", {"text": ""}, None),
        ("POST", f"/v1/channels/{ch['id']}/messages", {"text": "x" * 40_001}, None),
        ("POST", f"/v1/channels/{ch['id']}/messages", {"channel_id": "other", "text": "hi"}, None),
        ("GET", f"/v1/channels/{ch['id']}/messages", None, {"limit": "1000"}),
        ("GET", f"/v1/channels/{ch['id']}/messages", None, {"before": "abc"}),
        ("GET", f"/v1/channels/{ch['id']}/messages", None, {"before": "5", "after": "1"}),
        ("PATCH", "/v1/messages/not-a-number", {"text": "x"}, None),
        ("PUT", "/v1/status", {"text": "x" * 101}, None),
    ]:
        r = await chat.http(method, path, alice, body, params=params)
        error(r, 400, "bad_request")
    # A body that is not JSON at all.
    status, body = await raw_post(chat, "/v1/channels", alice, b"{not json")
    error(Reply(status, body), 400, "bad_request")


# ---- every operation ----------------------------------------------------------------


async def test_channel_operations(chat: ChatEnv) -> None:
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    created = await chat.http("POST", "/v1/channels", alice, {"name": f"h-{alice}", "topic": "t"})
    assert created.status == 201
    ch = created.body["channel"]
    assert ch["kind"] == "public" and ch["member_role"] == "admin" and ch["topic"] == "t"
    cid = ch["id"]
    # Names are unique: a conflict, not a server error.
    error(await chat.http("POST", "/v1/channels", bob, {"name": f"h-{alice}"}), 409, "name_taken")

    listed = (await chat.ok("GET", "/v1/channels", bob))["channels"]
    assert any(c["id"] == cid and c["member"] is False for c in listed)
    joined = (await chat.ok("POST", f"/v1/channels/{cid}/join", bob))["channel"]
    assert joined["member"] and joined["member_role"] == "member"
    only = (await chat.ok("GET", "/v1/channels", bob, params={"joined_only": "true"}))["channels"]
    assert cid in {c["id"] for c in only} and all(c["member"] for c in only)

    topic = (await chat.ok("PUT", f"/v1/channels/{cid}/topic", bob, {"topic": "new"}))["channel"]
    assert topic["topic"] == "new"
    assert (await chat.ok("PUT", f"/v1/channels/{cid}/mute", bob, {"muted": True})) == {"ok": True}
    listed = {c["id"]: c for c in (await chat.ok("GET", "/v1/channels", bob))["channels"]}
    assert listed[cid]["muted"] is True

    invited = (await chat.ok("POST", f"/v1/channels/{cid}/invite", alice, {"user_ids": [carol]}))["channel"]
    assert invited["id"] == cid
    error(await chat.http("POST", f"/v1/channels/{cid}/invite", alice, {"user_ids": ["nobody-xyz"]}),
          404, "user_not_found")
    assert (await chat.ok("POST", f"/v1/channels/{cid}/kick", alice, {"user_id": carol})) == {"ok": True}
    error(await chat.http("POST", f"/v1/channels/{cid}/kick", alice, {"user_id": carol}), 409, "not_member")
    assert (await chat.ok("POST", f"/v1/channels/{cid}/leave", bob)) == {"ok": True}
    error(await chat.http("POST", f"/v1/channels/{cid}/leave", bob), 409, "not_member")

    archived = (await chat.ok("POST", f"/v1/channels/{cid}/archive", alice))["channel"]
    assert archived["archived"] is True
    error(await chat.http("POST", f"/v1/channels/{cid}/join", bob), 409, "archived")
    # Members writing into an archived channel: 409 archived (403 is for non-members).
    error(await chat.http("POST", f"/v1/channels/{cid}/messages", alice, {"text": "late"}), 409, "archived")
    assert cid not in {c["id"] for c in (await chat.ok("GET", "/v1/channels", alice))["channels"]}
    everything = await chat.ok("GET", "/v1/channels", alice, params={"include_archived": "true"})
    assert cid in {c["id"] for c in everything["channels"]}
    error(await chat.http("POST", "/v1/channels/cnosuchchannel/join", bob), 404, "not_found")

    dm = await chat.http("POST", "/v1/dms", alice, {"user_ids": [bob]})
    assert dm.status == 200 and dm.body["channel"]["kind"] == "dm"
    assert sorted(dm.body["channel"]["members"]) == sorted([alice, bob])
    again = (await chat.ok("POST", "/v1/dms", bob, {"user_ids": [alice]}))["channel"]
    assert again["id"] == dm.body["channel"]["id"]
    error(await chat.http("POST", "/v1/dms", alice, {"user_ids": [alice]}), 400, "bad_request")


async def test_message_operations(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    admin = await chat.user("adm", role="admin")
    ch = (await chat.ok("POST", "/v1/channels", alice, {"name": f"hm-{alice}", "members": [bob]}))["channel"]
    cid = ch["id"]
    # A live subscriber sees what HTTP callers do: the HTTP API publishes the same events.
    cb, _ = await chat.connect(bob)
    _, sev = await chat.sdk.subscribe(cb, ch["subscription"])

    sent = await chat.http("POST", f"/v1/channels/{cid}/messages", alice,
                           {"text": "hello ```py\nx\n```", "client_msg_id": "h1"})
    assert sent.status == 201 and sent.body["created"] is True
    msg = sent.body["message"]
    ev = (await sev.next_where("publication", lambda c: c.pub.data["type"] == "message.created")).pub.data
    assert ev["message"]["id"] == msg["id"]
    retry = await chat.http("POST", f"/v1/channels/{cid}/messages", alice, {"text": "hello", "client_msg_id": "h1"})
    assert retry.status == 200, "a retry creates nothing: 200, not 201"
    assert retry.body["created"] is False and retry.body["message"]["id"] == msg["id"]
    error(await chat.http("POST", f"/v1/channels/{cid}/messages", alice,
                          {"text": "x", "client_msg_id": "h1", "thread_parent": msg["id"]}),
          409, "client_msg_id_reused")

    second = (await chat.ok("POST", f"/v1/channels/{cid}/messages", bob, {"text": "second"}))["message"]
    page = await chat.ok("GET", f"/v1/channels/{cid}/messages", bob, params={"limit": "1"})
    assert [m["id"] for m in page["messages"]] == [second["id"]] and page["has_more"] is True
    assert page["position"]["epoch"]
    older = await chat.ok("GET", f"/v1/channels/{cid}/messages", bob, params={"before": str(second["id"])})
    assert [m["id"] for m in older["messages"]] == [msg["id"]] and older["has_more"] is False
    newer = await chat.ok("GET", f"/v1/channels/{cid}/messages", bob, params={"after": str(msg["id"])})
    assert [m["id"] for m in newer["messages"]] == [second["id"]] and newer["has_more"] is False

    edited = await chat.http("PATCH", f"/v1/messages/{msg['id']}", alice, {"text": "hello again"})
    assert edited.status == 200 and edited.body["message"]["version"] == 2
    error(await chat.http("PATCH", f"/v1/messages/{msg['id']}", bob, {"text": "not mine"}), 403, "forbidden")

    reply = await chat.http("POST", f"/v1/channels/{cid}/messages", bob,
                            {"text": "in thread", "thread_parent": msg["id"]})
    assert reply.status == 201 and reply.body["message"]["thread_parent"] == msg["id"]
    thread = await chat.ok("GET", f"/v1/messages/{msg['id']}/replies", alice)
    assert [m["text"] for m in thread["messages"]] == ["hello again", "in thread"]
    assert await chat.ok("PUT", f"/v1/messages/{msg['id']}/follow", bob, {"follow": False}) == {"ok": True}
    assert await chat.ok("PUT", f"/v1/messages/{msg['id']}/follow", bob) == {"ok": True}
    error(await chat.http("PUT", f"/v1/messages/{reply.body['message']['id']}/follow", bob), 400, "bad_request")

    emoji = quote(":+1:", safe="")
    assert await chat.ok("PUT", f"/v1/messages/{msg['id']}/reactions/{emoji}", bob) == {"ok": True}
    page = await chat.ok("GET", f"/v1/channels/{cid}/messages", alice)
    assert page["messages"][0]["reactions"] == {":+1:": [bob]}
    assert await chat.ok("DELETE", f"/v1/messages/{msg['id']}/reactions/{emoji}", bob) == {"ok": True}
    assert await chat.ok("PUT", f"/v1/messages/{msg['id']}/pin", bob) == {"ok": True}
    pins = await chat.ok("GET", f"/v1/channels/{cid}/pins", alice)
    assert [m["id"] for m in pins["messages"]] == [msg["id"]]
    assert await chat.ok("DELETE", f"/v1/messages/{msg['id']}/pin", alice) == {"ok": True}
    assert (await chat.ok("GET", f"/v1/channels/{cid}/pins", alice))["messages"] == []

    unread = {c["channel_id"]: c for c in (await chat.ok("GET", "/v1/unread", alice))["channels"]}
    assert unread[cid]["unread"] == 1  # bob's "second"; the thread-only reply does not count
    assert await chat.ok("POST", f"/v1/channels/{cid}/read", alice, {"message_id": second["id"]}) == {"ok": True}
    unread = {c["channel_id"]: c for c in (await chat.ok("GET", "/v1/unread", alice))["channels"]}
    assert unread[cid]["unread"] == 0 and unread[cid]["last_read_id"] == second["id"]

    error(await chat.http("GET", f"/v1/messages/{msg['id']}/versions", alice), 403, "forbidden")
    versions = await chat.ok("GET", f"/v1/messages/{msg['id']}/versions", admin)
    assert [v["text"] for v in versions["versions"]] == ["hello ```py\nx\n```"]

    deleted = await chat.http("DELETE", f"/v1/messages/{msg['id']}", alice)
    assert deleted.status == 200 and deleted.body == {"ok": True}
    error(await chat.http("PATCH", f"/v1/messages/{msg['id']}", alice, {"text": "revive"}), 404, "not_found")
    error(await chat.http("DELETE", "/v1/messages/999999999999", alice), 404, "not_found")


async def test_users_get_and_app_sets_status(chat: ChatEnv) -> None:
    """The calendar (an app with the API key) sets 'In a meeting' until 15:00 on someone:
    users.get shows it and everyone watching ``status:<user>`` gets it live."""
    alice = await chat.user("alice", display_name="Alice", title="Engineer")
    bob = await chat.user("bob")
    cb, _ = await chat.connect(bob)
    sub, sev = await chat.sdk.subscribe(cb, f"status:{alice}")
    until = int(time.time()) + 3 * 3600
    r = await chat.http("PUT", "/v1/status", body={"user_id": alice, "text": "In a meeting",
                                                    "emoji": ":calendar:", "until": until},
                        headers={"X-API-Key": API_KEY})
    assert r.status == 200, r.body
    assert r.body["user"]["id"] == alice and r.body["user"]["status"]["text"] == "In a meeting"
    ev = (await sev.next("publication")).pub.data
    assert ev["type"] == "status.changed" and ev["user_id"] == alice
    assert ev["status"]["text"] == "In a meeting" and ev["status"]["until"] == until
    seen = (await chat.ok("GET", f"/v1/users/{alice}", bob))["user"]
    assert seen["display_name"] == "Alice" and seen["title"] == "Engineer"
    assert seen["status"]["text"] == "In a meeting" and seen["status"]["emoji"] == ":calendar:"
    assert seen["status"]["until"] == until

    # A user sets its own status with its bearer token; not someone else's.
    own = await chat.ok("PUT", "/v1/status", alice, {"away": True})
    assert own["user"]["status"]["away"] is True and own["user"]["status"]["text"] == "In a meeting"
    error(await chat.http("PUT", "/v1/status", bob, {"user_id": alice, "text": "hacked"}), 403, "forbidden")
    error(await chat.http("PUT", "/v1/status", body={"user_id": alice, "text": "x"},
                          headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    error(await chat.http("PUT", "/v1/status", body={"user_id": "nobody-xyz", "text": "x"},
                          headers={"X-API-Key": API_KEY}), 404, "user_not_found")
    error(await chat.http("GET", "/v1/users/nobody-xyz", bob), 404, "user_not_found")
    # An expired custom status disappears from what others see.
    await chat.http("PUT", "/v1/status", body={"user_id": alice, "until": int(time.time()) - 1},
                    headers={"X-API-Key": API_KEY})
    seen = (await chat.ok("GET", f"/v1/users/{alice}", bob))["user"]
    assert seen["status"]["text"] == "" and seen["status"]["until"] is None
    await sub.unsubscribe()


async def test_admin_route_needs_the_api_key(chat: ChatEnv) -> None:
    owner_id = "owner" + str(int(time.time() * 1000))
    path = f"/v1/admin/users/{owner_id}"
    body = {"display_name": "O", "email": "o@example.com", "title": "CTO", "role": "admin"}
    error(await chat.http("PUT", path, body=body), 401, "unauthorized")
    # A user's bearer token never opens the admin route, whatever that user's role.
    admin = await chat.user("adm", role="admin")
    error(await chat.http("PUT", path, admin, body), 401, "unauthorized")
    error(await chat.http("PUT", path, body=body, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    error(await chat.http("GET", path, headers={"X-API-Key": API_KEY}), 405, "method_not_allowed")
    error(await chat.http("PUT", path, body={"role": "emperor"}, headers={"X-API-Key": API_KEY}),
          400, "bad_request")
    r = await chat.http("PUT", path, body=body, headers={"X-API-Key": API_KEY})
    assert r.status == 200 and r.body["user"]["role"] == "admin" and r.body["user"]["title"] == "CTO"
    # Authorization: apikey <key> is the API key too (Centrifugo's other spelling).
    r = await chat.http("PUT", path, body={"manager": admin}, headers={"Authorization": f"apikey {API_KEY}"})
    assert r.status == 200 and r.body["user"]["manager"] == admin and r.body["user"]["title"] == "CTO"
    # The upserted role is in force at once (a workspace admin reads versions).
    alice = await chat.user("alice")
    ch = (await chat.ok("POST", "/v1/channels", alice, {"name": f"adm-{alice}"}))["channel"]
    msg = (await chat.ok("POST", f"/v1/channels/{ch['id']}/messages", alice, {"text": "v1"}))["message"]
    assert (await chat.ok("GET", f"/v1/messages/{msg['id']}/versions", owner_id))["versions"] == []
    # The e-mail is the user's and admins' only.
    ca, _ = await chat.connect(alice)
    assert (await rpc(ca, "users.get", user_id=owner_id))["user"]["email"] is None
    assert (await chat.ok("GET", f"/v1/users/{owner_id}", owner_id))["user"]["email"] == "o@example.com"
