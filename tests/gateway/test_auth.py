"""JWT authentication end to end: the real centrifuge-python client against real gateways.

Keys are generated with `cryptography` when first needed. Every gateway comes from the
`make_server` factory (same event loop as the tests), so nothing here may block the loop:
the JWKS endpoint is a small asyncio HTTP server the gateway's PyJWKClient fetches from a
worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    DisconnectedContext,
    ErrorContext,
    SubscribedContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from websockets.asyncio.client import connect as ws_connect

from gateway.config import ConfigError, build_settings, load_settings
from tests.conftest import SECRET, Server, standard_settings

MakeServer = Callable[[Any], Awaitable[Server]]

INVALID_TOKEN = 3500
TOKEN_EXPIRED = 109
EXPIRED = 110
PERMISSION_DENIED = 103
# centrifuge-python's own "unauthorized" disconnect code (no get_token after 109).
SDK_UNAUTHORIZED = 1
# A guard against hangs only: nothing asserts how long anything takes.
WAIT = 10.0


# ---- keys ---------------------------------------------------------------------------


@functools.cache
def rsa_key(name: str = "main") -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str = "main") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(user: str = "alice", ttl: float | None = 3600, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": user, **extra}
    if ttl is not None:
        out["exp"] = int(time.time() + ttl)
    return out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT assembled by hand, for tokens no well-behaved library would produce."""
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()),
                     b64url(signature)])


