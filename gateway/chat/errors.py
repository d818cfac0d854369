"""Errors of the chat service: one stable code per failure, shown the same way through RPC
(Centrifugo error ``code`` = HTTP status, ``message`` = ``"<code>: <text>"``) and through HTTP
(status + ``{"error": {"code", "message"}}``)."""

from __future__ import annotations


class ChatError(Exception):
    """A chat operation was refused; ``code`` is stable, ``message`` is for humans."""

    status = 400

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status


def bad_request(message: str) -> ChatError:
    return ChatError("bad_request", message, 400)


def unauthorized(message: str = "a valid bearer token is required") -> ChatError:
    return ChatError("unauthorized", message, 401)


def forbidden(message: str) -> ChatError:
    return ChatError("forbidden", message, 403)


def not_found(what: str) -> ChatError:
    # Private things a caller may not see answer exactly like missing ones: no existence leak.
    return ChatError("not_found", f"{what} not found", 404)


def conflict(code: str, message: str) -> ChatError:
    return ChatError(code, message, 409)
