"""``sentchat users add|disable|enable``: local accounts, through the running gateway's
admin API (``/v1/admin/accounts/...`` with the API key), so they work whatever database
the gateway uses — the embedded one included, which only the gateway process may open."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    users = sub.add_parser("users", help="local accounts: invite, disable, enable")
    users_sub = users.add_subparsers(dest="users_command", required=True)

    def target(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument("--url", help="the running gateway (default http://<http.host>:<http.port>); "
                       "the invitation link points there too")

    add = users_sub.add_parser("add", help="create a user and print a one-time invitation link")
    target(add)
    add.add_argument("user_id", metavar="ID")
    add.add_argument("--name", required=True, help="display name")
    add.add_argument("--email", help="e-mail address (sign-in by e-mail; stored encrypted)")
    add.add_argument("--admin", action="store_true", help="workspace admin")
    add.set_defaults(func=cmd_users)
    for name, text in (("disable", "refuse sign-in, revoke sessions, disconnect now"),
                       ("enable", "allow sign-in again")):
        p = users_sub.add_parser(name, help=text)
        target(p)
        p.add_argument("user_id", metavar="ID")
        p.set_defaults(func=cmd_users)


def cmd_users(args: argparse.Namespace) -> int:
    from gateway.cli import resolve_settings
    from gateway.config import ConfigError

    try:
        settings, _ = resolve_settings(args)
    except ConfigError as exc:
        print(f"sentchat: {exc}", file=sys.stderr)
        return 2
    host = settings.http.host if settings.http.host not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104
    base = (args.url or f"http://{host}:{settings.http.port}").rstrip("/")
    body: dict[str, Any] = {}
    if args.users_command == "add":
        body = {"display_name": args.name, "admin": args.admin}
        if args.email:
            body["email"] = args.email
    url = f"{base}/v1/admin/accounts/{quote(args.user_id, safe='')}/{'invite' if args.users_command == 'add' else args.users_command}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",  # noqa: S310 - http(s) URL built above
                                 headers={"Content-Type": "application/json", "X-API-Key": settings.http_api.key})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            result = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        print(f"sentchat: {exc.code}: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"sentchat: cannot reach the gateway at {base} ({exc}); is `sentchat serve` running?",
              file=sys.stderr)
        return 1
    if args.users_command == "add":
        days = result["expires_in"] // 86400
        print(f"{base}/#/invite?token={result['token']}")
        print(f"(one-time link for {args.user_id}, valid {days} days: open it to set a password)", file=sys.stderr)
    else:
        print(f"{args.user_id}: {args.users_command}d")
    return 0
