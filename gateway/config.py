"""Settings: one TOML file, SENTCHAT_* environment overrides, Centrifugo config import.

A bad file is refused at start with a message naming the key (``ConfigError``). Durations
accept seconds (number) or strings such as "500ms", "25s", "5m", "1h", "7d".
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import msgspec

from centrifugo_bridge.channels import ChannelNaming, ChannelOptions, ChannelRules
from centrifugo_bridge.session import ClientOptions, SessionConfig
from gateway.broker.redis_urls import parse_redis_url

__all__ = ["ConfigError", "Settings", "build_settings", "import_centrifugo", "load_settings", "parse_duration"]


class ConfigError(ValueError):
    """Configuration refused; the message names the offending key."""


class TokenSettings(msgspec.Struct, forbid_unknown_fields=True):
    hmac_secret_key: str = ""
    rsa_public_key: str = ""
    ecdsa_public_key: str = ""
    jwks_public_endpoint: str = ""
    # Checked only when set (Centrifugo client.token.audience / issuer).
    audience: str = ""
    issuer: str = ""
    user_id_claim: str = "sub"
    # Seconds a JWKS key set is cached before it is fetched again.
    jwks_cache_ttl: float = 300.0


class ClientSettings(ClientOptions, forbid_unknown_fields=True):
    """``[client]``: the session's options (declared once, in ClientOptions) plus the
    gateway's own: keys, origins and the socket limits."""

    token: TokenSettings = msgspec.field(default_factory=TokenSettings)
    # A separate key set for subscription tokens; unset = same as `token`.
    subscription_token: TokenSettings | None = None
    allowed_origins: list[str] = []
    # Inbound WebSocket message limit (Centrifugo websocket.message_size_limit); larger -> 1009.
    message_size_limit: int = 65536
    # A subscriber whose unsent bytes pass this is disconnected with 3008 (slow) instead of
    # growing memory without bound.
    write_buffer_limit: int = 4 * 1024 * 1024
    # Hold frames this long and write each connection's in one go (0 = write at once):
    # fewer wake-ups of busy clients for up to this much extra latency.
    write_delay: float = 0.0


