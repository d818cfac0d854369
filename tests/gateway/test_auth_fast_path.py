"""The HMAC fast path of gateway/auth.py gives the same outcome as PyJWT for every token.

Each token is verified twice: by a TokenVerifier on an HMAC-only configuration (standard
library fast path, PyJWT only for what it does not accept) and by one forced through PyJWT.
Outcomes (claims, or the exception type and message) must be identical. A subprocess then
checks that an HMAC-only gateway node verifies tokens without importing `cryptography`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from centrifugo_bridge.tokens import InvalidToken, TokenExpired
from gateway.auth import TokenVerifier
from gateway.config import TokenSettings

SECRET = "fast-path-secret-0123456789abcdef0123"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make(claims: Any, header: Any = None, secret: str = SECRET, alg: str = "HS256",
         raw_claims: bytes | None = None) -> str:
    header = {"alg": alg, "typ": "JWT"} if header is None else header
    body = raw_claims if raw_claims is not None else json.dumps(claims).encode()
    signing = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(
        alg, hashlib.sha256)
    sig = hmac.new(secret.encode(), signing.encode(), digest).digest()
    return f"{signing}.{b64(sig)}"


def tokens() -> list[str]:
    now = int(time.time())
    good = make({"sub": "alice", "exp": now + 60})
    return [
        good,
        make({"sub": "alice"}),
        make({"sub": "alice", "exp": now + 60, "info": {"n": 1}}, alg="HS384"),
        make({"sub": "alice", "exp": now + 60}, alg="HS512"),
        make({"sub": "alice", "exp": now - 1}),
        make({"sub": "alice", "nbf": now + 100}),
        make({"sub": "alice", "nbf": now - 100, "exp": now + 100}),
        make({"sub": "alice", "exp": float(now + 60)}),
        make({"sub": "alice", "exp": str(now + 60)}),
        make({"sub": "alice", "exp": "soon"}),
        make({"sub": "alice", "exp": True}),
        make({"sub": "alice", "exp": None}),
        make({"sub": 42}),
        make({"sub": "alice", "jti": 7}),
        make({"sub": "alice", "aud": "somebody", "iss": "x"}),
        make({"sub": "alice", "iat": now + 1000}),
        make({"sub": "alice"}, secret="wrong-secret"),
        make({"sub": "alice"}, alg="RS256"),
        make({"sub": "alice"}, header={"alg": "HS256", "kid": 5}),
        make({"sub": "alice"}, header={"alg": "HS256", "kid": "k1"}),
        make({"sub": "alice"}, header={"typ": "JWT"}),
        make({"sub": "alice"}, header={"alg": "none"}),
        make({"sub": "alice"}, header=["alg"]),
        make(None, raw_claims=b"[1, 2]"),
        make(None, raw_claims=b"not json"),
        make(None, raw_claims=b'{"sub": "a", "sub": "b"}'),
        good + "=",
        good.replace(".", "..", 1),
        good.rsplit(".", 1)[0],
        "a.b.c",
        "!!!.???.***",
        "x",
        good[:-3] + "AAA",
    ]


def outcome(verifier: TokenVerifier, token: str) -> tuple[str, Any]:
    import asyncio

    try:
        return "claims", asyncio.run(verifier.verify(token))
    except (InvalidToken, TokenExpired) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("index", range(len(tokens())))
def test_fast_path_agrees_with_pyjwt(index: int) -> None:
    token = tokens()[index]
    fast = TokenVerifier(TokenSettings(hmac_secret_key=SECRET))
    assert fast._hmac_key is not None
    slow = TokenVerifier(TokenSettings(hmac_secret_key=SECRET))
    slow._hmac_key = None
    assert outcome(fast, token) == outcome(slow, token)


def test_hmac_only_node_does_not_import_cryptography() -> None:
    code = f"""
import asyncio, sys
from gateway.config import build_settings
from gateway.node import Node
import gateway.server, gateway.cli
settings = build_settings({{"client": {{"token": {{"hmac_secret_key": {SECRET!r}}}}}}})
node = Node(settings)
token = {make({"sub": "alice", "exp": int(time.time()) + 600})!r}
from gateway.auth import TokenVerifier
print(asyncio.run(TokenVerifier(settings.client.token).verify(token))["sub"])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("cryptography", "jwt")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "alice"
    assert lines[-1] == "[]"
