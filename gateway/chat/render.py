"""Message text processing done once at send/edit time: code snippets highlighted to HTML
(Pygments) and mentions extracted. Pure functions; the results are stored beside the text."""

from __future__ import annotations

import re
from typing import Any

# A fenced block: ```lang, then the code, then ``` alone on its line.
_FENCE = re.compile(r"^```[ \t]*([A-Za-z0-9_+#.-]*)[ \t]*\n(.*?)\n```[ \t]*$", re.S | re.M)
# @user (ids as in JWT `sub`: letters, digits, . _ - and @-free), @channel, @here.
_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][A-Za-z0-9._-]{0,63})")

MAX_SNIPPETS = 20


def render_snippets(text: str) -> list[dict[str, Any]]:
    """Every language-tagged fenced code block as ``{"lang", "code", "html"}``.

    Unknown (or missing) languages fall back to plain text, still HTML-escaped."""
    # Most messages have no fence: skip building a formatter (its style sheet alone costs
    # about half a millisecond) on every send.
    if "```" not in text:
        return []
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    out: list[dict[str, Any]] = []
    formatter = HtmlFormatter(nowrap=False, cssclass="highlight")
    for m in _FENCE.finditer(text):
        if len(out) >= MAX_SNIPPETS:
            break
        lang, code = m.group(1).lower(), m.group(2)
        try:
            lexer = get_lexer_by_name(lang) if lang else TextLexer()
            used = lang or "text"
        except ClassNotFound:
            lexer, used = TextLexer(), "text"
        out.append({"lang": used, "requested": lang, "code": code,
                    "html": highlight(code, lexer, formatter)})
    return out


def mentions(text: str) -> tuple[set[str], bool, bool]:
    """(mentioned user ids, @channel present, @here present), code blocks excluded."""
    plain = _FENCE.sub("", text)
    users: set[str] = set()
    channel = here = False
    for m in _MENTION.finditer(plain):
        name = m.group(1).rstrip(".")
        if name == "channel":
            channel = True
        elif name == "here":
            here = True
        else:
            users.add(name)
    return users, channel, here
