"""The `sentchat` command: serve, migrate, token, audit verify."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.commands import MISSING_HINTS, PluginCommand
from gateway.commands import discover as discover_commands
from gateway.config import ConfigError, Settings, load_settings

log = logging.getLogger("sentchat")

DEFAULT_CONFIG = Path(__file__).with_name("defaults.toml")


def _generated_secrets(directory: Path) -> dict[str, str]:
    """Secrets generated on first start when none are configured, kept 0600 in the data dir
    so `sentchat token` signs with the same key the server verifies."""
    path = directory / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    values = {"hmac_secret_key": secrets.token_urlsafe(32), "api_key": secrets.token_urlsafe(24),
              CHAT_KEY_FIELD: _new_chat_key()}
    tmp = directory / f".secrets.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)
    try:
        # Published complete and at most once: a concurrent first start (serve + token)
        # neither crashes on the existing file nor reads it half-written; it uses the winner's.
        os.link(tmp, path)
    except FileExistsError:
        return json.loads(path.read_text())
    finally:
        tmp.unlink()
    return values


CHAT_KEY_FIELD = "chat_encryption_key"
"""secrets.json field of the generated chat encryption key."""

GENERATED_CHAT_KEY_ID = "generated"
"""Key id of the generated chat encryption key: to configure keys later, copy it into
[chat] encryption_keys under this id, so values encrypted with it still decrypt."""


def _new_chat_key() -> str:
    # Base64 of 32 random bytes: an AES-256 key as [chat] encryption_keys expects it.
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _generated_chat_key(directory: Path) -> str:
    """The generated chat encryption key of ``directory``'s secrets.json, added to a
    secrets.json written before chat existed (once: under an exclusive lock, re-read
    after locking, replaced atomically so readers see the old or the new file whole)."""
    import fcntl

    values = _generated_secrets(directory)
    if CHAT_KEY_FIELD in values:
        return str(values[CHAT_KEY_FIELD])
    path = directory / "secrets.json"
    with open(path, "rb") as locked:
        fcntl.flock(locked, fcntl.LOCK_EX)
        # The path may already name a newer file written by whoever held the lock before.
        values = json.loads(path.read_text())
        if CHAT_KEY_FIELD not in values:
            values[CHAT_KEY_FIELD] = _new_chat_key()
            tmp = directory / f".secrets.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(values, fh)
            os.replace(tmp, path)
    return str(values[CHAT_KEY_FIELD])


def ensure_chat_key(settings: Settings) -> str | None:
    """Without configured [chat] encryption keys, use the key generated into the data
    dir's secrets.json (0600) — every process on that data dir gets the same one. Returns
    the warning to log then, else None. The key itself is never logged."""
    chat = settings.chat
    if chat.encryption_keys:
        return None
    directory = Path(settings.storage.data_dir)
    chat.encryption_keys = {GENERATED_CHAT_KEY_ID: _generated_chat_key(directory)}
    chat.encryption_key_id = GENERATED_CHAT_KEY_ID
    return (f"no chat encryption key configured: using the generated key "
            f"'{GENERATED_CHAT_KEY_ID}' in {directory / 'secrets.json'} (keep it: encrypted "
            "chat fields cannot be read without it)")


def resolve_settings(args: argparse.Namespace, generate: bool = True) -> tuple[Settings, list[str]]:
    """Settings from the config, environment and flags. Missing secrets are generated into
    the data dir's secrets.json (``generate``) or, for commands that must sign with the
    server's own key rather than a new one, refused with a message saying where they were
    looked for."""
    overrides: dict[tuple[str, ...], Any] = {}
    if getattr(args, "host", None):
        overrides[("http", "host")] = args.host
    if getattr(args, "port", None):
        overrides[("http", "port")] = args.port
    if getattr(args, "workers", None):
        overrides[("node", "workers")] = args.workers
    if getattr(args, "dsn", None):
        overrides[("storage", "postgres_dsn")] = args.dsn
    config = args.config or os.environ.get("SENTCHAT_CONFIG")
    centrifugo = getattr(args, "centrifugo_config", None)
    if config is None and centrifugo is None:
        config = str(DEFAULT_CONFIG)
    settings, warnings = load_settings(config, centrifugo=centrifugo, overrides=overrides)
    token = settings.client.token
    if not (token.hmac_secret_key or token.rsa_public_key or token.ecdsa_public_key
            or token.jwks_public_endpoint) or (not settings.http_api.key and not settings.http_api.insecure):
        path = Path(settings.storage.data_dir) / "secrets.json"
        if not generate and not path.exists():
            if not (token.hmac_secret_key or token.rsa_public_key or token.ecdsa_public_key
                    or token.jwks_public_endpoint):
                raise ConfigError(
                    f"config key client.token.hmac_secret_key: not set, and no secrets generated "
                    f"by a server in {path.resolve()} — run this where the server runs, point "
                    f"SENTCHAT_DATA_DIR at the server's data directory, or set "
                    f"SENTCHAT_TOKEN_HMAC_SECRET to the server's secret")
            return settings, warnings
        generated = _generated_secrets(Path(settings.storage.data_dir))
        if not (token.hmac_secret_key or token.rsa_public_key or token.ecdsa_public_key
                or token.jwks_public_endpoint):
            token.hmac_secret_key = generated["hmac_secret_key"]
            warnings.append(f"no token key configured: using the generated HMAC secret in {Path(settings.storage.data_dir) / 'secrets.json'}")
        if not settings.http_api.key and not settings.http_api.insecure:
            settings.http_api.key = generated["api_key"]
            warnings.append(f"no API key configured: using the generated key in {Path(settings.storage.data_dir) / 'secrets.json'}")
    # Only where the chat product runs: a plain gateway needs no key and writes none.
    if settings.chat.enabled and generate:
        warning = ensure_chat_key(settings)
        if warning:
            warnings.append(warning)
    return settings, warnings


@contextlib.asynccontextmanager
async def postgres_for(settings: Settings) -> AsyncIterator[None]:
    """Make ``settings.storage.postgres_dsn`` usable: the configured server, or — when none
    is configured and a namespace is durable — an embedded PostgreSQL under the data dir,
    stopped again on exit."""
    from storage.embedded import postgres_unless_configured

    async with postgres_unless_configured(settings.storage.postgres_dsn, settings.durable,
                                          settings.storage.data_dir) as dsn:
        settings.storage.postgres_dsn = dsn
        yield


def _settle_memory() -> None:
    """After start-up: collect what imports and configuration left behind, keep the
    long-lived objects out of future collections (gc.freeze), and hand freed heap pages back
    to the OS (glibc keeps them otherwise) — ~2 MB less RSS for an idle worker."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    gc.freeze()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