def hs256_with_key_bytes(key: bytes, payload: dict[str, Any]) -> str:
    """HS256 over ``key`` (e.g. an RSA public PEM: the algorithm-confusion attack)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    sig = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


# ---- client helpers -----------------------------------------------------------------


class Recorder(ClientEventHandler):
    """The first of connected / disconnected, plus every error event."""

    def __init__(self) -> None:
        self.outcome: asyncio.Future[str | int] = asyncio.get_running_loop().create_future()
        self.errors: list[ErrorContext] = []

    async def on_connected(self, ctx: ConnectedContext) -> None:
        if not self.outcome.done():
            self.outcome.set_result("connected")

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        if not self.outcome.done():
            self.outcome.set_result(ctx.code)

    async def on_error(self, ctx: ErrorContext) -> None:
        self.errors.append(ctx)

    def server_error_codes(self) -> list[int]:
        return [e.error.code for e in self.errors if hasattr(e.error, "code")]


@asynccontextmanager
async def session(srv: Server, token: str = "",
                  get_token: Callable[[], Awaitable[str]] | None = None,
                  ) -> AsyncIterator[tuple[Client, Recorder]]:
    """A client that connected (or was refused); always disconnected afterwards."""
    rec = Recorder()
    client = Client(srv.ws_url, events=rec, token=token, get_token=get_token, proxy=None)
    try:
        await client.connect()
        await asyncio.wait_for(asyncio.shield(rec.outcome), WAIT)
        yield client, rec
    finally:
        await client.disconnect()


async def outcome(srv: Server, token: str) -> str | int:
    """"connected", or the disconnect code the client ended with."""
    async with session(srv, token) as (_, rec):
        return rec.outcome.result()


async def raw_connect(srv: Server, token: str) -> dict[str, Any]:
    """The connect reply, read off the wire (to see `expires` / `ttl`)."""
    async with ws_connect(srv.ws_url, proxy=None) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
        return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


class SubRecorder(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.outcome: asyncio.Future[str | int] = asyncio.get_running_loop().create_future()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        if not self.outcome.done():
            self.outcome.set_result("subscribed")

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        if not self.outcome.done():
            self.outcome.set_result(ctx.code)


async def subscribe_outcome(client: Client, channel: str, token: str) -> str | int:
    rec = SubRecorder()
    sub = client.new_subscription(channel, rec, token=token)
    await sub.subscribe()
    result = await asyncio.wait_for(asyncio.shield(rec.outcome), WAIT)
    await sub.unsubscribe()
    client.remove_subscription(sub)
    return result


def with_token(**token: Any) -> dict[str, Any]:
    settings = standard_settings()
    settings["client"]["token"] = token
    return settings


# ---- algorithms ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_algorithms(make_server: MakeServer, alg: str) -> None:
    # 64 bytes: long enough for HS512 (PyJWT warns about shorter HMAC keys).
    secret = "hmac-" + "0123456789abcdef" * 4
    srv = await make_server(with_token(hmac_secret_key=secret))
    assert await outcome(srv, jwt.encode(claims(), secret, algorithm=alg)) == "connected"
    other = "other-" + "0123456789abcdef" * 4
    assert await outcome(srv, jwt.encode(claims(), other, algorithm=alg)) == INVALID_TOKEN


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
async def test_rsa_public_key(make_server: MakeServer, alg: str) -> None:
    srv = await make_server(with_token(rsa_public_key=public_pem(rsa_key())))
    assert await outcome(srv, jwt.encode(claims(), rsa_key(), algorithm=alg)) == "connected"


async def test_ecdsa_public_key(make_server: MakeServer) -> None:
    srv = await make_server(with_token(ecdsa_public_key=public_pem(ec_key())))
    assert await outcome(srv, jwt.encode(claims(), ec_key(), algorithm="ES256")) == "connected"


async def test_all_static_keys_together(make_server: MakeServer) -> None:
    srv = await make_server(with_token(hmac_secret_key=SECRET, rsa_public_key=public_pem(rsa_key()),
                                       ecdsa_public_key=public_pem(ec_key())))
    for key, alg in [(SECRET, "HS256"), (rsa_key(), "RS256"), (ec_key(), "ES256")]:
        assert await outcome(srv, jwt.encode(claims(), key, algorithm=alg)) == "connected", alg


async def test_wrong_hmac_secret_is_invalid_token(server: Server) -> None:
    token = jwt.encode(claims(), "another-secret-0123456789-0123456789", algorithm="HS256")
    assert await outcome(server, token) == INVALID_TOKEN


async def test_wrong_rsa_and_ec_keys_are_invalid_token(make_server: MakeServer) -> None:
    srv = await make_server(with_token(rsa_public_key=public_pem(rsa_key()),
                                       ecdsa_public_key=public_pem(ec_key())))
    assert await outcome(srv, jwt.encode(claims(), rsa_key("other"), algorithm="RS256")) == INVALID_TOKEN
    assert await outcome(srv, jwt.encode(claims(), ec_key("other"), algorithm="ES256")) == INVALID_TOKEN


async def test_tampered_payload_is_invalid_token(server: Server) -> None:
    header, _, sig = jwt.encode(claims("alice"), SECRET, algorithm="HS256").split(".")
    forged = b64url(json.dumps(claims("admin")).encode())
    assert await outcome(server, f"{header}.{forged}.{sig}") == INVALID_TOKEN


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_invalid_token(server: Server, alg: str) -> None:
    assert await outcome(server, raw_token({"alg": alg, "typ": "JWT"}, claims())) == INVALID_TOKEN


async def test_garbage_token_is_invalid_token(server: Server) -> None:
    assert await outcome(server, "not-a-jwt") == INVALID_TOKEN


async def test_algorithm_not_configured_is_invalid_token(server: Server,
                                                         make_server: MakeServer) -> None:
    # HMAC only: RSA / ECDSA tokens are refused even though correctly signed.
    assert await outcome(server, jwt.encode(claims(), rsa_key(), algorithm="RS256")) == INVALID_TOKEN
    assert await outcome(server, jwt.encode(claims(), ec_key(), algorithm="ES256")) == INVALID_TOKEN
    # RSA only: HMAC and ECDSA are refused.
    srv = await make_server(with_token(rsa_public_key=public_pem(rsa_key())))
    assert await outcome(srv, jwt.encode(claims(), SECRET, algorithm="HS256")) == INVALID_TOKEN
    assert await outcome(srv, jwt.encode(claims(), ec_key(), algorithm="ES256")) == INVALID_TOKEN


async def test_hmac_signed_with_rsa_public_key_is_refused(make_server: MakeServer) -> None:
    # Algorithm confusion: the public PEM used as an HMAC secret must not verify.
    pem = public_pem(rsa_key())
    srv = await make_server(with_token(rsa_public_key=pem))
    assert await outcome(srv, hs256_with_key_bytes(pem.encode(), claims())) == INVALID_TOKEN


# ---- registered claims ----------------------------------------------------------------


async def test_audience_and_issuer_checked_only_when_configured(server: Server,
                                                                make_server: MakeServer) -> None:
    # Not configured: any aud / iss is ignored.
    token = jwt.encode(claims(aud="somebody-else", iss="https://elsewhere"), SECRET)
    assert await outcome(server, token) == "connected"

    srv = await make_server(with_token(hmac_secret_key=SECRET, audience="sentchat",
                                       issuer="https://auth.example"))
    good = {"aud": "sentchat", "iss": "https://auth.example"}
    assert await outcome(srv, jwt.encode(claims(**good), SECRET)) == "connected"
    # aud may be a list that contains the configured audience.
    listed = {**good, "aud": ["other", "sentchat"]}
    assert await outcome(srv, jwt.encode(claims(**listed), SECRET)) == "connected"
    for bad in ({**good, "aud": "other"}, {**good, "iss": "https://evil.example"},
                {"iss": good["iss"]}, {"aud": good["aud"]}):
        assert await outcome(srv, jwt.encode(claims(**bad), SECRET)) == INVALID_TOKEN, bad


async def test_audience_only(make_server: MakeServer) -> None:
    srv = await make_server(with_token(hmac_secret_key=SECRET, audience="sentchat"))
    assert await outcome(srv, jwt.encode(claims(aud="sentchat", iss="anything"), SECRET)) == "connected"
    assert await outcome(srv, jwt.encode(claims(aud="nope"), SECRET)) == INVALID_TOKEN


async def test_nbf_in_future_is_token_expired(server: Server) -> None:
    # As Centrifugo v6: its verifier folds `!IsValidNotBefore` into ErrTokenExpired (109).
    token = jwt.encode(claims(nbf=int(time.time()) + 3600), SECRET)
    async with session(server, token) as (_, rec):
        assert rec.outcome.result() == SDK_UNAUTHORIZED
        assert rec.server_error_codes()[0] == TOKEN_EXPIRED
    past = jwt.encode(claims(nbf=int(time.time()) - 10), SECRET)
    assert await outcome(server, past) == "connected"


async def test_iat_is_not_validated(server: Server) -> None:
    # Centrifugo OSS does not check iat: a token from a backend whose clock runs ahead
    # must not be refused (with the terminal 3500) for it.
    token = jwt.encode(claims(iat=int(time.time()) + 600, jti="t-1"), SECRET)
    assert await outcome(server, token) == "connected"


async def test_expired_token_gives_109_without_get_token(server: Server) -> None:
    async with session(server, jwt.encode(claims(ttl=-60), SECRET)) as (_, rec):
        # The SDK reports 109 and, with nothing to get a new token with, gives up.
        assert rec.outcome.result() == SDK_UNAUTHORIZED
        assert rec.server_error_codes()[0] == TOKEN_EXPIRED


async def test_expired_token_then_get_token_connects(server: Server) -> None:
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        ttl = -60 if calls == 1 else 3600
        return jwt.encode(claims("alice", ttl=ttl), SECRET)

    expired = jwt.encode(claims("alice", ttl=-60), SECRET)
    async with session(server, expired, get_token=get_token) as (client, rec):
        assert rec.outcome.result() == "connected"
        # Initial token and get_token's first answer both expired -> two 109 errors.
        assert rec.server_error_codes() == [TOKEN_EXPIRED, TOKEN_EXPIRED]
        assert calls == 2
        result = await client.rpc("whoami", {})
        assert result.data["user"] == "alice"


async def test_get_token_used_when_no_initial_token(server: Server) -> None:
    async def get_token() -> str:
        return jwt.encode(claims("bob"), SECRET)

    async with session(server, get_token=get_token) as (client, rec):
        assert rec.outcome.result() == "connected"
        assert (await client.rpc("whoami", {})).data["user"] == "bob"


async def test_connection_ttl_follows_exp(server: Server) -> None:
    reply = await raw_connect(server, jwt.encode(claims(ttl=600), SECRET))
    assert reply["connect"]["expires"] is True
    assert 0 < reply["connect"]["ttl"] <= 600
    reply = await raw_connect(server, jwt.encode(claims(ttl=None), SECRET))
    assert "expires" not in reply["connect"]


async def test_expire_at_decoupled_from_exp(server: Server) -> None:
    now = int(time.time())
    # expire_at sets the connection expiry, not exp.
    reply = await raw_connect(server, jwt.encode(claims(ttl=3600, expire_at=now + 120), SECRET))
    assert reply["connect"]["expires"] is True
    assert 0 < reply["connect"]["ttl"] <= 120
    # expire_at 0: the connection never expires although the token has exp.
    reply = await raw_connect(server, jwt.encode(claims(ttl=3600, expire_at=0), SECRET))
    assert "expires" not in reply["connect"]
    # expire_at without exp.
    reply = await raw_connect(server, jwt.encode(claims(ttl=None, expire_at=now + 120), SECRET))
    assert 0 < reply["connect"]["ttl"] <= 120
    # exp is still checked even when expire_at lies in the future.
    reply = await raw_connect(server, jwt.encode(claims(ttl=-60, expire_at=now + 120), SECRET))
    assert reply["error"]["code"] == TOKEN_EXPIRED
    # A connection expiry already past: error 110.
    reply = await raw_connect(server, jwt.encode(claims(ttl=3600, expire_at=now - 60), SECRET))
    assert reply["error"]["code"] == EXPIRED


async def test_info_claim_is_conn_info_in_presence(server: Server) -> None:
    info = {"name": "Alice", "tags": [1, 2]}
    async with session(server, jwt.encode(claims("alice", info=info), SECRET)) as (client, rec):
        assert rec.outcome.result() == "connected"
        sub = client.new_subscription("chat:auth-info", SubRecorder())
        await sub.subscribe()
        await sub.ready()
        presence = await sub.presence()
        mine = presence.clients[client.client_id]
        assert mine.user == "alice"
        assert mine.conn_info == info


async def test_meta_claim_accepted_and_kept_server_side(server: Server) -> None:
    meta = {"plan": "pro", "roles": ["admin"]}
    async with session(server, jwt.encode(claims("alice", meta=meta), SECRET)) as (client, rec):
        assert rec.outcome.result() == "connected"
        conn = server.node.connections[client.client_id]
        assert orjson.loads(conn.session.meta) == meta


async def test_subscription_token_in_connection_token_position_is_refused(server: Server) -> None:
    token = jwt.encode(claims("alice", channel="secret:x"), SECRET)
    assert await outcome(server, token) == INVALID_TOKEN


# ---- subscription tokens -------------------------------------------------------------


async def test_subscription_token_uses_connection_key_by_default(server: Server) -> None:
    async with session(server, server.token("alice")) as (client, _):
        sub_token = jwt.encode(claims("alice", channel="secret:default-key"), SECRET)
        assert await subscribe_outcome(client, "secret:default-key", sub_token) == "subscribed"


async def test_separate_subscription_token_keys(make_server: MakeServer) -> None:
    sub_secret = "subscription-secret-0123456789-0123456789"
    srv = await make_server(standard_settings(subscription_token={"hmac_secret_key": sub_secret}))
    async with session(srv, jwt.encode(claims("alice"), SECRET)) as (client, rec):
        assert rec.outcome.result() == "connected"
        channel = "secret:separate"
        good = jwt.encode(claims("alice", channel=channel), sub_secret)
        assert await subscribe_outcome(client, channel, good) == "subscribed"
        # Signed with the connection key: not valid for subscriptions -> 103, no disconnect.
        wrong = jwt.encode(claims("alice", channel=channel), SECRET)
        assert await subscribe_outcome(client, channel, wrong) == PERMISSION_DENIED
        assert (await client.rpc("whoami", {})).data["user"] == "alice"
    # ...and the subscription key does not authenticate connections.
    assert await outcome(srv, jwt.encode(claims("alice"), sub_secret)) == INVALID_TOKEN


async def test_separate_subscription_rsa_key(make_server: MakeServer) -> None:
    srv = await make_server(standard_settings(
        subscription_token={"rsa_public_key": public_pem(rsa_key("sub"))}))
    async with session(srv, jwt.encode(claims("alice"), SECRET)) as (client, _):
        channel = "secret:rsa"
        good = jwt.encode(claims("alice", channel=channel), rsa_key("sub"), algorithm="RS256")
        assert await subscribe_outcome(client, channel, good) == "subscribed"
        hmac_signed = jwt.encode(claims("alice", channel=channel), SECRET)
        assert await subscribe_outcome(client, channel, hmac_signed) == PERMISSION_DENIED


# ---- JWKS ---------------------------------------------------------------------------


class JwksServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering every GET with ``self.body``."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {"keys": []}
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/.well-known/jwks.json"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            payload = json.dumps(self.body).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                         + payload)
            await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        out = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        out["alg"] = "RS256"
    else:
        out = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        out["alg"] = "ES256"
    return {**out, "kid": kid, "use": "sig"}


@asynccontextmanager
async def jwks_gateway(make_server: MakeServer, **token: Any) -> AsyncIterator[tuple[Server, JwksServer]]:
    jwks = JwksServer()
    jwks.body = {"keys": [jwk(rsa_key("jwks"), "rsa-1"), jwk(ec_key("jwks"), "ec-1")]}
    await jwks.start()
    try:
        srv = await make_server(with_token(jwks_public_endpoint=jwks.url, **token))
        yield srv, jwks
    finally:
        await jwks.close()


def rs(kid: str | None, key: Any = None, **extra: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**extra), key or rsa_key("jwks"), algorithm="RS256", headers=headers)


def es(kid: str, key: Any = None) -> str:
    return jwt.encode(claims(), key or ec_key("jwks"), algorithm="ES256", headers={"kid": kid})


async def test_jwks_keys_selected_by_kid_and_cached(make_server: MakeServer) -> None:
    async with jwks_gateway(make_server) as (srv, jwks):
        assert jwks.requests == 0
        for _ in range(3):
            assert await outcome(srv, rs("rsa-1")) == "connected"
            assert await outcome(srv, es("ec-1")) == "connected"
        # Six connects, two different keys: one fetch of the key set.
        assert jwks.requests == 1


async def test_jwks_okp_ed25519_key(make_server: MakeServer) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    okp = {**OKPAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "ed-1", "use": "sig",
           "alg": "EdDSA"}
    async with jwks_gateway(make_server) as (srv, jwks):
        jwks.body["keys"].append(okp)
        token = jwt.encode(claims(), key, algorithm="EdDSA", headers={"kid": "ed-1"})
        assert await outcome(srv, token) == "connected"
        other = ed25519.Ed25519PrivateKey.generate()
        forged = jwt.encode(claims(), other, algorithm="EdDSA", headers={"kid": "ed-1"})
        assert await outcome(srv, forged) == INVALID_TOKEN


async def test_jwks_rejections(make_server: MakeServer) -> None:
    async with jwks_gateway(make_server, hmac_secret_key=SECRET) as (srv, _):
        assert await outcome(srv, rs("unknown-kid")) == INVALID_TOKEN
        assert await outcome(srv, rs(None)) == INVALID_TOKEN
        # The right kid but another key's signature.
        assert await outcome(srv, rs("rsa-1", key=rsa_key("other"))) == INVALID_TOKEN
        # An RSA signature presented under the EC key's kid.
        assert await outcome(srv, rs("ec-1")) == INVALID_TOKEN
        assert await outcome(srv, es("ec-1", key=ec_key("other"))) == INVALID_TOKEN
        # With JWKS configured the static HMAC secret is not used.
        assert await outcome(srv, jwt.encode(claims(), SECRET, algorithm="HS256")) == INVALID_TOKEN
        assert await outcome(srv, raw_token({"alg": "none", "kid": "rsa-1"}, claims())) == INVALID_TOKEN
        # Expired through JWKS is still 109, not 3500.
        async with session(srv, rs("rsa-1", ttl=-60)) as (_, rec):
            assert TOKEN_EXPIRED in rec.server_error_codes()
        assert await outcome(srv, rs("rsa-1")) == "connected"


async def test_jwks_with_audience(make_server: MakeServer) -> None:
    async with jwks_gateway(make_server, audience="sentchat") as (srv, _):
        assert await outcome(srv, rs("rsa-1", aud="sentchat")) == "connected"
        assert await outcome(srv, rs("rsa-1", aud="other")) == INVALID_TOKEN


async def test_jwks_key_removed_from_set_stops_verifying(make_server: MakeServer) -> None:
    # Once the cached key set expires, a key no longer published must not verify: the
    # cache must not keep trusting a revoked key for ever.
    async with jwks_gateway(make_server, jwks_cache_ttl="1s") as (srv, jwks):
        assert await outcome(srv, rs("rsa-1")) == "connected"
        jwks.body = {"keys": [jwk(ec_key("jwks"), "ec-1")]}
        await asyncio.sleep(1.2)  # past the 1s cache lifetime (a wait, not an assertion)
        assert await outcome(srv, rs("rsa-1")) == INVALID_TOKEN
        assert await outcome(srv, es("ec-1")) == "connected"
        assert jwks.requests == 2


async def test_jwks_endpoint_down_is_invalid_token(make_server: MakeServer) -> None:
    jwks = JwksServer()
    await jwks.start()
    url = jwks.url
    await jwks.close()  # nothing listens there any more
    srv = await make_server(with_token(jwks_public_endpoint=url))
    assert await outcome(srv, rs("rsa-1")) == INVALID_TOKEN


# ---- configuration ------------------------------------------------------------------


async def test_env_hmac_secret_flows_into_verifier(make_server: MakeServer, tmp_path: Path) -> None:
    config = tmp_path / "sentchat.toml"
    config.write_text('[client.token]\nhmac_secret_key = "secret-from-the-file-0123456789-abc"\n')
    env_secret = "secret-from-the-environment-0123456789"
    settings, _ = load_settings(config, environ={"SENTCHAT_TOKEN_HMAC_SECRET": env_secret})
    assert settings.client.token.hmac_secret_key == env_secret
    srv = await make_server(settings)
    assert await outcome(srv, jwt.encode(claims(), env_secret)) == "connected"
    assert await outcome(srv, jwt.encode(claims(), "secret-from-the-file-0123456789-abc")) == INVALID_TOKEN


async def test_env_secret_that_looks_numeric_stays_a_string(make_server: MakeServer) -> None:
    settings, _ = load_settings(None, environ={"SENTCHAT_TOKEN_HMAC_SECRET": "12345678901234567890123456789012"})
    srv = await make_server(settings)
    assert await outcome(srv, jwt.encode(claims(), "12345678901234567890123456789012")) == "connected"


@pytest.mark.parametrize("section", ["token", "subscription_token"])
@pytest.mark.parametrize("field", ["rsa_public_key", "ecdsa_public_key"])
def test_unusable_public_key_refused_at_start(section: str, field: str) -> None:
    wrong_type = public_pem(ec_key()) if field == "rsa_public_key" else public_pem(rsa_key())
    for pem in ("garbage", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", wrong_type):
        settings = standard_settings()
        settings["client"][section] = {**settings["client"].get(section, {}), field: pem}
        with pytest.raises(ConfigError, match=rf"config key client\.{section}\.{field}:"):
            build_settings(settings)