class HttpSettings(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    # Request line + headers; larger requests get 431.
    max_header_size: int = 16384
    # HTTP API bodies; larger get 413.
    max_body_size: int = 1024 * 1024
    # Listen backlog: connect storms need more than the default 100 (machine somaxconn 4096).
    backlog: int = 4096
    # Origins (fnmatch patterns, e.g. "https://*.example.com") whose pages may call /v1
    # from the browser (CORS); none by default: the web client is served from this origin.
    cors_origins: list[str] = []
    # A request (head and body) must arrive whole within this from its first byte: a client
    # sending a head or body byte by byte (slowloris) cannot hold a socket for minutes.
    read_timeout: float = 30.0
    # A keep-alive connection with no request in progress is closed after this.
    idle_timeout: float = 75.0

    def __post_init__(self) -> None:
        for key in ("read_timeout", "idle_timeout"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive")


class HttpApiSettings(msgspec.Struct, forbid_unknown_fields=True):
    key: str = ""
    # Development only: no key check at all.
    insecure: bool = False


class NodeSettings(msgspec.Struct, forbid_unknown_fields=True):
    name: str = ""
    workers: int = 1


class RedisSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Shards: channels spread over these servers by a stable hash. Empty = in-process
    # broker (one worker) or an embedded Valkey started for `--workers N`.
    urls: list[str] = []
    prefix: str = "sentchat"
    # Pub/sub connections per shard (per-channel order holds: a channel uses one of them).
    pubsub_per_shard: int = 2
    # A dead node's clients leave presence within this time.
    presence_ttl: float = 60.0
    # Live nodes re-register this often; a node silent for 3 periods is gone.
    node_info_interval: float = 5.0

    def __post_init__(self) -> None:
        for i, url in enumerate(self.urls):
            # The broker's own parser: what passes here, the broker can connect to.
            try:
                parse_redis_url(url)
            except ValueError as exc:
                raise ValueError(f"urls[{i}]: {exc}") from None
        if self.pubsub_per_shard < 1 or self.presence_ttl <= 0 or self.node_info_interval <= 0:
            raise ValueError("pubsub_per_shard, presence_ttl and node_info_interval must be positive")


class StorageSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Empty: an embedded PostgreSQL under data_dir is started when a namespace is durable.
    postgres_dsn: str = ""
    # Search reads (docs/search.md) from this DSN, e.g. a streaming read replica; empty:
    # postgres_dsn. A replica's lag delays new messages and membership changes in search.
    search_dsn: str = ""
    data_dir: str = ".sentchat"
    # Time partitions of the publications table, created this many intervals ahead.
    partition_interval: str = "daily"
    partitions_ahead: int = 3
    # Group commit: at most max_batch rows per transaction, flushed every flush_interval.
    max_batch: int = 1000
    flush_interval: float = 0.002
    # Publications waiting for their commit; beyond it publishers get a temporary error.
    queue_limit: int = 50_000
    pool_size: int = 8

    def __post_init__(self) -> None:
        if self.partition_interval not in ("daily", "monthly"):
            raise ValueError("partition_interval must be 'daily' or 'monthly'")
        if self.max_batch < 1 or self.queue_limit < 1 or self.pool_size < 2:
            raise ValueError("max_batch and queue_limit must be >= 1, pool_size >= 2")


class ChatSettings(msgspec.Struct, forbid_unknown_fields=True):
    # The chat product (docs/chat.md): RPC methods, /v1/ HTTP API, the `chat`
    # access provider. Needs the durable namespace `namespace` with acl = "chat".
    enabled: bool = False
    namespace: str = "chat"          # chat:<channel id> carries a channel's events
    status_namespace: str = "status"  # status:<user> carries a user's status changes
    owners: list[str] = []           # user ids made workspace owners on first sight
    pool_size: int = 8               # PostgreSQL connections of the chat service
    # Encryption at rest of sensitive chat fields (storage/crypto.py, docs/audit.md):
    # key id -> base64 of 32 random bytes (AES-256-GCM). Old ids stay listed until their
    # values are re-encrypted. Empty: a key is generated into <data_dir>/secrets.json.
    encryption_keys: dict[str, str] = {}
    # The id new values are encrypted under; required when encryption_keys is set.
    encryption_key_id: str = ""
    # Message search stems words in this language (one of PostgreSQL's Snowball stemmers:
    # english, german, french, spanish, ...); changing it re-indexes in the background.
    search_language: str = "english"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z]{2,32}", self.search_language):
            raise ValueError("search_language must be a language name such as english, german")


class IntegrationSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Apps, bots, incoming webhooks, the Slack-compatible Web API, slash commands,
    # interactive messages and outgoing events (docs/integrations.md); part of the chat.
    enabled: bool = False
    slack_api_prefix: str = "/slack/api/"   # Slack Web API subset (auth.test, chat.postMessage...)
    hooks_prefix: str = "/hooks/"           # incoming webhooks and response URLs
    # Base URL apps are given for webhooks and response_url; empty: http://<http.host>:<port>.
    public_url: str = ""
    hook_rate: float = 1.0                  # messages per second per incoming webhook...
    hook_burst: int = 20                    # ...after a burst of this many (then 429)
    command_timeout: float = 3.0            # an app's answer to a command or a click
    signature_tolerance: float = 300.0      # X-Slack-Request-Timestamp skew accepted
    response_url_ttl: float = 1800.0        # a response_url works this long...
    response_url_uses: int = 5              # ...this many times
    event_max_attempts: int = 8             # then the event is dead-lettered
    event_backoff: float = 1.0              # first retry delay, doubled per attempt...
    event_backoff_max: float = 300.0        # ...up to this
    event_timeout: float = 5.0              # an events URL's answer
    event_poll_interval: float = 0.5        # outbox scan when nothing woke it
    # Link previews (gateway/integrations/unfurl.py), fetched after the send is acknowledged.
    unfurl_enabled: bool = True
    unfurl_timeout: float = 3.0             # a whole fetch (every redirect included)
    unfurl_max_bytes: int = 1_000_000       # a page's body beyond this: no preview
    unfurl_max_redirects: int = 3           # each hop re-checked like the first URL
    unfurl_max_links: int = 3               # links previewed per message
    unfurl_ports: list[int] = msgspec.field(default_factory=lambda: [80, 443])  # only these
    # Hosts (exact, or ".suffix" for subdomains) or CIDRs never fetched...
    unfurl_deny: list[str] = []
    # ...and fetched although they resolve to a private/loopback address (an intranet wiki).
    unfurl_allow: list[str] = []
    # name -> IP answered before DNS (a split-horizon name, or tests); checked like DNS answers.
    unfurl_resolve: dict[str, str] = {}
    unfurl_cache_ttl: float = 3600.0        # a URL's preview (or failure) is reused this long
    # sent://prism/dashboard/<name> -> GET this URL ({name} replaced): a chart attachment.
    prism_url: str = ""
    prism_refresh_interval: float = 60.0    # how often a client on screen re-reads a chart
    # sent://files/<path> (and links to file_hosts) -> GET this URL ({path}): name/size/type.
    files_url: str = ""
    file_hosts: list[str] = []
    # Incident war rooms: priorities up to this one notify responders through DND (0: never).
    incident_urgent_priority: int = 1
    # Huddles: the meeting URL ({id}, {channel} replaced); empty: huddles are off.
    huddle_url_template: str = ""

    def __post_init__(self) -> None:
        for key in ("slack_api_prefix", "hooks_prefix"):
            value = getattr(self, key)
            if not (value.startswith("/") and value.endswith("/") and len(value) > 2):
                raise ValueError(f"{key} must start and end with '/' (e.g. '/slack/api/')")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("public_url must be an http(s) URL")
        if self.hook_rate <= 0 or self.hook_burst < 1 or self.command_timeout <= 0 \
                or self.response_url_ttl <= 0 or self.response_url_uses < 1 \
                or self.event_max_attempts < 1 or self.event_backoff <= 0 \
                or self.event_backoff_max < self.event_backoff or self.event_timeout <= 0 \
                or self.event_poll_interval <= 0 or self.signature_tolerance <= 0:
            raise ValueError("rates, timeouts, uses and attempts must be positive "
                             "(event_backoff_max >= event_backoff)")
        if self.unfurl_timeout <= 0 or self.unfurl_max_bytes < 1 or self.unfurl_max_links < 0 \
                or not 0 <= self.unfurl_max_redirects <= 10 or self.unfurl_cache_ttl < 0 \
                or self.prism_refresh_interval <= 0 or not 0 <= self.incident_urgent_priority <= 5:
            raise ValueError("unfurl_* limits must be positive (max_redirects 0-10), "
                             "incident_urgent_priority 0-5")
        if any(not 0 < port < 65536 for port in self.unfurl_ports):
            raise ValueError("unfurl_ports: ports 1-65535")
        for key in ("prism_url", "files_url", "huddle_url_template"):
            value = getattr(self, key)
            if value and not value.startswith(("http://", "https://")):
                raise ValueError(f"{key} must be an http(s) URL")
        import ipaddress

        for name, address in self.unfurl_resolve.items():
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"unfurl_resolve[{name}]: not an IP address") from None
        for key in ("unfurl_allow", "unfurl_deny"):
            for entry in getattr(self, key):
                if "/" in entry:
                    try:
                        ipaddress.ip_network(entry, strict=False)
                    except ValueError:
                        raise ValueError(f"{key}: {entry!r} is not a CIDR") from None


