"""JWT verification: HMAC secret, RSA/ECDSA public keys, or a JWKS endpoint.

Returns the verified claim set; its meaning is centrifugo_bridge.tokens' job. Expired ->
``TokenExpired``; anything else wrong -> ``InvalidToken``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from typing import TYPE_CHECKING, Any

from centrifugo_bridge.tokens import InvalidToken, TokenExpired
from gateway.config import TokenSettings

if TYPE_CHECKING:
    from jwt import PyJWKClient
    from jwt.types import Options

__all__ = ["TokenVerifier"]

HMAC_ALGS = ["HS256", "HS384", "HS512"]
RSA_ALGS = ["RS256", "RS384", "RS512"]
EC_ALGS = ["ES256", "ES384", "ES512"]
JWKS_ALGS = RSA_ALGS + EC_ALGS + ["PS256", "PS384", "PS512", "EdDSA"]
# Tokens are small; a huge one is an attack on the parser, not a credential.
MAX_TOKEN_LENGTH = 16384
# Clock skew tolerated on exp/nbf.
LEEWAY_SECONDS = 0


class TokenVerifier:
    """Verifies connection and subscription JWTs with one key configuration."""

    def __init__(self, settings: TokenSettings) -> None:
        self.settings = settings
        self._keys: list[tuple[list[str], Any]] = []
        if settings.hmac_secret_key:
            self._keys.append((HMAC_ALGS, settings.hmac_secret_key))
        if settings.rsa_public_key:
            self._keys.append((RSA_ALGS, settings.rsa_public_key))
        if settings.ecdsa_public_key:
            self._keys.append((EC_ALGS, settings.ecdsa_public_key))
        self._jwks: PyJWKClient | None = None
        # The common configuration (only an HMAC secret, no aud/iss) verifies HS256/384/512
        # tokens with the standard library: importing PyJWT loads `cryptography` (~9 MiB RSS
        # in every worker). Anything else — and every token the fast path does not accept —
        # goes through PyJWT, so outcomes and error messages stay PyJWT's.
        self._hmac_key: bytes | None = None
        if (settings.hmac_secret_key and not (settings.rsa_public_key or settings.ecdsa_public_key
                                              or settings.jwks_public_endpoint
                                              or settings.audience or settings.issuer)):
            key = settings.hmac_secret_key.encode()
            if not (key.startswith((b"-----BEGIN", b"ssh-", b"ecdsa-sha2-")) or b"PRIVATE KEY" in key):
                self._hmac_key = key
        if settings.jwks_public_endpoint:
            from jwt import PyJWKClient

            self._jwks = PyJWKClient(
                # No per-kid key cache: PyJWT's never expires, so a key removed from the
                # set would stay trusted; the key *set* is cached for jwks_cache_ttl.
                settings.jwks_public_endpoint, cache_keys=False,
                lifespan=int(max(1, settings.jwks_cache_ttl)), timeout=5)
        self._jwks_fetched_at = 0.0

    @property
    def configured(self) -> bool:
        return bool(self._keys or self._jwks)

    async def verify(self, token: str) -> dict[str, Any]:
        """Verify signature and registered claims; return the claims."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token missing or too long")
        if self._hmac_key is not None:
            claims = _hmac_fast_path(token, self._hmac_key)
            if claims is not None:
                return claims
        import jwt

        if self._jwks is not None:
            # With JWKS configured the static keys are not used (as in Centrifugo).
            try:
                # PyJWKClient fetches with urllib (blocking): keep it off the event loop.
                key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientError as exc:
                raise InvalidToken(f"no key for token: {exc}") from None
            except jwt.PyJWTError as exc:
                raise InvalidToken(str(exc)) from None
            self._jwks_fetched_at = time.time()
            return self._decode(token, key.key, JWKS_ALGS)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        alg = header.get("alg")
        for algs, key in self._keys:
            if alg in algs:
                return self._decode(token, key, algs)
        raise InvalidToken(f"algorithm {alg!r} not configured")

    def _decode(self, token: str, key: Any, algs: list[str]) -> dict[str, Any]:
        import jwt

        s = self.settings
        # iat is not validated (as in Centrifugo OSS): a backend clock slightly ahead must
        # not get its fresh tokens refused with the terminal 3500.
        options: Options = {"verify_aud": bool(s.audience), "verify_iss": bool(s.issuer),
                                   "verify_iat": False, "require": []}
        try:
            claims = jwt.decode(token, key, algorithms=algs, audience=s.audience or None,
                                issuer=s.issuer or None, options=options, leeway=LEEWAY_SECONDS)
        except jwt.ExpiredSignatureError:
            raise TokenExpired("expired (exp)") from None
        except jwt.ImmatureSignatureError:
            # Centrifugo's verifier folds "not valid yet" (nbf) into "expired" (109): the
            # SDK fetches a new token instead of giving up. The log still tells them apart.
            raise TokenExpired("not valid yet (nbf in the future)") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        except (TypeError, ValueError) as exc:
            # PyJWT's key preparation raises these when the key does not fit the token's
            # alg (e.g. an RS256 token naming a JWKS EC key's kid): an invalid token.
            raise InvalidToken(f"key does not fit the token: {exc}") from None
        if not isinstance(claims, dict):
            raise InvalidToken("claims must be an object")
        return claims


