"""JWT verification: HMAC secret, RSA/ECDSA public keys, or a JWKS endpoint.

Returns the verified claim set; its meaning is centrifugo_bridge.tokens' job. Expired ->
``TokenExpired``; anything else wrong -> ``InvalidToken``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
from jwt import PyJWKClient

from centrifugo_bridge.tokens import InvalidToken, TokenExpired
from gateway.config import TokenSettings

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
        if settings.jwks_public_endpoint:
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
        s = self.settings
        # iat is not validated (as in Centrifugo OSS): a backend clock slightly ahead must
        # not get its fresh tokens refused with the terminal 3500.
        options: dict[str, Any] = {"verify_aud": bool(s.audience), "verify_iss": bool(s.issuer),
                                   "verify_iat": False, "require": []}
        try:
            claims = jwt.decode(token, key, algorithms=algs, audience=s.audience or None,
                                issuer=s.issuer or None, options=options, leeway=LEEWAY_SECONDS)
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            # Centrifugo's verifier folds "not valid yet" (nbf) into "expired" (109): the
            # SDK fetches a new token instead of giving up.
            raise TokenExpired() from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        except (TypeError, ValueError) as exc:
            # PyJWT's key preparation raises these when the key does not fit the token's
            # alg (e.g. an RS256 token naming a JWKS EC key's kid): an invalid token.
            raise InvalidToken(f"key does not fit the token: {exc}") from None
        if not isinstance(claims, dict):
            raise InvalidToken("claims must be an object")
        return claims


def sign_token(secret: str, claims: dict[str, Any], algorithm: str = "HS256") -> str:
    """Sign ``claims`` with an HMAC secret (used by ``sentchat token`` and tests)."""
    return jwt.encode(claims, secret, algorithm=algorithm)