async def _serve(settings: Settings, reuse_port: bool = False) -> None:
    import gc

    from gateway.compose import build_node
    from gateway.server import serve

    # An automatic full collection walks every live connection's objects: with thousands
    # of them it freezes the loop for hundreds of ms. Collect young objects far less often.
    gc.set_threshold(50_000, 50, 100)

    async with postgres_for(settings):
        node = build_node(settings)
        await node.start()
        server = await serve(node, settings.http.host, settings.http.port,
                             backlog=settings.http.backlog, reuse_port=reuse_port)
        log.info("sentchat %s listening on http://%s:%d (websocket /connection/websocket)",
                 __version__, settings.http.host, settings.http.port)
        from gateway import cluster_view

        siblings = cluster_view.from_env()
        if siblings is not None:
            # A worker of `--workers N`: a private loopback port its siblings ask for this
            # worker's own /metrics and /health, so any worker can answer with totals.
            private = await serve(node, "127.0.0.1", 0)
            siblings.publish_port(private.sockets[0].getsockname()[1])
            cluster_view.enable(siblings)
        _settle_memory()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        server.close()
        await node.stop()
        await server.wait_closed()


async def _migrate(settings: Settings) -> list[str]:
    from storage.migrate import migrate
    from storage.search import SearchIndexer

    async def job(conn: Any) -> list[str]:
        applied = await migrate(conn)
        # Messages written before search existed: their vectors in batches and the search
        # indexes built concurrently, saying how far it got (docs/search.md).
        await SearchIndexer(conn, progress=lambda line: print(line, flush=True)).run()
        return applied

    return await _on_database(settings, "nothing to migrate", job)