_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")
_HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
# Claims whose checks the fast path makes itself (with the options _decode gives PyJWT);
# a token with anything unusual in them is left to PyJWT.
_INT_CLAIMS = ("exp", "nbf")
_STR_CLAIMS = ("sub", "jti")


def _b64(segment: bytes) -> bytes | None:
    if len(segment) % 4 == 1 or not _SEGMENT.fullmatch(segment):
        return None
    return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))


def _hmac_fast_path(token: str, key: bytes) -> dict[str, Any] | None:
    """Claims of a well-formed, correctly signed HS256/384/512 token whose exp/nbf are
    integers; raises TokenExpired like PyJWT's exp/nbf checks; None for anything else (the
    caller then asks PyJWT, which accepts or names the problem)."""
    try:
        raw = token.encode("ascii")
        signing_input, _, crypto = raw.rpartition(b".")
        head_seg, dot, body_seg = signing_input.partition(b".")
        if not dot or b"." in body_seg:
            return None
        head_raw, body_raw, signature = _b64(head_seg), _b64(body_seg), _b64(crypto)
        if head_raw is None or body_raw is None or signature is None:
            return None
        header = json.loads(head_raw)
        if not isinstance(header, dict) or not set(header) <= {"alg", "typ"}:
            return None
        alg = header.get("alg")
        digest = _HMAC_DIGESTS.get(alg) if isinstance(alg, str) else None
        if digest is None or not hmac.compare_digest(hmac.new(key, signing_input, digest).digest(),
                                                     signature):
            return None
        claims = json.loads(body_raw)
    except (UnicodeError, ValueError, RecursionError, TypeError):
        return None
    if not isinstance(claims, dict):
        return None
    for name in _INT_CLAIMS:
        if name in claims and (type(claims[name]) is not int):
            return None
    for name in _STR_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            return None
    now = time.time()
    if "exp" in claims and claims["exp"] <= now - LEEWAY_SECONDS:
        raise TokenExpired("expired (exp)")
    if "nbf" in claims and claims["nbf"] > now + LEEWAY_SECONDS:
        # Centrifugo folds "not valid yet" into "expired" (109), as _decode does.
        raise TokenExpired("not valid yet (nbf in the future)")
    return claims


def sign_token(secret: str, claims: dict[str, Any], algorithm: str = "HS256") -> str:
    """Sign ``claims`` with an HMAC secret (used by ``sentchat token`` and tests)."""
    import jwt

    return jwt.encode(claims, secret, algorithm=algorithm)
