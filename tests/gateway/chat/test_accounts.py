"""Local accounts over real HTTP against a real gateway and PostgreSQL: invitation,
password (argon2id), sign-in by id or e-mail, refresh-token rotation and reuse detection,
sign-out, disabling, rate limits, and the admin routes' API-key check."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import jwt

from gateway.chat import accounts
from tests.conftest import API_KEY, SECRET
from tests.gateway.chat.conftest import ChatEnv

PASSWORD = "correct horse battery staple"


async def post(chat: ChatEnv, path: str, body: Any = None, *, cookie: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    hdrs = dict(headers or {})
    if cookie is not None:
        hdrs["Cookie"] = f"{accounts.COOKIE}={cookie}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http, http.post(
            f"{chat.srv.http_url}{path}", json=body, headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


def refresh_cookie(headers: Any) -> str:
    value = headers["Set-Cookie"]
    assert "HttpOnly" in value and "SameSite=Strict" in value and "Path=/v1/auth" in value, value
    return value.split(";", 1)[0].split("=", 1)[1]


async def invite(chat: ChatEnv, name: str = "Ada", email: str | None = None, admin: bool = False) -> tuple[str, str]:
    uid = f"acct{secrets.token_hex(4)}"
    body: dict[str, Any] = {"display_name": name, "admin": admin}
    if email:
        body["email"] = email
    status, result, _ = await post(chat, f"/v1/admin/accounts/{uid}/invite", body, headers={"X-API-Key": API_KEY})
    assert status == 200, result
    assert result["user_id"] == uid and result["expires_in"] > 0
    return uid, result["token"]


async def signed_up(chat: ChatEnv, **kw: Any) -> tuple[str, str]:
    """A user whose invitation was accepted; returns (id, refresh cookie)."""
    uid, token = await invite(chat, **kw)
    status, session, headers = await post(chat, "/v1/auth/invite", {"token": token, "password": PASSWORD})
    assert status == 200, session
    return uid, refresh_cookie(headers)


async def test_invitation_sets_a_password_once_and_signs_in(chat: ChatEnv) -> None:
    uid, token = await invite(chat, "Ada Lovelace", email="Ada@Example.org")
    # Too short a password is refused with a clear 400, the invitation stays usable.
    status, body, _ = await post(chat, "/v1/auth/invite", {"token": token, "password": "short"})
    assert status == 400 and "password" in body["error"]["message"]
    status, session, headers = await post(chat, "/v1/auth/invite", {"token": token, "password": PASSWORD})
    assert status == 200, session
    claims = jwt.decode(session["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == uid and claims["exp"] - claims["iat"] == accounts.ACCESS_TTL
    assert claims["info"]["name"] == "Ada Lovelace"
    refresh_cookie(headers)
    # One time only.
    status, body, _ = await post(chat, "/v1/auth/invite", {"token": token, "password": PASSWORD})
    assert status == 401
    # The token is a working gateway credential: GET /v1/me.
    me = await chat.http("GET", "/v1/me", headers={"Authorization": f"Bearer {session['token']}"})
    assert me.status == 200 and me.body["user"]["id"] == uid
    assert me.body["user"]["email"] == "Ada@Example.org"
    # Sign-in by id and by e-mail (any case); the password is stored as argon2id.
    for login in (uid, "ada@example.org"):
        status, session, _ = await post(chat, "/v1/auth/login", {"login": login, "password": PASSWORD})
        assert status == 200 and session["user_id"] == uid, session
    db = await chat.db()
    try:
        stored = await db.fetchval("SELECT password_hash FROM chat_accounts WHERE user_id = $1", uid)
        index = await db.fetchval("SELECT email_index FROM chat_accounts WHERE user_id = $1", uid)
    finally:
        await db.close()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert "example" not in index


async def test_wrong_credentials_are_one_generic_401(chat: ChatEnv) -> None:
    uid, _ = await signed_up(chat)
    answers = []
    for login, password in ((uid, "wrong password!"), ("nobody-" + secrets.token_hex(3), PASSWORD),
                            ("nobody@example.org", PASSWORD)):
        status, body, _ = await post(chat, "/v1/auth/login", {"login": login, "password": password},
                                     headers={"X-Forwarded-For": secrets.token_hex(2)})
        answers.append((status, body))
    assert len({(s, str(b)) for s, b in answers}) == 1, answers
    assert answers[0][0] == 401 and answers[0][1]["error"]["code"] == "unauthorized"
    # Malformed input: 400 naming the problem.
    status, body, _ = await post(chat, "/v1/auth/login", {"login": uid})
    assert status == 400 and "password" in body["error"]["message"]
    status, body, _ = await post(chat, "/v1/auth/login", {"login": uid, "password": "x", "extra": 1})
    assert status == 400


async def test_login_is_rate_limited_per_account(chat: ChatEnv) -> None:
    uid, _ = await signed_up(chat)
    codes = []
    for _ in range(accounts.ACCOUNT_LIMIT + 1):
        status, _, headers = await post(chat, "/v1/auth/login", {"login": uid, "password": "wrong password!"})
        codes.append(status)
    assert codes[: accounts.ACCOUNT_LIMIT] == [401] * accounts.ACCOUNT_LIMIT
    assert codes[-1] == 429 and int(headers["Retry-After"]) > 0
    # Even the right password waits now (the attacker's guesses must not continue).
    status, _, _ = await post(chat, "/v1/auth/login", {"login": uid, "password": PASSWORD})
    assert status == 429


def test_address_limiter_window() -> None:
    limiter = accounts.RateLimiter(3, 10.0)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("1.2.3.4", t) == 0
        limiter.hit("1.2.3.4", t)
    assert limiter.retry_after("1.2.3.4", 3.0) == 7.0
    assert limiter.retry_after("5.6.7.8", 3.0) == 0
    assert limiter.retry_after("1.2.3.4", 10.5) == 0


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(chat: ChatEnv) -> None:
    uid, first = await signed_up(chat)
    status, session, headers = await post(chat, "/v1/auth/refresh", cookie=first)
    assert status == 200 and session["user_id"] == uid
    second = refresh_cookie(headers)
    assert second != first
    # The first token was used: presenting it again (a stolen copy) ends the family...
    status, _, headers = await post(chat, "/v1/auth/refresh", cookie=first)
    assert status == 401 and "Max-Age=0" in headers["Set-Cookie"]
    # ...so the legitimate newer token stops working too.
    status, _, _ = await post(chat, "/v1/auth/refresh", cookie=second)
    assert status == 401
    status, _, _ = await post(chat, "/v1/auth/refresh")
    assert status == 401
    status, _, _ = await post(chat, "/v1/auth/refresh", cookie="made-up")
    assert status == 401


async def test_logout_and_disable_end_sessions(chat: ChatEnv) -> None:
    uid, cookie = await signed_up(chat)
    status, _, headers = await post(chat, "/v1/auth/logout", cookie=cookie)
    assert status == 200 and "Max-Age=0" in headers["Set-Cookie"]
    assert (await post(chat, "/v1/auth/refresh", cookie=cookie))[0] == 401

    status, session, headers = await post(chat, "/v1/auth/login", {"login": uid, "password": PASSWORD})
    cookie = refresh_cookie(headers)
    status, _, _ = await post(chat, f"/v1/admin/accounts/{uid}/disable", headers={"X-API-Key": API_KEY})
    assert status == 200
    assert (await post(chat, "/v1/auth/refresh", cookie=cookie))[0] == 401
    status, body, _ = await post(chat, "/v1/auth/login", {"login": uid, "password": PASSWORD})
    assert status == 401 and body["error"]["message"] == "wrong user name or password"
    status, _, _ = await post(chat, f"/v1/admin/accounts/{uid}/enable", headers={"X-API-Key": API_KEY})
    assert status == 200
    assert (await post(chat, "/v1/auth/login", {"login": uid, "password": PASSWORD}))[0] == 200


async def test_admin_account_routes_need_the_api_key(chat: ChatEnv) -> None:
    uid, _ = await signed_up(chat)
    user_token = chat.token(uid)
    for path in (f"/v1/admin/accounts/{uid}/invite", f"/v1/admin/accounts/{uid}/disable"):
        for hdrs in ({}, {"X-API-Key": "wrong"}, {"Authorization": f"Bearer {user_token}"}):
            status, body, _ = await post(chat, path, {"display_name": "x"}, headers=hdrs)
            assert status == 401 and body["error"]["code"] == "unauthorized", (path, hdrs)
    status, _, _ = await post(chat, "/v1/admin/accounts/bad id!/invite", {"display_name": "x"},
                              headers={"X-API-Key": API_KEY})
    assert status == 400
    status, _, _ = await post(chat, "/v1/admin/accounts/nosuchuser/disable", headers={"X-API-Key": API_KEY})
    assert status == 404
    r = await chat.http("GET", "/v1/auth/login")
    assert r.status == 405 and r.headers["Allow"] == "POST"


async def test_cross_site_sign_in_is_refused(chat: ChatEnv) -> None:
    uid, _ = await signed_up(chat)
    status, _, _ = await post(chat, "/v1/auth/login", {"login": uid, "password": PASSWORD},
                              headers={"Origin": "https://evil.example"})
    assert status == 403
    status, _, _ = await post(chat, "/v1/auth/login", {"login": uid, "password": PASSWORD},
                              headers={"Origin": f"http://127.0.0.1:{chat.srv.port}"})
    assert status == 200


async def test_cli_users_add_prints_a_working_link_and_disable_ends_sign_in(
        chat: ChatEnv, monkeypatch: Any, tmp_path: Any, capsys: Any) -> None:
    import asyncio

    from gateway.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SENTCHAT_API_KEY", API_KEY)
    monkeypatch.setenv("SENTCHAT_TOKEN_HMAC_SECRET", SECRET)
    uid = f"cli{secrets.token_hex(3)}"
    url = chat.srv.http_url
    rc = await asyncio.to_thread(main, ["users", "add", uid, "--name", "Cli User", "--email",
                                        f"{uid}@example.org", "--url", url])
    assert rc == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith(f"{url}/#/invite?token=")
    token = link.split("token=", 1)[1]
    status, _, _ = await post(chat, "/v1/auth/invite", {"token": token, "password": PASSWORD})
    assert status == 200
    assert await asyncio.to_thread(main, ["users", "disable", uid, "--url", url]) == 0
    status, _, _ = await post(chat, "/v1/auth/login", {"login": f"{uid}@example.org", "password": PASSWORD})
    assert status == 401
    # A wrong key is refused by the server and said so.
    monkeypatch.setenv("SENTCHAT_API_KEY", "wrong")
    assert await asyncio.to_thread(main, ["users", "enable", uid, "--url", url]) == 1
    assert "401" in capsys.readouterr().err