async def _on_database(settings: Settings, missing: str, job: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``job(connection)`` on the configured (or embedded) PostgreSQL."""
    import asyncpg

    async with postgres_for(settings):
        if not settings.storage.postgres_dsn:
            raise ConfigError(f"config key storage.postgres_dsn: {missing} (no DSN "
                              "and no durable namespace)")
        conn = await asyncpg.connect(settings.storage.postgres_dsn)
        try:
            return await job(conn)
        finally:
            await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    try:
        settings, _ = resolve_settings(args)
        applied = asyncio.run(_migrate(settings))
    except ConfigError as exc:
        print(f"sentchat: {exc}", file=sys.stderr)
        return 2
    print("applied: " + ", ".join(applied) if applied else "database schema is up to date")
    return 0


async def _audit_verify(settings: Settings) -> Any:

    from storage.audit import verify

    return await _on_database(settings, "no database to verify", verify)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """`sentchat audit verify`: 0 when the chain is intact, 1 when broken, 2 when it
    cannot be checked (configuration, no audit table)."""
    import asyncpg

    try:
        settings, _ = resolve_settings(args)
        result = asyncio.run(_audit_verify(settings))
    except ConfigError as exc:
        print(f"sentchat: {exc}", file=sys.stderr)
        return 2
    except asyncpg.UndefinedTableError:
        print("sentchat: no audit log in this database (run `sentchat migrate` first)",
              file=sys.stderr)
        return 2
    if result.ok:
        print(f"audit chain OK: {result.checked} records (head hash {result.head_hash})")
        return 0
    print(f"audit chain BROKEN at record {result.first_bad_id}: {result.reason} "
          f"({result.checked} records verified before it)")
    return 1


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings, warnings = resolve_settings(args)
    except ConfigError as exc:
        print(f"sentchat: {exc}", file=sys.stderr)
        return 2
    for w in warnings:
        log.warning("%s", w)
    if not args.reuse_port:
        # Before anything starts (the embedded PostgreSQL, Valkey, workers): a port in use
        # is one line, not a traceback after a database came up for nothing.
        problem = _port_problem(settings.http.host, settings.http.port)
        if problem is not None:
            print(f"sentchat: {problem}", file=sys.stderr)
            return 2
    if settings.node.workers > 1:
        from gateway.workers import supervise

        passthrough: list[str] = []
        for flag, value in (("--config", args.config), ("--centrifugo-config", args.centrifugo_config),
                            ("--host", args.host), ("--port", args.port), ("--log-level", args.log_level)):
            if value:
                passthrough += [flag, str(value)]
        return asyncio.run(supervise(settings, passthrough))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; only on odd platforms
        asyncio.run(_serve(settings, args.reuse_port))
    else:
        uvloop.run(_serve(settings, args.reuse_port))
    return 0


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, in one line an operator can act on; None
    when it can (bound with SO_REUSEADDR, as the server binds, then released)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"config key http.host: cannot resolve {host!r} ({exc.strerror})"
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (f"port {port} on {host} is already in use (another sentchat or "
                            f"program listens there): stop it, or choose another port with "
                            f"--port / SENTCHAT_HTTP_PORT / http.port")
                return f"cannot listen on {host}:{port}: {exc.strerror} (http.host / http.port)"
    return None


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth import sign_token

    try:
        # A token signed with a freshly invented secret is refused by the server with a
        # bare "invalid token": never invent one here.
        settings, _ = resolve_settings(args, generate=False)
    except ConfigError as exc:
        print(f"sentchat: {exc}", file=sys.stderr)
        return 2
    secret = settings.client.token.hmac_secret_key
    if args.channel and settings.client.subscription_token is not None:
        secret = settings.client.subscription_token.hmac_secret_key or secret
    if not secret:
        print("sentchat: no HMAC secret configured (client.token.hmac_secret_key or "
              "SENTCHAT_TOKEN_HMAC_SECRET)", file=sys.stderr)
        return 2
    claims: dict[str, Any] = {"sub": args.user}
    if args.ttl:
        claims["exp"] = int(time.time()) + args.ttl
    if args.channel:
        claims["channel"] = args.channel
    if args.info:
        try:
            claims["info"] = json.loads(args.info)
        except json.JSONDecodeError as exc:
            print(f"sentchat: --info is not valid JSON: {exc}", file=sys.stderr)
            return 2
    print(sign_token(secret, claims))
    return 0


BUILTIN_COMMANDS = frozenset({"serve", "migrate", "audit", "token"})


def build_parser(plugins: Mapping[str, PluginCommand] | None = None) -> argparse.ArgumentParser:
    """The parser of the product's own commands and of ``plugins`` (gateway/commands.py:
    `bench` is one, registered by the load suite)."""
    parser = argparse.ArgumentParser(prog="sentchat", description="SENTchat real-time gateway")
    parser.add_argument("--version", action="version", version=f"sentchat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML config file (default: embedded defaults; env SENTCHAT_CONFIG)")
        p.add_argument("--centrifugo-config", help="import a Centrifugo v6 JSON config")

    serve = sub.add_parser("serve", help="run the gateway")
    common(serve)
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8000; env SENTCHAT_HTTP_PORT)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--log-level", default=os.environ.get("SENTCHAT_LOG_LEVEL", "INFO"))
    # Set by the --workers supervisor for its workers: several processes share the port.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    mig = sub.add_parser("migrate", help="apply the PostgreSQL schema migrations")
    common(mig)
    mig.add_argument("--dsn", help="PostgreSQL DSN (default: SENTCHAT_POSTGRES_DSN, "
                     "storage.postgres_dsn, else the embedded server in the data dir)")
    mig.set_defaults(func=cmd_migrate)

    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the audit hash chain; exit 1 naming the first broken record")
    common(verify)
    verify.add_argument("--dsn", help="PostgreSQL DSN (default: as for `sentchat migrate`)")
    verify.set_defaults(func=cmd_audit_verify)

    token = sub.add_parser("token", help="print a connection (or subscription) JWT")
    common(token)
    token.add_argument("--user", required=True, help="user id (sub claim)")
    token.add_argument("--ttl", type=int, default=0, help="seconds until exp (default: no exp)")
    token.add_argument("--channel", help="make a subscription token for this channel")
    token.add_argument("--info", help="JSON attached as the info claim")
    token.set_defaults(func=cmd_token)

    from gateway.accounts_cli import add_parser as add_users_parser

    add_users_parser(sub, common)  # sentchat users add|disable|enable

    for name, command in sorted((plugins or {}).items()):
        # A plug-in parses its own options (`sentchat bench saturate --help`).
        # Listed for `sentchat --help`; main() hands the command line to the plug-in itself.
        sub.add_parser(name, help=command.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins: Mapping[str, PluginCommand] = {}
    # Plug-ins are looked up only for a command that is not the product's own (and for
    # --help): `sentchat serve` — every worker — never pays for the entry-point scan.
    if not argv or argv[0] not in BUILTIN_COMMANDS:
        plugins = discover_commands()
        if argv and argv[0] in MISSING_HINTS and argv[0] not in plugins:
            print(f"sentchat: {MISSING_HINTS[argv[0]]}", file=sys.stderr)
            return 2
        if argv and argv[0] in plugins:
            # Straight to the plug-in: argparse's REMAINDER would not pass a leading --help on.
            logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            return int(plugins[argv[0]].run(argv[1:]))
    parser = build_parser(plugins)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs every handshake at INFO; at 50k connections that is noise.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
