"""A real OpenID Connect provider for the tests, built with Authlib's authorization server
on Flask and served by werkzeug on a loopback port in a thread.

It speaks the protocol for real: discovery document, JWKS (an RSA key made at start),
an HTML sign-in form at the authorization endpoint, authorization codes bound to the
client, redirect URI, nonce and PKCE challenge (S256 required), a token endpoint that
authenticates the client and issues RS256 ID tokens. ``tamper`` lets a negative test make
it sign a token a correct client must refuse (another issuer, another audience, expired).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Authlib refuses plain http unless told: this provider lives on the loopback only.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin, UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, jsonify, request
from joserfc.jwk import RSAKey
from markupsafe import escape
from werkzeug.serving import make_server

SCOPES = {"openid", "profile", "email"}


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # A confidential client: it must prove its secret at the token endpoint.
        return method in ("client_secret_basic", "client_secret_post") if self.client_secret else method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None


class Provider:
    """The provider: ``start()``, then ``issuer``; ``users`` and ``clients`` are editable."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(4), "use": "sig", "alg": "RS256"},
                                       private=True)
        self.users: dict[str, dict[str, str]] = {}
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.tamper: dict[str, Any] = {}  # iss / aud / exp_in / nonce: what the next ID tokens get wrong
        self.issuer = ""
        self.app = self._build_app()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def add_user(self, sub: str, password: str, name: str, email: str = "") -> None:
        self.users[sub] = {"sub": sub, "password": password, "name": name, "email": email}

    def add_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> None:
        self.clients[client_id] = Client(client_id, client_secret, redirect_uris)

    def start(self) -> Provider:
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-provider", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ---- the Flask app ---------------------------------------------------------------

    def _build_app(self) -> Flask:
        provider = self
        app = Flask("oidc-provider")
        server = AuthorizationServer(app, query_client=lambda cid: provider.clients.get(cid),
                                     save_token=lambda token, req: None)

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                provider.codes[code] = Code(
                    code=code, client_id=req.client.get_client_id(), redirect_uri=req.payload.redirect_uri,
                    scope=req.payload.scope, user=req.user["sub"], nonce=data.get("nonce"),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"))

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                found = provider.codes.get(code)
                return found if found is not None and found.client_id == client.get_client_id() else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                provider.codes.pop(authorization_code.code, None)  # single use

            def authenticate_user(self, authorization_code: Code) -> dict[str, str] | None:
                return provider.users.get(authorization_code.user)

        class IdToken(OpenIDCode):
            def resolve_client_private_key(self, client: Client) -> RSAKey:
                return provider.key

            def get_encode_header(self, client: Client) -> dict[str, str]:
                return {"alg": "RS256", "kid": str(provider.key.kid)}

            def get_client_claims(self, client: Client) -> dict[str, Any]:
                t = provider.tamper
                now = int(time.time())
                return {"iss": t.get("iss", provider.issuer), "aud": [t.get("aud", client.get_client_id())],
                        "iat": now + min(0, t.get("exp_in", 0)) - 1, "exp": now + t.get("exp_in", 300)}

            def get_authorization_code_claims(self, authorization_code: Code) -> dict[str, Any]:
                claims = super().get_authorization_code_claims(authorization_code)
                if "nonce" in provider.tamper:
                    claims["nonce"] = provider.tamper["nonce"]
                return claims

            def exists_nonce(self, nonce: str, req: Any) -> bool:
                return any(c.nonce == nonce for c in provider.codes.values())

            def generate_user_info(self, user: dict[str, str], scope: str) -> UserInfo:
                info = UserInfo(sub=user["sub"], name=user["name"])
                if "email" in scope and user["email"]:
                    info["email"], info["email_verified"] = user["email"], True
                return info

        server.register_grant(CodeGrant, [CodeChallenge(required=True), IdToken(require_nonce=True)])

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify({
                "issuer": provider.issuer,
                "authorization_endpoint": provider.issuer + "/authorize",
                "token_endpoint": provider.issuer + "/token",
                "jwks_uri": provider.issuer + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": sorted(SCOPES),
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            })

        @app.get("/jwks")
        def jwks() -> Any:
            return jsonify({"keys": [provider.key.as_dict(private=False)]})

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Any:
            if request.method == "GET":
                try:
                    server.get_consent_grant(end_user=None)
                except Exception as exc:  # an invalid request is shown, not redirected
                    return f"invalid authorization request: {escape(str(exc))}", 400
                # The request's parameters travel in the action's query string (once: Authlib
                # refuses a parameter given twice).
                return (f'<!doctype html><title>Test IdP sign-in</title><form method="post" '
                        f'action="/authorize?{escape(request.query_string.decode())}">'
                        '<label>User <input name="username" id="username"></label>'
                        '<label>Password <input name="password" id="password" type="password"></label>'
                        '<button type="submit">Sign in at the provider</button></form>')
            user = provider.users.get(request.form.get("username", ""))
            if user is None or not secrets.compare_digest(user["password"], request.form.get("password", "")):
                return "wrong user or password", 401
            return server.create_authorization_response(grant_user=user)

        @app.post("/token")
        def token() -> Any:
            return server.create_token_response()

        return app