class NamespaceSettings(ChannelOptions, forbid_unknown_fields=True):
    name: str = ""


class ChannelSettings(ChannelNaming, forbid_unknown_fields=True):
    """``[channel]``: naming and channels without namespace (declared once, in ChannelNaming)
    plus the namespaces as a list of named tables, the way a TOML file writes them."""

    namespaces: list[NamespaceSettings] = []


class WebSettings(msgspec.Struct, forbid_unknown_fields=True):
    # The browser client (docs/web.md) served at / by the `web` extension: the paths that
    # neither the engine nor /v1/ answer. Off: / is a plain 404.
    enabled: bool = True
    # The built client (index.html + assets/); empty: $SENTCHAT_WEB_DIR, else the
    # checkout's web/dist (what `npm run build --prefix web` writes).
    dir: str = ""


class OidcSettings(msgspec.Struct, forbid_unknown_fields=True):
    # Sign-in through the company's OpenID Connect provider (docs/web.md): authorization
    # code flow + PKCE. Off while `issuer` is empty.
    issuer: str = ""                 # exactly the provider's "issuer" (its discovery document's)
    client_id: str = ""              # this gateway's client at the provider (the ID token's aud)
    client_secret: str = ""          # confidential clients only; empty = public client (PKCE alone)
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "profile", "email"])
    label: str = "Sign in with SSO"  # the sign-in button's text


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True):
    oidc: OidcSettings = msgspec.field(default_factory=OidcSettings)


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    http_api: HttpApiSettings = msgspec.field(default_factory=HttpApiSettings)
    client: ClientSettings = msgspec.field(default_factory=ClientSettings)
    channel: ChannelSettings = msgspec.field(default_factory=ChannelSettings)
    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    chat: ChatSettings = msgspec.field(default_factory=ChatSettings)
    integrations: IntegrationSettings = msgspec.field(default_factory=IntegrationSettings)
    web: WebSettings = msgspec.field(default_factory=WebSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)

    @property
    def durable(self) -> bool:
        """Whether any namespace keeps its history in PostgreSQL."""
        ch = self.channel
        return ch.without_namespace.durable or any(ns.durable for ns in ch.namespaces)

    def channel_rules(self) -> ChannelRules:
        """The channel section as the bridge's rules: namespaces keyed by name."""
        ch = self.channel
        namespaces = {}
        for ns in ch.namespaces:
            fields = msgspec.structs.asdict(ns)
            fields.pop("name")
            namespaces[ns.name] = ChannelOptions(**fields)
        naming = {name: getattr(ch, name) for name in ChannelNaming.__struct_fields__}
        return ChannelRules(namespaces=namespaces, **naming)

    def session_config(self, version: str) -> SessionConfig:
        """The client section as the bridge's session settings."""
        c = self.client
        options = {name: getattr(c, name) for name in ClientOptions.__struct_fields__}
        return SessionConfig(version=version, user_id_claim=c.token.user_id_claim, **options)


