"""Signing in through the company's OpenID Connect provider (``[auth.oidc]``).

The authorization code flow with PKCE, the gateway acting as the OAuth client:

1. The web client makes a PKCE verifier (it never leaves the browser until step 3) and
   posts its S256 challenge to ``POST /v1/auth/oidc/begin``. The gateway reads the
   provider's discovery document, draws ``state`` and ``nonce``, keeps them (and the
   redirect URI) in a short-lived HMAC-signed HttpOnly cookie, and answers the provider's
   authorization URL, where the browser goes.
2. The provider signs the user in and redirects back to ``/?code=...&state=...``.
3. The client posts ``{code, state, code_verifier}`` to ``POST /v1/auth/oidc/callback``:
   the gateway checks ``state`` against its cookie, exchanges the code (with the verifier,
   and the client secret when configured) at the token endpoint, verifies the ID token's
   signature against the provider's JWKS, its issuer, audience, expiry and ``nonce``, and
   signs the ``sub`` in as the chat user of that id, exactly like a local sign-in (same
   access JWT, same rotating refresh cookie, same ``sentchat users disable``).

The exchange happens server-side so that confidential clients work (Keycloak, Entra ID)
and the provider's token endpoint needs no CORS; the state, nonce and redirect URI are
bound to the browser by the cookie, not by anything the page could be tricked to send.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson
from msgspec import Meta

from gateway.chat.errors import ChatError

if TYPE_CHECKING:
    from gateway.chat.accounts import AccountsHttp
    from gateway.config import OidcSettings
    from gateway.http import Answer, RequestHead

JSON = "application/json"
COOKIE = "sentchat_oidc"
COOKIE_PATH = "/v1/auth/oidc"
FLOW_TTL = 600  # seconds from begin to callback: a sign-in at the provider, not a day
METADATA_TTL = 3600.0  # discovery document cache; keys rotate through the JWKS, not here
HTTP_TIMEOUT = 10.0
MAX_RESPONSE = 1024 * 1024  # a discovery document, a token response: small
LEEWAY = 60  # seconds of clock skew tolerated on exp / iat
# Only asymmetric signatures: the provider's public keys prove the token is its own (an
# HMAC "signed" with the client secret would be forgeable by anyone holding the secret).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


class BeginBody(msgspec.Struct, forbid_unknown_fields=True):
    # BASE64URL(SHA256(verifier)) is always 43 characters (RFC 7636 §4.2).
    code_challenge: Annotated[str, Meta(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]+$")]


class CallbackBody(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, Meta(min_length=1, max_length=2048)]
    state: Annotated[str, Meta(min_length=1, max_length=256)]
    # RFC 7636 §4.1: 43-128 unreserved characters.
    code_verifier: Annotated[str, Meta(min_length=43, max_length=128, pattern=r"^[A-Za-z0-9._~-]+$")]


class Metadata(msgspec.Struct):
    """The fields of the discovery document this flow uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    id_token_signing_alg_values_supported: list[str] = msgspec.field(default_factory=lambda: ["RS256"])
    code_challenge_methods_supported: list[str] | None = None


class Rejected(Exception):
    """The provider's answer failed a check; the message says which (for the log and the
    401 body: the user's browser already knows everything it says)."""


def _error(status: int, code: str, message: str, extra: dict[str, str] | None = None) -> Answer:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return (status, body, JSON, extra) if extra else (status, body, JSON)


