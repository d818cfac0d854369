"""What the client processes, the publisher and the report share: channel and user names,
the targets, the gateway configuration the bench starts SENTchat with, the clients' tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

GROUP_PREFIX = "group:g-"
PERSONAL_PREFIX = "personal:#"
USER_PREFIX = "bench-"
GROUP_PREFIX_B = GROUP_PREFIX.encode()
PERSONAL_PREFIX_B = (PERSONAL_PREFIX + USER_PREFIX).encode()
# A process here cannot hold 20,000 sockets (machine-facts.md): leave room for the rest.
SOCKETS_PER_PROCESS = 19_000
# Latency over time and per-phase figures are kept per window of this many seconds.
WINDOW_S = 1.0
# Targets of the load-suite issue (this 2-core machine).
TARGET_P95_MS = 50.0
TARGET_DELIVERIES = 50_000
TARGET_CONNECTIONS = 50_000
TARGET_REF_SHARE = 0.60
TARGET_IDLE_KB = 15.0
TARGET_FRESH_MB = 40.0

# The gateway configuration the bench starts SENTchat with (and an external gateway needs:
# `sentchat bench saturate --print-config`): group channels with history in the broker and
# personal channels as server-side subscriptions; no presence or join/leave, whose cost per
# subscribe is not what this measures.
SATURATE_CONFIG = """# written by `sentchat bench saturate` (bench/saturate.py)
[client]
ping_interval = "25s"
pong_timeout = "8s"
subscribe_to_user_personal_channel = true
personal_channel_namespace = "personal"

[[channel.namespaces]]
name = "group"
history_size = 100
history_ttl = "300s"
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "personal"
history_size = 100
history_ttl = "300s"
allow_user_limited_channels = true
"""


def group_channel(g: int) -> str:
    return f"{GROUP_PREFIX}{g}"


def personal_channel(user: int) -> str:
    return f"{PERSONAL_PREFIX}{USER_PREFIX}{user}"


def hs256(secret: str, claims: dict[str, Any]) -> str:
    """A connection JWT signed with HS256 (standard library: no PyJWT in 50k-token loops)."""
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(orjson.dumps(claims))
    return (signing + b"." + b64(hmac.new(secret.encode(), signing, hashlib.sha256).digest())).decode()