DURATION_KEYS = frozenset({
    "ping_interval", "pong_timeout", "stale_close_delay", "expired_close_delay",
    "expired_sub_close_delay", "history_ttl", "retention", "jwks_cache_ttl", "flush_interval",
    "presence_ttl", "node_info_interval", "write_delay", "read_timeout", "idle_timeout",
    # [integrations]
    "command_timeout", "signature_tolerance", "response_url_ttl", "event_backoff",
    "event_backoff_max", "event_timeout", "event_poll_interval", "unfurl_timeout",
    "unfurl_cache_ttl", "prism_refresh_interval",
})
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a number or a string like "300s" (ConfigError naming ``key``)."""
    if isinstance(value, bool):
        raise ConfigError(f"config key {key}: expected a duration, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"config key {key}: duration must be >= 0")
        return float(value)
    if isinstance(value, str):
        # Go durations can chain units ("1m30s"); accept that too.
        total, pos = 0.0, 0
        for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", value.strip()):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos and pos == len(value.strip()):
            return total
        single = _DURATION.match(value)
        if single:
            return float(single.group(1)) * _UNITS[single.group(2) or "s"]
    raise ConfigError(f"config key {key}: expected a duration like \"25s\", got {value!r}")


def _normalise(data: Any, path: str = "") -> Any:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            key = f"{path}.{k}" if path else str(k)
            if k in DURATION_KEYS and v is not None:
                out[k] = parse_duration(v, key)
            else:
                out[k] = _normalise(v, key)
        return out
    if isinstance(data, list):
        return [_normalise(v, f"{path}[{i}]") for i, v in enumerate(data)]
    return data


_PATH = re.compile(r" - at `\$(.*)`$")


def _explain(exc: Exception) -> str:
    msg = str(exc)
    m = _PATH.search(msg)
    where = ""
    if m:
        where = m.group(1).lstrip(".")
        msg = msg[: m.start()]
    unknown = re.match(r"Object contains unknown field `([^`]+)`", msg)
    if unknown:
        key = f"{where}.{unknown.group(1)}" if where else unknown.group(1)
        return f"config key {key}: unknown key"
    return f"config key {where or '(root)'}: {msg}"


def build_settings(data: dict[str, Any]) -> Settings:
    """Validate a settings mapping (from TOML, env, or an imported Centrifugo config)."""
    try:
        settings = msgspec.convert(_normalise(data), Settings)
    except (msgspec.ValidationError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(_explain(exc)) from None
    # A PEM that does not load would fail every connect at run time (internal error ->
    # endless reconnects): refuse it at start instead.
    for section, tok in (("client.token", settings.client.token),
                         ("client.subscription_token", settings.client.subscription_token)):
        for field in ("rsa_public_key", "ecdsa_public_key"):
            if tok is not None and getattr(tok, field):
                # Imported only here: PyJWT loads `cryptography` (~9 MiB RSS per worker),
                # which an HMAC-only configuration never needs.
                from jwt.algorithms import ECAlgorithm, RSAAlgorithm

                algorithm = (RSAAlgorithm(RSAAlgorithm.SHA256) if field == "rsa_public_key"
                             else ECAlgorithm(ECAlgorithm.SHA256))
                try:
                    algorithm.prepare_key(getattr(tok, field))
                except Exception as exc:
                    raise ConfigError(f"config key {section}.{field}: not a usable PEM public key "
                                      f"({exc})") from None
    names = [ns.name for ns in settings.channel.namespaces]
    for i, name in enumerate(names):
        if not name:
            raise ConfigError(f"config key channel.namespaces[{i}].name: required")
        if name in names[:i]:  # name the repeated entry, not the first one
            raise ConfigError(f"config key channel.namespaces[{i}].name: duplicate namespace {name!r}")
    try:
        settings.channel_rules()
    except ValueError as exc:
        raise ConfigError(f"config key channel.namespaces: {exc}") from None
    if not 0 < settings.http.port < 65536:
        raise ConfigError("config key http.port: must be 1-65535")
    if settings.node.workers < 1:
        raise ConfigError("config key node.workers: must be >= 1")
    if not 0 <= settings.client.write_delay <= 1:
        raise ConfigError("config key client.write_delay: must be between 0 and 1s")
    _check_chat_keys(settings.chat)
    _check_chat(settings)
    _check_oidc(settings.auth.oidc)
    return settings


def _check_oidc(oidc: OidcSettings) -> None:
    """An issuer must be a URL the provider is reachable and trusted at: https, except on
    the loopback (a provider on this machine, as the tests start one)."""
    if not oidc.issuer:
        return
    from urllib.parse import urlsplit

    url = urlsplit(oidc.issuer)
    loopback = url.hostname in ("localhost", "127.0.0.1", "::1")
    if url.scheme != "https" and not (url.scheme == "http" and loopback) or not url.hostname:
        raise ConfigError("config key auth.oidc.issuer: must be an https:// URL (http:// only on the loopback)")
    if url.query or url.fragment:
        raise ConfigError("config key auth.oidc.issuer: must not carry a query or fragment")
    if not oidc.client_id:
        raise ConfigError("config key auth.oidc.client_id: required with auth.oidc.issuer")
    if "openid" not in oidc.scopes:
        raise ConfigError('config key auth.oidc.scopes: must include "openid"')


def _check_chat(settings: Settings) -> None:
    """The chat product needs its namespaces set up to carry its events safely."""
    chat = settings.chat
    if not 1 <= chat.pool_size <= 100:
        raise ConfigError("config key chat.pool_size: must be 1-100")
    if not chat.enabled:
        return
    spaces = {ns.name: ns for ns in settings.channel.namespaces}
    ns = spaces.get(chat.namespace)
    if ns is None:
        raise ConfigError(f"config key chat.namespace: no channel namespace {chat.namespace!r}")
    if not ns.durable:
        raise ConfigError(f"config key chat.namespace: namespace {chat.namespace!r} must be durable "
                          "(chat events are acknowledged only once committed)")
    if ns.acl != "chat":
        raise ConfigError(f"config key chat.namespace: namespace {chat.namespace!r} must set "
                          'acl = "chat" (otherwise anyone could read private channels)')
    if ns.allow_publish_for_client or ns.allow_publish_for_subscriber or ns.allow_publish_for_anonymous:
        raise ConfigError(f"config key chat.namespace: namespace {chat.namespace!r} must not allow "
                          "client publications (messages go through messages.send)")
    if chat.status_namespace not in spaces:
        raise ConfigError(f"config key chat.status_namespace: no channel namespace {chat.status_namespace!r}")


def _check_chat_keys(chat: ChatSettings) -> None:
    """Refuse unusable encryption keys at start, naming the key (a bad key found later
    would fail every write of an encrypted field)."""
    from storage.crypto import KEY_ID, CryptoError, decode_key

    for key_id, text in chat.encryption_keys.items():
        where = f"config key chat.encryption_keys.{key_id}"
        if not KEY_ID.match(key_id):
            raise ConfigError(f"{where}: key id must be 1-64 letters, digits, '_', '.', '-'")
        try:
            decode_key(text)
        except CryptoError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if chat.encryption_keys and not chat.encryption_key_id:
        raise ConfigError("config key chat.encryption_key_id: required when "
                          "chat.encryption_keys is set (the id new values are encrypted under)")
    if chat.encryption_key_id and chat.encryption_key_id not in chat.encryption_keys:
        raise ConfigError(f"config key chat.encryption_key_id: {chat.encryption_key_id!r} is "
                          "not a key of chat.encryption_keys")


# Short names deployments already set (the README's table; renaming one breaks them), plus
# a generic form SENTCHAT_<SECTION>__<KEY>[__<KEY>...] for everything else.
ENV_KEYS = {
    "SENTCHAT_HTTP_PORT": ("http", "port"),
    "SENTCHAT_HTTP_HOST": ("http", "host"),
    "SENTCHAT_API_KEY": ("http_api", "key"),
    "SENTCHAT_TOKEN_HMAC_SECRET": ("client", "token", "hmac_secret_key"),
    "SENTCHAT_WORKERS": ("node", "workers"),
    "SENTCHAT_POSTGRES_DSN": ("storage", "postgres_dsn"),
    "SENTCHAT_SEARCH_DSN": ("storage", "search_dsn"),
    "SENTCHAT_DATA_DIR": ("storage", "data_dir"),
}


def _field_type(path: tuple[str, ...]) -> Any:
    """Type of the settings field at ``path`` (None when the path is not a field)."""
    cls: Any = Settings
    for part in path:
        hints = typing.get_type_hints(cls) if isinstance(cls, type) and issubclass(cls, msgspec.Struct) else {}
        if part not in hints:
            return None
        cls = hints[part]
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        if typing.get_origin(cls) in (typing.Union, types.UnionType) and len(args) == 1:
            cls = args[0]
    return cls


def _env_value(path: tuple[str, ...], raw: str) -> Any:
    # A string field takes the text as it is (a key of digits stays a string); anything
    # else is read as a TOML value (numbers, booleans, ["lists"]).
    if _field_type(path) is str:
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def apply_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    """Overlay SENTCHAT_* variables onto a settings mapping."""
    for name, value in environ.items():
        if name == "SENTCHAT_REDIS_URLS":
            _set(data, ("redis", "urls"), [u.strip() for u in value.split(",") if u.strip()])
        elif name in ENV_KEYS:
            path = ENV_KEYS[name]
            # Secrets and host stay strings even if they look like numbers.
            _set(data, path, int(value) if path[-1] in ("port", "workers") and value.isdigit() else value)
        elif name.startswith("SENTCHAT_") and "__" in name:
            path = tuple(p.lower() for p in name[len("SENTCHAT_"):].split("__"))
            _set(data, path, _env_value(path, value))


def load_settings(path: str | os.PathLike[str] | None = None, *, centrifugo: str | None = None,
                  environ: dict[str, str] | None = None,
                  overrides: dict[tuple[str, ...], Any] | None = None) -> tuple[Settings, list[str]]:
    """Load settings: defaults <- TOML file (or imported Centrifugo JSON) <- environment <-
    explicit overrides (command-line flags). Returns settings and warnings."""
    environ = dict(os.environ if environ is None else environ)
    warnings: list[str] = []
    data: dict[str, Any] = {}
    if path is None:
        path = environ.get("SENTCHAT_CONFIG") or None
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if centrifugo is not None:
        imported, warnings = import_centrifugo(centrifugo)
        data = _merge(data, imported)
    apply_env(data, environ)
    for key, value in (overrides or {}).items():
        _set(data, key, value)
    return build_settings(data), warnings


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# ---- Centrifugo v6 JSON import ----------------------------------------------------------

_NS_OPTIONS = set(ChannelOptions.__struct_fields__)
_TOKEN_KEYS = {"hmac_secret_key", "rsa_public_key", "ecdsa_public_key", "jwks_public_endpoint",
               "audience", "issuer", "user_id_claim"}
# Centrifugo nests personal_channel_namespace under subscribe_to_user_personal_channel;
# it is translated there, not taken from the top of `client`.
_CLIENT_KEYS = (set(ClientOptions.__struct_fields__) - {"personal_channel_namespace"}
                | {"allowed_origins", "insecure"})


def import_centrifugo(path: str) -> tuple[dict[str, Any], list[str]]:
    """Translate a Centrifugo v6 JSON config into our settings mapping.

    Returns the mapping and one warning listing options SENTchat does not implement.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"centrifugo config {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"centrifugo config {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"centrifugo config {path}: top level must be an object")
    ignored: list[str] = []
    out: dict[str, Any] = {}

    def section(name: str) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"centrifugo config key {name}: must be an object")
        return value

    client = section("client")
    c_out: dict[str, Any] = {}
    for key, value in client.items():
        if key in ("token", "subscription_token"):
            if not isinstance(value, dict):
                raise ConfigError(f"centrifugo config key client.{key}: must be an object")
            tok: dict[str, Any] = {}
            for tk, tv in value.items():
                if tk in _TOKEN_KEYS:
                    if tv not in ("", None):
                        tok[tk] = tv
                elif tk == "enabled":
                    continue
                elif tv not in (False, "", None, [], {}):
                    ignored.append(f"client.{key}.{tk}")
            if key == "token" or value.get("enabled"):
                c_out[key] = tok
        elif key == "subscribe_to_user_personal_channel":
            if isinstance(value, dict):
                c_out[key] = bool(value.get("enabled", False))
                if value.get("personal_channel_namespace"):
                    c_out["personal_channel_namespace"] = value["personal_channel_namespace"]
                ignored.extend(f"client.{key}.{k}" for k, v in value.items()
                               if k not in ("enabled", "personal_channel_namespace") and v)
            else:
                c_out[key] = bool(value)
        elif key == "insecure":
            if value:
                out.setdefault("channel", {})["insecure"] = True
                c_out["allow_anonymous_connect_without_token"] = True
        elif key in _CLIENT_KEYS:
            c_out[key] = value
        elif value not in (False, "", None, [], {}, 0):
            ignored.append(f"client.{key}")
    if c_out:
        out["client"] = c_out

    api = section("http_api")
    if api:
        a_out: dict[str, Any] = {}
        for key, value in api.items():
            if key in ("key", "insecure"):
                a_out[key] = value
            elif value not in (False, "", None, [], {}) and key != "handler_prefix":
                ignored.append(f"http_api.{key}")
        out["http_api"] = a_out

    http_server = section("http_server")
    if "port" in http_server:
        out["http"] = {"port": int(http_server["port"])}
    if "address" in http_server and http_server["address"]:
        out.setdefault("http", {})["host"] = http_server["address"]

    channel = section("channel")
    ch_out: dict[str, Any] = {}
    for key, value in channel.items():
        if key == "without_namespace":
            ch_out[key] = _namespace_options(value, "channel.without_namespace", ignored)
        elif key == "namespaces":
            if not isinstance(value, list):
                raise ConfigError("centrifugo config key channel.namespaces: must be a list")
            nss = []
            for i, ns in enumerate(value):
                if not isinstance(ns, dict) or not ns.get("name"):
                    raise ConfigError(f"centrifugo config key channel.namespaces[{i}].name: required")
                opts = _namespace_options(ns, f"channel.namespaces[{i}]", ignored)
                opts["name"] = ns["name"]
                nss.append(opts)
            ch_out[key] = nss
        elif key in ("private_prefix", "namespace_boundary", "user_boundary", "user_separator", "max_length"):
            ch_out[key] = value
        elif value not in (False, "", None, [], {}):
            ignored.append(f"channel.{key}")
    if ch_out:
        out["channel"] = _merge(out.get("channel", {}), ch_out)

    for key, value in raw.items():
        if key not in ("client", "http_api", "channel", "http_server") and value not in (False, "", None, [], {}):
            ignored.append(key)
    warnings = []
    if ignored:
        warnings.append("centrifugo config: options not implemented by SENTchat and ignored: "
                        + ", ".join(sorted(ignored)))
    return out, warnings


def _namespace_options(value: Any, where: str, ignored: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"centrifugo config key {where}: must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key == "name":
            continue
        if key in _NS_OPTIONS:
            out[key] = item
        elif item not in (False, "", None, [], {}, 0):
            ignored.append(f"{where}.{key}")
    return out
