"""Slack's formats, as pure functions: request signatures, message timestamps, mrkdwn and
the Block Kit subset SENTchat accepts. No I/O here, so every rule is tested on its own.

Written from Slack's public documentation of the formats (see docs/integrations.md), not
from any SDK's code.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

SIGNATURE_VERSION = "v0"

# ---- request signatures ------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Slack-Signature`` of a request: ``v0=`` + hex HMAC-SHA256 over
    ``v0:<timestamp>:<raw body>`` keyed with the app's signing secret."""
    base = f"{SIGNATURE_VERSION}:{timestamp}:".encode() + body
    return f"{SIGNATURE_VERSION}=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The two headers an app checks on what SENTchat sends it."""
    ts = str(int(now if now is not None else time.time()))
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sign(secret, ts, body)}


def verify(secret: str, timestamp: str, signature: str, body: bytes, *, tolerance: float,
           now: float | None = None) -> bool:
    """Whether a signed request is fresh (``tolerance`` seconds either way: a replay of an
    old request fails) and its signature matches (compared in constant time)."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs((now if now is not None else time.time()) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


# ---- ids and timestamps -------------------------------------------------------------------

_TS = re.compile(r"^(\d{1,13})\.(\d{6})$")


def ts_of(message_id: int) -> str:
    """A message's Slack ``ts``: its SENTchat id written as ``<id // 10^6>.<id % 10^6>``
    (six digits after the point). Unique and ordered like Slack's, and reversible without a
    lookup; it is not a clock time (``event_ts`` / ``created_at`` carry that)."""
    return f"{message_id // 1_000_000}.{message_id % 1_000_000:06d}"


def message_id_of(ts: str) -> int | None:
    """The message id a ``ts`` names; None when it is not one of ours."""
    m = _TS.match(ts.strip())
    if m is None:
        return None
    value = int(m.group(1)) * 1_000_000 + int(m.group(2))
    return value if 1 <= value <= 2**62 else None


# ---- mrkdwn -----------------------------------------------------------------------------

_LINK = re.compile(r"<([^<>|\s]+)(?:\|([^<>]*))?>")


def mrkdwn_to_text(text: str) -> str:
    """Slack mrkdwn to SENTchat's message text (Markdown and ``@user`` mentions):
    ``<@U1>`` -> ``@U1``, ``<!channel>`` / ``<!here>`` -> ``@channel`` / ``@here``,
    ``<url|label>`` -> ``[label](url)``, ``*bold*`` -> ``**bold**``, ``~x~`` -> ``~~x~~``,
    and the three HTML entities Slack escapes (``&lt; &gt; &amp;``)."""

    def link(m: re.Match[str]) -> str:
        target, label = m.group(1), m.group(2)
        if target.startswith("@"):
            return "@" + target[1:]
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!"):
            word = target[1:].split("^")[0]
            return f"@{word}" if word in ("channel", "here", "everyone") else (label or "")
        return f"[{label}]({target})" if label else target

    out = _LINK.sub(link, text)
    # Single-star bold and single-tilde strike (leave ``**`` alone: already Markdown).
    out = re.sub(r"(?<![*\w])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![*\w])", r"**\1**", out)
    out = re.sub(r"(?<![~\w])~(?!\s)([^~\n]+?)(?<!\s)~(?![~\w])", r"~~\1~~", out)
    return out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# ---- Block Kit subset -------------------------------------------------------------------


class BlockError(ValueError):
    """A block is not one SENTchat accepts; the message names where and why."""


MAX_BLOCKS = 50
MAX_ELEMENTS = 25
MAX_TEXT = 3000
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
BLOCK_TYPES = ("section", "context", "divider", "actions", "image", "header")


def _text_object(value: Any, where: str, *, plain_only: bool = False) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") not in ("mrkdwn", "plain_text"):
        raise BlockError(f"{where}: a text object needs type mrkdwn or plain_text")
    if plain_only and value["type"] != "plain_text":
        raise BlockError(f"{where}: must be plain_text")
    text = value.get("text")
    if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
        raise BlockError(f"{where}.text: 1-{MAX_TEXT} characters")
    out: dict[str, Any] = {"type": value["type"], "text": text}
    if isinstance(value.get("emoji"), bool):
        out["emoji"] = value["emoji"]
    return out


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")) or len(value) > 3000:
        raise BlockError(f"{where}: an http(s) URL of at most 3000 characters")
    return value


def _element(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BlockError(f"{where}: an element object")
    kind = value.get("type")
    action_id = value.get("action_id")
    if kind in ("button", "static_select") and (not isinstance(action_id, str) or not _ID.match(action_id)):
        raise BlockError(f"{where}.action_id: 1-255 of letters, digits, _ . : -")
    if kind == "button":
        out: dict[str, Any] = {"type": "button", "action_id": action_id,
                               "text": _text_object(value.get("text"), f"{where}.text", plain_only=True)}
        if "value" in value:
            if not isinstance(value["value"], str) or len(value["value"]) > 2000:
                raise BlockError(f"{where}.value: a string of at most 2000 characters")
            out["value"] = value["value"]
        if "style" in value:
            if value["style"] not in ("primary", "danger"):
                raise BlockError(f"{where}.style: primary or danger")
            out["style"] = value["style"]
        if "url" in value:
            out["url"] = _url(value["url"], f"{where}.url")
        return out
    if kind == "static_select":
        options = value.get("options")
        if not isinstance(options, list) or not 1 <= len(options) <= 100:
            raise BlockError(f"{where}.options: 1-100 options")
        opts = []
        for i, o in enumerate(options):
            if not isinstance(o, dict) or not isinstance(o.get("value"), str) or len(o["value"]) > 150:
                raise BlockError(f"{where}.options[{i}]: text and a value of at most 150 characters")
            opts.append({"text": _text_object(o.get("text"), f"{where}.options[{i}].text", plain_only=True),
                         "value": o["value"]})
        out = {"type": "static_select", "action_id": action_id, "options": opts}
        if "placeholder" in value:
            out["placeholder"] = _text_object(value["placeholder"], f"{where}.placeholder", plain_only=True)
        return out
    if kind == "image":
        return {"type": "image", "image_url": _url(value.get("image_url"), f"{where}.image_url"),
                "alt_text": str(value.get("alt_text", ""))[:2000]}
    if kind in ("mrkdwn", "plain_text"):
        return _text_object(value, where)
    raise BlockError(f"{where}.type: one of button, static_select, image, mrkdwn, plain_text")


def validate_blocks(blocks: Any) -> list[dict[str, Any]]:
    """The blocks, normalised to the fields SENTchat keeps; BlockError otherwise.
    Supported: section (text, fields, accessory), context, divider, actions (buttons,
    static selects), image, header."""
    if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
        raise BlockError(f"blocks: a list of at most {MAX_BLOCKS}")
    out: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"blocks[{i}]"
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            raise BlockError(f"{where}.type: one of {', '.join(BLOCK_TYPES)}")
        kind = block["type"]
        b: dict[str, Any] = {"type": kind}
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or not _ID.match(block_id) or block_id in seen_ids:
                raise BlockError(f"{where}.block_id: unique, 1-255 of letters, digits, _ . : -")
            seen_ids.add(block_id)
            b["block_id"] = block_id
        if kind == "section":
            if "text" not in block and "fields" not in block:
                raise BlockError(f"{where}: a section needs text or fields")
            if "text" in block:
                b["text"] = _text_object(block["text"], f"{where}.text")
            if "fields" in block:
                fields = block["fields"]
                if not isinstance(fields, list) or len(fields) > 10:
                    raise BlockError(f"{where}.fields: at most 10 text objects")
                b["fields"] = [_text_object(f, f"{where}.fields[{j}]") for j, f in enumerate(fields)]
            if "accessory" in block:
                b["accessory"] = _element(block["accessory"], f"{where}.accessory")
        elif kind == "header":
            b["text"] = _text_object(block.get("text"), f"{where}.text", plain_only=True)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                raise BlockError(f"{where}.elements: 1-10 text or image elements")
            b["elements"] = [_element(e, f"{where}.elements[{j}]") for j, e in enumerate(elements)]
            if any(e["type"] not in ("mrkdwn", "plain_text", "image") for e in b["elements"]):
                raise BlockError(f"{where}.elements: only text and images in a context block")
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_ELEMENTS:
                raise BlockError(f"{where}.elements: 1-{MAX_ELEMENTS} buttons or selects")
            b["elements"] = [_element(e, f"{where}.elements[{j}]") for j, e in enumerate(elements)]
            if any(e["type"] not in ("button", "static_select") for e in b["elements"]):
                raise BlockError(f"{where}.elements: only buttons and static selects in an actions block")
        elif kind == "image":
            b["image_url"] = _url(block.get("image_url"), f"{where}.image_url")
            b["alt_text"] = str(block.get("alt_text", ""))[:2000]
            if "title" in block:
                b["title"] = _text_object(block["title"], f"{where}.title", plain_only=True)
        out.append(b)
    # Every block gets an id (Slack does the same), so a click can name its block.
    for i, b in enumerate(out):
        b.setdefault("block_id", f"b{i}")
    return out


def blocks_text(blocks: list[dict[str, Any]]) -> str:
    """A plain fallback text of blocks (notifications, search, clients without blocks)."""
    parts: list[str] = []
    for b in blocks:
        if isinstance(b.get("text"), dict):
            parts.append(b["text"]["text"])
        parts.extend(f["text"] for f in b.get("fields", []))
        parts.extend(e["text"] for e in b.get("elements", []) if e["type"] in ("mrkdwn", "plain_text"))
    return "\n".join(parts)


def find_action(blocks: list[dict[str, Any]], action_id: str, block_id: str | None) -> dict[str, Any] | None:
    """The interactive element ``action_id`` (in ``block_id`` when given), with its
    ``block_id``; None when the message has no such button or select."""
    for b in blocks:
        if block_id is not None and b.get("block_id") != block_id:
            continue
        candidates = list(b.get("elements", []))
        if "accessory" in b:
            candidates.append(b["accessory"])
        for e in candidates:
            if e.get("action_id") == action_id and e["type"] in ("button", "static_select"):
                return {**e, "block_id": b.get("block_id")}
    return None
