"""CORS for the /v1 API: only origins listed in ``http.cors_origins`` (none by default)
may call it from another site's pages. Preflights are answered here, before any route."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from gateway.http import Answer, RequestHead

if TYPE_CHECKING:
    from gateway.node import Node

MAX_AGE = "600"
ALLOW_HEADERS = "Authorization, Content-Type, X-API-Key"
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"


def _origins(node: Node) -> list[str]:
    return list(getattr(node.settings.http, "cors_origins", []) or [])


def origin_listed(origin: str, node: Node) -> bool:
    origin = origin.lower()
    return any(fnmatch.fnmatchcase(origin, pattern.lower()) for pattern in _origins(node))


def preflight(head: RequestHead, node: Node) -> Answer:
    """The answer to ``OPTIONS`` on a /v1 path: allowed for a listed origin, else 403
    without any Access-Control header (the browser then refuses the real request)."""
    origin = head.headers.get("origin")
    if origin is None or not origin_listed(origin, node):
        return 403, b"", "text/plain; charset=utf-8", {"Vary": "Origin"}
    return 204, b"", "text/plain; charset=utf-8", {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Max-Age": MAX_AGE,
        "Vary": "Origin",
    }


def apply(head: RequestHead, answer: Answer, node: Node) -> Answer:
    """``answer`` with the CORS headers a listed origin needs to read it."""
    origin = head.headers.get("origin")
    if origin is None or not _origins(node) or not origin_listed(origin, node):
        return answer
    extra = dict(answer[3]) if len(answer) == 4 else {}  # type: ignore[misc]
    extra.update({"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                  "Vary": "Origin"})
    return answer[0], answer[1], answer[2], extra