def _fetch(url: str, form: dict[str, str] | None = None, auth: tuple[str, str] | None = None) -> Any:
    """GET (or POST ``form`` to) ``url`` and decode its JSON answer; blocking, run in a thread."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers={"Accept": "application/json"})  # noqa: S310 - https/loopback, checked in config
    if auth is not None:
        pair = f"{urllib.parse.quote(auth[0], safe='')}:{urllib.parse.quote(auth[1], safe='')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
            body = response.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        # The token endpoint explains a refused code in its JSON body (RFC 6749 §5.2).
        body = exc.read(MAX_RESPONSE + 1)
        try:
            detail = orjson.loads(body)
        except orjson.JSONDecodeError:
            detail = {}
        reason = detail.get("error_description") or detail.get("error") or exc.reason
        raise Rejected(f"the provider answered {exc.code} at {url}: {reason}") from None
    if len(body) > MAX_RESPONSE:
        raise Rejected(f"the provider's answer at {url} is too large")
    return orjson.loads(body)


class OidcClient:
    """The gateway as a client of one provider: discovery, code exchange, ID token checks."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._metadata: tuple[float, Metadata] | None = None
        self._jwks: Any = None  # jwt.PyJWKClient, made once the jwks_uri is known

    async def metadata(self) -> Metadata:
        """The discovery document (cached an hour), its issuer checked to be the configured one."""
        cached = self._metadata
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            raw = await asyncio.to_thread(_fetch, url)
            meta = msgspec.convert(raw, Metadata)
        except (OSError, orjson.JSONDecodeError, msgspec.ValidationError) as exc:
            raise Rejected(f"no usable discovery document at {url}: {exc}") from None
        # OIDC Discovery §4.3: the issuer it states must be exactly the one asked for
        # (otherwise a document could speak for another provider).
        if meta.issuer != self.settings.issuer:
            raise Rejected(f"the discovery document's issuer {meta.issuer!r} is not {self.settings.issuer!r}")
        if meta.code_challenge_methods_supported is not None and "S256" not in meta.code_challenge_methods_supported:
            raise Rejected("the provider does not support PKCE with S256")
        if self._jwks is None or self._jwks.uri != meta.jwks_uri:
            import jwt

            self._jwks = jwt.PyJWKClient(meta.jwks_uri, cache_keys=True, lifespan=3600, timeout=int(HTTP_TIMEOUT))
        self._metadata = (time.monotonic() + METADATA_TTL, meta)
        return meta

    def authorization_url(self, meta: Metadata, *, redirect_uri: str, state: str, nonce: str,
                          code_challenge: str) -> str:
        params = {"response_type": "code", "client_id": self.settings.client_id,
                  "redirect_uri": redirect_uri, "scope": " ".join(self.settings.scopes),
                  "state": state, "nonce": nonce, "code_challenge": code_challenge,
                  "code_challenge_method": "S256"}
        sep = "&" if "?" in meta.authorization_endpoint else "?"
        return meta.authorization_endpoint + sep + urllib.parse.urlencode(params)

    async def exchange(self, meta: Metadata, *, code: str, verifier: str, redirect_uri: str) -> str:
        """The ID token the token endpoint gives for ``code``."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier, "client_id": self.settings.client_id}
        auth = None
        if self.settings.client_secret:
            auth = (self.settings.client_id, self.settings.client_secret)  # client_secret_basic
        try:
            answer = await asyncio.to_thread(_fetch, meta.token_endpoint, form, auth)
        except (OSError, orjson.JSONDecodeError) as exc:
            raise Rejected(f"the token endpoint failed: {exc}") from None
        token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise Rejected("the token endpoint gave no id_token (is the scope missing 'openid'?)")
        return token

    async def verify(self, meta: Metadata, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims once its signature (the provider's JWKS), issuer, audience,
        expiry and nonce are right (OIDC Core §3.1.3.7)."""
        import jwt

        allowed = [a for a in meta.id_token_signing_alg_values_supported if a in ALGORITHMS] or ["RS256"]
        try:
            key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, id_token)
            claims: dict[str, Any] = jwt.decode(
                id_token, key.key, algorithms=allowed, audience=self.settings.client_id,
                issuer=self.settings.issuer, leeway=LEEWAY,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]})
        except jwt.ExpiredSignatureError:
            raise Rejected("the ID token has expired") from None
        except jwt.InvalidAudienceError:
            raise Rejected("the ID token is not for this client (aud)") from None
        except jwt.InvalidIssuerError:
            raise Rejected("the ID token's issuer is not the configured one (iss)") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise Rejected(f"the ID token is not valid: {exc}") from None
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.settings.client_id:
            raise Rejected("the ID token names several audiences and not this client as azp")
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise Rejected("the ID token's nonce is not the one this sign-in sent (replayed?)")
        return claims


