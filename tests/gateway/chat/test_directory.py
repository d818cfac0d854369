"""The web client's API (issue 13): /v1/me, one channel, a channel's members (paged), the
user directory (prefix, paged) — over HTTP and RPC, in the OpenAPI document, with RBAC
negative tests; and CORS for /v1 (nothing allowed unless configured)."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from gateway.chat.binding import OPS
from tests.conftest import create_database, drop_database, start_server, stop_server
from tests.gateway.chat.conftest import ChatEnv, chat_settings, rpc


async def test_me_and_one_channel_over_http_and_rpc(chat: ChatEnv) -> None:
    alice = await chat.user("alice", display_name="Alice A")
    me = await chat.ok("GET", "/v1/me", alice)
    assert me["user"]["id"] == alice and me["user"]["display_name"] == "Alice A"
    ch = (await chat.ok("POST", "/v1/channels", alice, {"name": f"one-{secrets.token_hex(3)}", "topic": "t"}))["channel"]
    got = await chat.ok("GET", f"/v1/channels/{ch['id']}", alice)
    assert got["channel"]["id"] == ch["id"] and got["channel"]["member_role"] == "admin"
    client, _ = await chat.connect(alice)
    assert (await rpc(client, "users.me"))["user"]["id"] == alice
    assert (await rpc(client, "channels.get", channel_id=ch["id"]))["channel"]["topic"] == "t"
    assert (await chat.http("GET", "/v1/me")).status == 401


async def test_private_channel_and_members_are_hidden_from_outsiders(chat: ChatEnv) -> None:
    alice, bob, eve = await chat.user("alice"), await chat.user("bob"), await chat.user("eve")
    ch = (await chat.ok("POST", "/v1/channels", alice,
                        {"name": f"priv-{secrets.token_hex(3)}", "private": True, "members": [bob]}))["channel"]
    for path in (f"/v1/channels/{ch['id']}", f"/v1/channels/{ch['id']}/members"):
        r = await chat.http("GET", path, eve)
        assert r.status == 404 and r.body["error"]["code"] == "not_found", path
        assert (await chat.http("GET", path)).status == 401
    client, _ = await chat.connect(eve)
    with pytest.raises(Exception) as err:
        await rpc(client, "channels.members", channel_id=ch["id"])
    assert getattr(err.value, "code", None) == 404
    members = await chat.ok("GET", f"/v1/channels/{ch['id']}/members", bob)
    assert sorted(m["user_id"] for m in members["members"]) == sorted([alice, bob])


async def test_member_list_pages(chat: ChatEnv) -> None:
    owner = await chat.user("own")
    people = [await chat.user("mem") for _ in range(5)]
    ch = (await chat.ok("POST", "/v1/channels", owner, {"name": f"big-{secrets.token_hex(3)}",
                                                         "members": people}))["channel"]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await chat.ok("GET", f"/v1/channels/{ch['id']}/members", owner,
                             params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert len(page["members"]) <= 2
        seen += [m["user_id"] for m in page["members"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted([owner, *people])
    bad = await chat.http("GET", f"/v1/channels/{ch['id']}/members", owner, params={"cursor": "%%%"})
    assert bad.status == 400
    bad = await chat.http("GET", f"/v1/channels/{ch['id']}/members", owner, params={"limit": 0})
    assert bad.status == 400


async def test_directory_prefix_paging_and_guests(chat: ChatEnv) -> None:
    tag = secrets.token_hex(3)
    names = [f"Zed{tag} {i}" for i in range(5)]
    ids = [await chat.user("dir", display_name=n) for n in names]
    me = await chat.user("seeker")
    found: list[str] = []
    cursor = None
    while True:
        page = await chat.ok("GET", "/v1/users", me, params={"prefix": f"zed{tag}", "limit": 2,
                                                            **({"cursor": cursor} if cursor else {})})
        found += [u["id"] for u in page["users"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert found == ids  # by name, then id
    # LIKE wildcards in the prefix are literal.
    assert (await chat.ok("GET", "/v1/users", me, params={"prefix": "%"}))["users"] == []
    too_long = await chat.http("GET", "/v1/users", me, params={"prefix": "x" * 65})
    assert too_long.status == 400
    # A guest finds only the people it shares a channel with.
    guest = await chat.user("guest", role="guest", display_name=f"Zed{tag} guest")
    page = await chat.ok("GET", "/v1/users", guest, params={"prefix": f"zed{tag}"})
    assert [u["id"] for u in page["users"]] == [guest]
    ch = (await chat.ok("POST", "/v1/channels", ids[0], {"name": f"g-{tag}", "private": True,
                                                         "members": [guest]}))["channel"]
    assert ch["kind"] == "private"
    page = await chat.ok("GET", "/v1/users", guest, params={"prefix": f"zed{tag}"})
    assert sorted(u["id"] for u in page["users"]) == sorted([ids[0], guest])
    assert (await chat.http("GET", "/v1/users")).status == 401


async def test_new_operations_are_in_the_openapi_document(chat: ChatEnv) -> None:
    doc = (await chat.http("GET", "/v1/openapi.json")).body
    for path, method in (("/v1/me", "get"), ("/v1/channels/{channel_id}", "get"),
                         ("/v1/channels/{channel_id}/members", "get"), ("/v1/users", "get")):
        assert doc["paths"][path][method]["security"] == [{"bearer": []}]
    names = {op.name for op in OPS}
    assert {"users.me", "channels.get", "channels.members", "users.search"} <= names


async def test_cors_nothing_allowed_by_default(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{chat.srv.http_url}/v1/channels", headers={
                "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.get(f"{chat.srv.http_url}/v1/me", headers={
                "Origin": "https://app.example.com", "Authorization": f"Bearer {chat.token(alice)}"}) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_for_configured_origins(pg_dsn: str) -> None:
    dsn = await create_database(pg_dsn, "cors")
    srv = await start_server(chat_settings(dsn, http__cors_origins=["https://*.example.com"]))
    try:
        url = f"http://127.0.0.1:{srv.port}"
        async with aiohttp.ClientSession() as http:
            async with http.options(f"{url}/v1/channels", headers={
                    "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
                assert "POST" in resp.headers["Access-Control-Allow-Methods"]
                assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            async with http.options(f"{url}/v1/channels", headers={"Origin": "https://example.org"}) as resp:
                assert resp.status == 403
            async with http.get(f"{url}/v1/me", headers={
                    "Origin": "https://app.example.com", "Authorization": f"Bearer {srv.token('corsuser')}"}) as resp:
                assert resp.status == 200
                assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
                assert resp.headers["Vary"] == "Origin"
    finally:
        await stop_server(srv)
        await drop_database(dsn)
