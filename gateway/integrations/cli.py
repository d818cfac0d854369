"""`sentchat apps ...`: manage apps from the command line through the running gateway's
HTTP API (``/v1/apps``, the API key), so the CLI and the API can never disagree.

    sentchat apps create --name Ticketing --channel c123 --command /ticket --commands-url URL
    sentchat apps list | show ID | enable ID | disable ID | rotate-token ID
    sentchat apps update ID [--commands-url URL] [--interactivity-url URL] [--events-url URL] ...
    sentchat apps hook ID --channel c123
    sentchat apps outbox ID [--state dead|pending|delivered] | sentchat apps retry ID
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    if not args.url.startswith(("http://", "https://")):
        raise SystemExit("sentchat apps: --url must be http(s)://...")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method,  # noqa: S310 - scheme checked
                                 headers={"X-API-Key": args.api_key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - scheme checked above
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for field in ("commands_url", "interactivity_url", "events_url", "click_policy"):
        value = getattr(args, field, None)
        if value is not None:
            spec[field] = value
    if getattr(args, "channel", None):
        spec["channels"] = args.channel
    if getattr(args, "event", None):
        spec["events"] = args.event
    if getattr(args, "command", None):
        spec["commands"] = [{"command": c} for c in args.command]
    return spec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sentchat apps", description="manage integration apps")
    p.add_argument("--url", default=os.environ.get("SENTCHAT_URL", "http://127.0.0.1:8000"),
                   help="the gateway (env SENTCHAT_URL)")
    p.add_argument("--api-key", default=os.environ.get("SENTCHAT_API_KEY", ""),
                   help="the server API key (env SENTCHAT_API_KEY)")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    for name in ("show", "enable", "disable", "rotate-token", "retry"):
        sub.add_parser(name).add_argument("app_id")
    for name in ("create", "update"):
        c = sub.add_parser(name)
        if name == "create":
            c.add_argument("--name", required=True)
        else:
            c.add_argument("app_id")
        c.add_argument("--channel", action="append", help="a channel the bot may post to (repeat)")
        c.add_argument("--command", action="append", help="a slash command it serves (repeat)")
        c.add_argument("--event", action="append", help="an event type it receives (repeat)")
        c.add_argument("--commands-url", dest="commands_url")
        c.add_argument("--interactivity-url", dest="interactivity_url")
        c.add_argument("--events-url", dest="events_url")
        c.add_argument("--click-policy", dest="click_policy", choices=["members", "admins"])
    h = sub.add_parser("hook")
    h.add_argument("app_id")
    h.add_argument("--channel", required=True)
    o = sub.add_parser("outbox")
    o.add_argument("app_id")
    o.add_argument("--state", default="dead", choices=["dead", "pending", "delivered"])
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not args.api_key:
        print("sentchat apps: the API key is needed (--api-key or SENTCHAT_API_KEY)", file=sys.stderr)
        return 2
    a = args.action
    if a == "list":
        status, body = _request(args, "GET", "/v1/apps")
    elif a == "show":
        status, body = _request(args, "GET", f"/v1/apps/{args.app_id}")
    elif a in ("enable", "disable"):
        status, body = _request(args, "PATCH", f"/v1/apps/{args.app_id}", {"enabled": a == "enable"})
    elif a == "rotate-token":
        status, body = _request(args, "POST", f"/v1/apps/{args.app_id}/token")
    elif a == "retry":
        status, body = _request(args, "POST", f"/v1/apps/{args.app_id}/outbox/retry")
    elif a == "create":
        status, body = _request(args, "POST", "/v1/apps", {"name": args.name, **_spec(args)})
    elif a == "update":
        status, body = _request(args, "PATCH", f"/v1/apps/{args.app_id}", _spec(args))
    elif a == "hook":
        status, body = _request(args, "POST", f"/v1/apps/{args.app_id}/hooks", {"channel_id": args.channel})
    else:
        status, body = _request(args, "GET", f"/v1/apps/{args.app_id}/outbox?state={args.state}")
    print(json.dumps(body, indent=2, ensure_ascii=False))
    if status >= 400:
        return 1
    if a in ("create", "rotate-token"):
        print("Keep the bot token (and the signing secret): they are not shown again.", file=sys.stderr)
    return 0


class _Command:
    help = "manage integration apps (bots, webhooks, slash commands) through the HTTP API"

    @staticmethod
    def run(argv: list[str]) -> int:
        return run(argv)


command = _Command()
