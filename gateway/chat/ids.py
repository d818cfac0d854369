"""What a chat user id is: one definition for the wire schema and for the connect-time check
(kept free of heavy imports: the chat extension loads lazily, this is read at connect)."""

from __future__ import annotations

import re

USER_ID_MAX = 64
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
_USER_ID = re.compile(USER_ID_PATTERN)


def user_id_problem(user: str) -> str | None:
    """Why ``user`` cannot be a chat user id, or None when it can."""
    if len(user) > USER_ID_MAX:
        return f"longer than {USER_ID_MAX} characters"
    if not _USER_ID.match(user):
        return "not a chat user id (letters, digits, . _ @ -, starting with a letter or digit)"
    return None
