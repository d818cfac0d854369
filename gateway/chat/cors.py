"""CORS for the /v1 API: only origins listed in ``http.cors_origins`` (none by default) may
call it from another site's pages. The chat extension's ``/v1/`` handler answers preflights
here before loading anything, and adds the headers to every answer for a listed origin."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from gateway.http import Answer, RequestHead

MAX_AGE = "600"
ALLOW_HEADERS = "Authorization, Content-Type, X-API-Key"
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"


def origin_listed(origin: str, origins: Sequence[str]) -> bool:
    """Whether ``origin`` matches one of the configured patterns (fnmatch, any case)."""
    origin = origin.lower()
    return any(fnmatch.fnmatchcase(origin, pattern.lower()) for pattern in origins)


def preflight(head: RequestHead, origins: Sequence[str]) -> Answer:
    """The answer to ``OPTIONS`` on a /v1 path: allowed for a listed origin, else 403
    without any Access-Control header (the browser then refuses the real request)."""
    origin = head.headers.get("origin")
    if origin is None or not origin_listed(origin, origins):
        return 403, b"", "text/plain; charset=utf-8", {"Vary": "Origin"}
    return 204, b"", "text/plain; charset=utf-8", {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Max-Age": MAX_AGE,
        "Vary": "Origin",
    }


def apply(head: RequestHead, answer: Answer, origins: Sequence[str]) -> Answer:
    """``answer`` with the CORS headers a listed origin needs to read it."""
    origin = head.headers.get("origin")
    if origin is None or not origins or not origin_listed(origin, origins):
        return answer
    extra = dict(answer[3]) if len(answer) == 4 else {}
    extra.update({"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                  "Vary": "Origin"})
    return answer[0], answer[1], answer[2], extra
