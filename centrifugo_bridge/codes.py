"""Error, unsubscribe and disconnect codes of the Centrifugo protocol (centrifuge errors.go,
disconnect.go, unsubscribe.go). Values and messages are part of the wire contract."""

from __future__ import annotations

import msgspec

from centrifugo_bridge.protocol import Error


class ClientError(Exception):
    """A command failed; the reply carries ``error`` and the connection stays open."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.temporary = temporary

    def to_wire(self) -> Error:
        return Error(code=self.code, message=self.message, temporary=self.temporary)


class Disconnect(msgspec.Struct, frozen=True):
    """Close the connection with a WebSocket close code and a plain-text reason."""

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        """What the official SDKs do with this code (terminal iff 3500-3999 or 4500-4999)."""
        return not (3500 <= self.code < 4000 or 4500 <= self.code < 5000)


class DisconnectError(Exception):
    """Raised inside command handling to end the connection."""

    def __init__(self, disconnect: Disconnect) -> None:
        super().__init__(f"{disconnect.code}: {disconnect.reason}")
        self.disconnect = disconnect


def _e(code: int, message: str, temporary: bool = False) -> tuple[int, str, bool]:
    return (code, message, temporary)


INTERNAL = _e(100, "internal server error", True)
UNAUTHORIZED = _e(101, "unauthorized")
UNKNOWN_CHANNEL = _e(102, "unknown channel")
PERMISSION_DENIED = _e(103, "permission denied")
METHOD_NOT_FOUND = _e(104, "method not found")
ALREADY_SUBSCRIBED = _e(105, "already subscribed")
LIMIT_EXCEEDED = _e(106, "limit exceeded")
BAD_REQUEST = _e(107, "bad request")
NOT_AVAILABLE = _e(108, "not available")
TOKEN_EXPIRED = _e(109, "token expired")
EXPIRED = _e(110, "expired")
TOO_MANY_REQUESTS = _e(111, "too many requests", True)
UNRECOVERABLE_POSITION = _e(112, "unrecoverable position")


def error(spec: tuple[int, str, bool]) -> ClientError:
    """Build a raisable ClientError from one of the constants above."""
    return ClientError(*spec)


# Unsubscribe push codes: < 2500 the SDK stays unsubscribed, >= 2500 it resubscribes.
UNSUBSCRIBE_SERVER = (2000, "server unsubscribe")
UNSUBSCRIBE_INSUFFICIENT_STATE = (2500, "insufficient state")
UNSUBSCRIBE_EXPIRED = (2501, "subscription expired")

# Disconnect codes (WebSocket close code + reason).
CONNECTION_CLOSED = Disconnect(3000, "connection closed")
SHUTDOWN = Disconnect(3001, "shutdown")
SERVER_ERROR = Disconnect(3004, "internal server error")
CONNECTION_EXPIRED = Disconnect(3005, "connection expired")
SUBSCRIPTION_EXPIRED = Disconnect(3006, "subscription expired")
SLOW = Disconnect(3008, "slow")
WRITE_ERROR = Disconnect(3009, "write error")
INSUFFICIENT_STATE = Disconnect(3010, "insufficient state")
FORCE_RECONNECT = Disconnect(3011, "force reconnect")
NO_PONG = Disconnect(3012, "no pong")
TOO_MANY_REQUESTS_DISCONNECT = Disconnect(3013, "too many requests")
INVALID_TOKEN = Disconnect(3500, "invalid token")
BAD_REQUEST_DISCONNECT = Disconnect(3501, "bad request")
STALE = Disconnect(3502, "stale")
FORCE_DISCONNECT = Disconnect(3503, "force disconnect")
CONNECTION_LIMIT = Disconnect(3504, "connection limit")
CHANNEL_LIMIT = Disconnect(3505, "channel limit")
INAPPROPRIATE_PROTOCOL = Disconnect(3506, "inappropriate protocol")
PERMISSION_DENIED_DISCONNECT = Disconnect(3507, "permission denied")
NOT_AVAILABLE_DISCONNECT = Disconnect(3508, "not available")
TOO_MANY_ERRORS = Disconnect(3509, "too many errors")
