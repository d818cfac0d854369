"""What a chat user id is: one definition for the wire schema and for the connect-time check
(kept free of heavy imports: the chat extension loads lazily, this is read at connect)."""

from __future__ import annotations

import re

USER_ID_MAX = 64
# `(?![\s\S])` ends the string for real: `$` also matches before a final newline, and
# "alice\n" would be a second user who looks like alice. (`\Z` would do in Python, but the
# pattern is also published in the OpenAPI document, read by ECMAScript regex engines.)
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*(?![\s\S])"
_USER_ID = re.compile(USER_ID_PATTERN)


def user_id_problem(user: str) -> str | None:
    """Why ``user`` cannot be a chat user id, or None when it can."""
    if len(user) > USER_ID_MAX:
        return f"longer than {USER_ID_MAX} characters"
    if not _USER_ID.fullmatch(user):
        return "not a chat user id (letters, digits, . _ @ -, starting with a letter or digit)"
    return None
