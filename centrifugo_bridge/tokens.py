"""Meaning of Centrifugo JWT claims, after the signature was verified elsewhere.

Signature, ``exp``, ``nbf``, ``aud`` and ``iss`` are checked by the verifier at the edge
(gateway/auth.py); here the verified claim set becomes typed credentials. Anything of the
wrong type is an invalid token (close 3500), exactly as Centrifugo's verifier refuses it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec
import orjson

__all__ = ["ConnectionCredentials", "InvalidToken", "SubscriptionGrant", "TokenExpired",
           "compact_json", "connection_credentials", "subscription_grant"]


class InvalidToken(Exception):
    """Signature, structure or claim types are wrong (disconnect 3500 / error 103)."""


class TokenExpired(Exception):
    """``exp`` is in the past (error 109)."""


class Override(msgspec.Struct, frozen=True):
    presence: bool | None = None
    join_leave: bool | None = None
    force_push_join_leave: bool | None = None
    force_recovery: bool | None = None
    force_positioning: bool | None = None


class ServerSub(msgspec.Struct, frozen=True):
    """Per-channel options of a server-side subscription (connection token `subs`)."""

    info: bytes = b""
    data: bytes = b""
    override: Override | None = None


class ConnectionCredentials(msgspec.Struct, frozen=True):
    user: str
    info: bytes = b""
    # Unix seconds when the connection expires; 0 = never.
    expire_at: int = 0
    channels: tuple[str, ...] = ()
    subs: dict[str, ServerSub] = {}
    meta: bytes = b""


class SubscriptionGrant(msgspec.Struct, frozen=True):
    user: str
    channel: str
    client: str = ""
    info: bytes = b""
    data: bytes = b""
    expire_at: int = 0
    override: Override | None = None


def compact_json(value: Any) -> bytes:
    """Encode an application JSON value compactly (no raw newlines: the JSON frame delimiter)."""
    return orjson.dumps(value)


def _payload(claims: dict[str, Any], name: str) -> bytes:
    if name in claims and claims[name] is not None:
        return compact_json(claims[name])
    b64 = claims.get("b64" + name)
    if b64:
        if not isinstance(b64, str):
            raise InvalidToken(f"b64{name} must be a string")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidToken(f"b64{name} is not valid base64") from None
    return b""


def _str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidToken(f"claim {name!r} must be a string")
    return value


def _expire_at(claims: dict[str, Any]) -> int:
    # expire_at decouples connection expiry from exp; present and 0 means "never".
    if "expire_at" in claims:
        value = claims["expire_at"]
        if value is None:
            return 0
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidToken("claim 'expire_at' must be a number")
        return int(value)
    exp = claims.get("exp")
    if exp is None:
        return 0
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise InvalidToken("claim 'exp' must be a number")
    return int(exp)


def _override(value: Any) -> Override | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidToken("override must be an object")
    fields: dict[str, bool] = {}
    for key, item in value.items():
        if key not in Override.__struct_fields__:
            continue
        if not isinstance(item, dict) or not isinstance(item.get("value"), bool):
            raise InvalidToken(f"override.{key} must be {{\"value\": bool}}")
        fields[key] = item["value"]
    return Override(**fields)


def connection_credentials(claims: dict[str, Any], user_claim: str = "sub") -> ConnectionCredentials:
    """Interpret a verified connection token."""
    if "channel" in claims:
        # A subscription token presented as a connection token.
        raise InvalidToken("connection token must not contain 'channel'")
    user = _str(claims, user_claim)
    channels = claims.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise InvalidToken("claim 'channels' must be a list of strings")
    raw_subs = claims.get("subs") or {}
    if not isinstance(raw_subs, dict):
        raise InvalidToken("claim 'subs' must be an object")
    subs: dict[str, ServerSub] = {}
    for channel, opts in raw_subs.items():
        if opts is None:
            opts = {}
        if not isinstance(opts, dict):
            raise InvalidToken("each 'subs' entry must be an object")
        subs[channel] = ServerSub(
            info=_payload(opts, "info"), data=_payload(opts, "data"),
            override=_override(opts.get("override")),
        )
    meta = claims.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidToken("claim 'meta' must be an object")
    return ConnectionCredentials(
        user=user,
        info=_payload(claims, "info"),
        expire_at=_expire_at(claims),
        channels=tuple(channels),
        subs=subs,
        meta=compact_json(meta) if meta is not None else b"",
    )


def subscription_grant(claims: dict[str, Any], user_claim: str = "sub") -> SubscriptionGrant:
    """Interpret a verified subscription token (``channel`` is required)."""
    channel = _str(claims, "channel")
    if not channel:
        raise InvalidToken("subscription token needs 'channel'")
    return SubscriptionGrant(
        user=_str(claims, user_claim),
        channel=channel,
        client=_str(claims, "client"),
        info=_payload(claims, "info"),
        data=_payload(claims, "data"),
        expire_at=_expire_at(claims),
        override=_override(claims.get("override")),
    )
