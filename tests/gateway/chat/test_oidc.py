"""OIDC sign-in (gateway/chat/oidc.py) against a real local provider (tests/oidc_provider.py,
Authlib): the whole authorization code flow with PKCE over HTTP, and what a correct client
must refuse: a state from another browser, a nonce it did not send, a token from another
issuer or for another audience, an expired token, a wrong PKCE verifier."""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError
from tests.conftest import API_KEY, Server, create_database, drop_database, start_server, stop_server
from tests.gateway.chat.conftest import ChatEnv, chat_settings
from tests.oidc_provider import Provider

CLIENT_ID, CLIENT_SECRET = "sentchat-web", "provider-secret-1234"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider().start()
    p.add_user("carol", "carol-password", "Carol Danvers", "carol@example.com")
    p.add_user("not a valid id!", "pw", "Bad Sub")
    yield p
    p.stop()


@dataclass
class Sso:
    srv: Server
    provider: Provider


@pytest.fixture(scope="module")
async def sso(pg_dsn: str, provider: Provider) -> AsyncIterator[Sso]:
    dsn = await create_database(pg_dsn, "oidc")
    srv = await start_server(chat_settings(dsn, auth__oidc__issuer=provider.issuer,
                                           auth__oidc__client_id=CLIENT_ID,
                                           auth__oidc__client_secret=CLIENT_SECRET))
    provider.add_client(CLIENT_ID, CLIENT_SECRET, [f"{srv.http_url}/"])
    try:
        yield Sso(srv, provider)
    finally:
        await stop_server(srv)
        await drop_database(dsn)


@pytest.fixture(autouse=True)
def _no_tampering(provider: Provider) -> Iterator[None]:
    provider.tamper.clear()
    yield
    provider.tamper.clear()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