class OidcHttp:
    """``/v1/auth/oidc`` (is it on), ``/begin`` and ``/callback``; sessions are made by
    the local accounts' code so both sign-ins end the same way."""

    def __init__(self, accounts: AccountsHttp) -> None:
        self.accounts = accounts
        self.engine = accounts.engine
        self.settings = self.engine.settings.auth.oidc
        self.client = OidcClient(self.settings) if self.settings.issuer else None
        secret = self.engine.settings.client.token.hmac_secret_key or self.engine.settings.http_api.key
        # Its own key, derived: a cookie signature can never double as a token signature.
        self._key = hashlib.sha256(b"sentchat oidc flow\x00" + secret.encode()).digest()

    async def handle(self, head: RequestHead, body: bytes) -> Answer:
        path = head.path.rstrip("/")
        if path == COOKIE_PATH:
            if head.method not in ("GET", "HEAD"):
                return _error(405, "method_not_allowed", "use GET", {"Allow": "GET, HEAD"})
            info = {"enabled": self.client is not None, "label": self.settings.label if self.client else ""}
            return 200, orjson.dumps(info), JSON, {"Cache-Control": "no-store"}
        routes = {COOKIE_PATH + "/begin": self.begin, COOKIE_PATH + "/callback": self.callback}
        handler = routes.get(path)
        if handler is None:
            return _error(404, "not_found", f"no route {head.path}")
        if head.method != "POST":
            return _error(405, "method_not_allowed", "use POST", {"Allow": "POST"})
        if self.client is None:
            return _error(404, "not_found", "OIDC sign-in is not configured (auth.oidc.issuer)")
        try:
            return await handler(head, body)
        except ChatError as exc:
            return _error(exc.status, exc.code, exc.message)

    async def begin(self, head: RequestHead, body: bytes) -> Answer:
        from gateway.chat.accounts import _decode

        assert self.client is not None  # noqa: S101 - handle() checked
        p = _decode(body, BeginBody)
        try:
            meta = await self.client.metadata()
        except Rejected as exc:
            return _error(502, "provider_unavailable", str(exc))
        scheme = "https" if head.headers.get("x-forwarded-proto", "").lower() == "https" else "http"
        host = head.headers.get("host", "")
        if not host or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,255}", host):
            return _error(400, "bad_request", "a Host header naming this gateway is required")
        redirect_uri = f"{scheme}://{host}/"
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        flow = {"s": state, "n": nonce, "r": redirect_uri, "e": int(time.time()) + FLOW_TTL}
        url = self.client.authorization_url(meta, redirect_uri=redirect_uri, state=state, nonce=nonce,
                                            code_challenge=p.code_challenge)
        secure = "; Secure" if scheme == "https" else ""
        cookie = (f"{COOKIE}={self._sign(flow)}; Path={COOKIE_PATH}; Max-Age={FLOW_TTL}; HttpOnly; "
                  f"SameSite=Lax{secure}")
        return 200, orjson.dumps({"authorization_url": url}), JSON, {"Set-Cookie": cookie,
                                                                     "Cache-Control": "no-store"}

    async def callback(self, head: RequestHead, body: bytes) -> Answer:
        from gateway.chat import schema as s
        from gateway.chat.accounts import _cookies, _decode

        assert self.client is not None  # noqa: S101 - handle() checked
        p = _decode(body, CallbackBody)
        address = head.peer or "?"
        if self.accounts.by_address.retry_after(address) > 0:
            return _error(429, "rate_limited", "too many sign-in attempts; try again later")
        flow = self._unsign(_cookies(head).get(COOKIE, ""))
        if flow is None:
            self.accounts.by_address.hit(address)
            return _error(400, "bad_state", "no sign-in under way in this browser (expired? start again)")
        if not hmac.compare_digest(p.state.encode(), str(flow["s"]).encode()):
            self.accounts.by_address.hit(address)
            return _error(400, "bad_state", "the state does not match this browser's sign-in (start again)")
        try:
            meta = await self.client.metadata()
            id_token = await self.client.exchange(meta, code=p.code, verifier=p.code_verifier,
                                                  redirect_uri=str(flow["r"]))
            claims = await self.client.verify(meta, id_token, str(flow["n"]))
        except Rejected as exc:
            self.accounts.by_address.hit(address)
            return _error(401, "oidc_rejected", f"sign-in refused: {exc}")
        try:
            user = msgspec.convert(claims["sub"], s.UserId)
        except msgspec.ValidationError:
            return _error(403, "forbidden", "the provider's subject (sub) is not a usable SENTchat user id "
                          "(letters, digits and . _ - @, up to 64)")
        profile = {"name": claims.get("name") or claims.get("preferred_username") or "",
                   "email": claims.get("email") if claims.get("email_verified", True) else None}
        await self.accounts.service.actor(user, profile)
        if await self.accounts.store.ensure_external(user):
            return _error(401, "unauthorized", "this account is disabled")
        return await self.accounts.signed_in(head, user)

    # ---- the flow cookie ---------------------------------------------------------------

    def _sign(self, flow: dict[str, Any]) -> str:
        payload = base64.urlsafe_b64encode(orjson.dumps(flow)).decode().rstrip("=")
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return payload + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def _unsign(self, value: str) -> dict[str, Any] | None:
        payload, _, mac = value.partition(".")
        if not payload or not mac or not _B64URL.match(payload) or not _B64URL.match(mac):
            return None
        want = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        try:
            got = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
            if not hmac.compare_digest(want, got):
                return None
            flow = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(flow, dict) or not isinstance(flow.get("e"), int) or flow["e"] < time.time():
            return None
        return flow