async def authorize(http: aiohttp.ClientSession, sso: Sso, user: str = "carol",
                    password: str = "carol-password") -> tuple[str, str, str]:  # noqa: S107 - the test user
    """Begin at the gateway, sign in at the provider; returns (code, state, verifier)."""
    verifier, challenge = pkce()
    async with http.post(f"{sso.srv.http_url}/v1/auth/oidc/begin", json={"code_challenge": challenge}) as resp:
        assert resp.status == 200, await resp.text()
        url = (await resp.json())["authorization_url"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["code_challenge_method"] == "S256" and query["code_challenge"] == challenge
    assert query["redirect_uri"] == f"{sso.srv.http_url}/" and "openid" in query["scope"].split()
    async with http.get(url) as resp:
        assert resp.status == 200 and "Sign in at the provider" in await resp.text()
    async with http.post(url, data={"username": user, "password": password}, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        back = urllib.parse.urlsplit(resp.headers["Location"])
    got = dict(urllib.parse.parse_qsl(back.query))
    assert got["state"] == query["state"]
    return got["code"], got["state"], verifier


async def callback(http: aiohttp.ClientSession, sso: Sso, code: str, state: str,
                   verifier: str) -> tuple[int, Any]:
    async with http.post(f"{sso.srv.http_url}/v1/auth/oidc/callback",
                         json={"code": code, "state": state, "code_verifier": verifier}) as resp:
        return resp.status, await resp.json(content_type=None)


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # cookies for 127.0.0.1


async def test_sign_in_with_the_provider_maps_sub_to_the_chat_user(sso: Sso) -> None:
    async with session() as http:
        async with http.get(f"{sso.srv.http_url}/v1/auth/oidc") as resp:
            assert await resp.json() == {"enabled": True, "label": "Sign in with SSO"}
        status, body = await callback(http, sso, *(await authorize(http, sso)))
        assert status == 200, body
        assert body["user_id"] == "carol" and body["expires_in"] > 0
        async with http.get(f"{sso.srv.http_url}/v1/me", headers={"Authorization": f"Bearer {body['token']}"}) as resp:
            me = (await resp.json())["user"]
        assert me["id"] == "carol" and me["display_name"] == "Carol Danvers"
        # The refresh cookie works like a local account's.
        async with http.post(f"{sso.srv.http_url}/v1/auth/refresh") as resp:
            assert resp.status == 200 and (await resp.json())["user_id"] == "carol"


async def test_a_state_from_elsewhere_is_refused(sso: Sso) -> None:
    async with session() as http:
        code, _, verifier = await authorize(http, sso)
        status, body = await callback(http, sso, code, "not-the-state", verifier)
        assert status == 400 and body["error"]["code"] == "bad_state"
    async with session() as other:  # another browser: no flow cookie at all
        status, body = await callback(other, sso, code, "whatever", verifier)
        assert status == 400 and body["error"]["code"] == "bad_state"


@pytest.mark.parametrize(("tamper", "says"), [
    ({"nonce": "a-nonce-this-sign-in-never-sent"}, "nonce"),
    ({"iss": "http://127.0.0.1:1/another-issuer"}, "iss"),
    ({"aud": "another-client"}, "aud"),
    ({"exp_in": -600}, "expired"),
])
async def test_a_wrong_id_token_is_refused(sso: Sso, tamper: dict[str, Any], says: str) -> None:
    sso.provider.tamper.update(tamper)
    async with session() as http:
        status, body = await callback(http, sso, *(await authorize(http, sso)))
    assert status == 401 and body["error"]["code"] == "oidc_rejected", body
    assert says in body["error"]["message"]


async def test_a_wrong_pkce_verifier_is_refused_by_the_provider(sso: Sso) -> None:
    async with session() as http:
        code, state, _ = await authorize(http, sso)
        status, body = await callback(http, sso, code, state, pkce()[0])
    assert status == 401 and "provider answered 400" in body["error"]["message"], body


async def test_inputs_are_validated(sso: Sso) -> None:
    async with session() as http:
        for path, payload in (("begin", {"code_challenge": "short"}), ("begin", {}),
                              ("callback", {"code": "x", "state": "y", "code_verifier": "too-short"}),
                              ("callback", {"code": "x", "state": "y", "code_verifier": "a" * 43, "more": 1})):
            async with http.post(f"{sso.srv.http_url}/v1/auth/oidc/{path}", json=payload) as resp:
                assert resp.status == 400, (path, payload, await resp.text())
        async with http.get(f"{sso.srv.http_url}/v1/auth/oidc/begin") as resp:
            assert resp.status == 405
        async with http.post(f"{sso.srv.http_url}/v1/auth/oidc/begin", json={"code_challenge": "a" * 43},
                             headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403


async def test_a_sub_that_is_no_user_id_and_a_disabled_account(sso: Sso) -> None:
    async with session() as http:
        status, body = await callback(http, sso, *(await authorize(http, sso, "not a valid id!", "pw")))
        assert status == 403 and "sub" in body["error"]["message"]
    async with aiohttp.ClientSession() as http, http.post(
            f"{sso.srv.http_url}/v1/admin/accounts/carol/disable", headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 200
    try:
        async with session() as http:
            status, body = await callback(http, sso, *(await authorize(http, sso)))
            assert status == 401 and "disabled" in body["error"]["message"]
    finally:
        async with aiohttp.ClientSession() as http, http.post(
                f"{sso.srv.http_url}/v1/admin/accounts/carol/enable", headers={"X-API-Key": API_KEY}) as resp:
            assert resp.status == 200


async def test_without_configuration_oidc_is_off(chat: ChatEnv) -> None:
    async with session() as http:
        async with http.get(f"{chat.srv.http_url}/v1/auth/oidc") as resp:
            assert await resp.json() == {"enabled": False, "label": ""}
        async with http.post(f"{chat.srv.http_url}/v1/auth/oidc/begin", json={"code_challenge": "a" * 43}) as resp:
            assert resp.status == 404


@pytest.mark.parametrize(("oidc_keys", "says"), [
    ({"issuer": "http://idp.example.com"}, "https"),
    ({"issuer": "https://idp.example.com"}, "client_id"),
    ({"issuer": "https://idp.example.com", "client_id": "x", "scopes": ["profile"]}, "openid"),
])
def test_config_refuses_an_unusable_provider(oidc_keys: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        chat_settings("postgresql://unused", **{f"auth__oidc__{k}": v for k, v in oidc_keys.items()})

