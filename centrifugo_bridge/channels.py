"""Channel namespaces and the permission rules of Centrifugo v6 (internal/client/handler.go).

Pure functions over configuration: who may subscribe, publish, read presence or history in
which channel. Option names are Centrifugo's so an imported Centrifugo config means the same.
"""

from __future__ import annotations

import re
from functools import lru_cache

import msgspec

from centrifugo_bridge import codes
from centrifugo_bridge.codes import ClientError

__all__ = ["ChannelNaming", "ChannelOptions", "ChannelRules", "Resolved"]

NAMESPACE_NAME = re.compile(r"^[-a-zA-Z0-9_.]{2,}$")


class ChannelOptions(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Options of one namespace (or of channels without a namespace)."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    # History exists only when both size and ttl are positive (as in Centrifugo).
    history_size: int = 0
    history_ttl: float = 0.0  # seconds
    force_positioning: bool = False
    allow_positioning: bool = False
    force_recovery: bool = False
    allow_recovery: bool = False
    force_recovery_mode: str = "stream"
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_anonymous: bool = False
    allow_history_for_client: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    channel_regex: str = ""
    # SENTchat's additions to Centrifugo's options: history kept in PostgreSQL (durable)
    # and for how long (retention).
    durable: bool = False
    retention: float = 0.0  # seconds; 0 = keep forever
    # SENTchat's addition: the name of an access-control provider (an extension's)
    # the node asks before a client subscribes to, reads the history of or the presence of
    # a channel of this namespace ("chat" = chat memberships). Unknown providers deny.
    acl: str = ""

    def __post_init__(self) -> None:
        if self.history_size < 0:
            raise ValueError("history_size must be >= 0")
        if self.history_ttl < 0:
            raise ValueError("history_ttl must be >= 0")
        if self.force_recovery_mode not in ("stream", "cache"):
            raise ValueError("force_recovery_mode must be 'stream' or 'cache'")
        if self.channel_regex:
            try:
                re.compile(self.channel_regex)
            except re.error as exc:
                raise ValueError(f"channel_regex is not a valid regex: {exc}") from None

    @property
    def history_enabled(self) -> bool:
        # A durable namespace keeps every publication within `retention` in PostgreSQL.
        return self.durable or (self.history_size > 0 and self.history_ttl > 0)

    @property
    def compiled_regex(self) -> re.Pattern[str] | None:
        return _compile(self.channel_regex) if self.channel_regex else None


@lru_cache(maxsize=256)
def _compile(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


class Resolved(msgspec.Struct, frozen=True):
    """A channel name resolved against the configured namespaces."""

    channel: str
    namespace: str
    options: ChannelOptions
    private: bool
    user_limited: bool


class ChannelNaming(msgspec.Struct, forbid_unknown_fields=True):
    """Everything of Centrifugo's `channel.*` but the namespace table.

    Declared once here: :class:`ChannelRules` adds the namespaces as a mapping (how rules
    look them up), the gateway's ``[channel]`` settings section adds them as a list of
    named tables (how an operator writes them). Both inherit these fields and defaults.
    """

    without_namespace: ChannelOptions = msgspec.field(default_factory=ChannelOptions)
    private_prefix: str = "$"
    namespace_boundary: str = ":"
    user_boundary: str = "#"
    user_separator: str = ","
    # Centrifugo's default channel.max_length.
    max_length: int = 255
    # client.insecure: every permission check passes (development only).
    insecure: bool = False


class ChannelRules(ChannelNaming, forbid_unknown_fields=True):
    """Channel naming and namespace configuration (Centrifugo `channel.*`)."""

    namespaces: dict[str, ChannelOptions] = {}

    def __post_init__(self) -> None:
        for name in self.namespaces:
            if not NAMESPACE_NAME.match(name):
                raise ValueError(f"namespace name {name!r} must match {NAMESPACE_NAME.pattern}")
        if self.max_length <= 0:
            raise ValueError("max_length must be > 0")

    # ---- resolution -------------------------------------------------------------------

    def resolve(self, channel: str) -> Resolved:
        """Find the namespace of ``channel`` and validate its name (102 / 107 on failure)."""
        if not channel:
            raise codes.error(codes.UNKNOWN_CHANNEL)
        if byte_length(channel) > self.max_length:
            raise codes.error(codes.BAD_REQUEST)
        private = bool(self.private_prefix) and channel.startswith(self.private_prefix)
        trimmed = channel[len(self.private_prefix):] if private else channel
        if self.namespace_boundary and self.namespace_boundary in trimmed:
            namespace, rest = trimmed.split(self.namespace_boundary, 1)
            # An empty namespace (":x") means channels without namespace, as in Centrifugo.
            options = self.namespaces.get(namespace) if namespace else self.without_namespace
            if options is None:
                raise codes.error(codes.UNKNOWN_CHANNEL)
        else:
            namespace, rest, options = "", channel, self.without_namespace
        regex = options.compiled_regex
        if regex is not None:
            if not regex.match(rest):
                raise codes.error(codes.BAD_REQUEST)
        elif not channel.isascii():
            raise codes.error(codes.BAD_REQUEST)
        user_limited = (
            options.allow_user_limited_channels
            and bool(self.user_boundary)
            and self.user_boundary in channel
        )
        return Resolved(channel, namespace, options, private, user_limited)

    def user_allowed(self, channel: str, user: str) -> bool:
        """Whether ``user`` is listed after the user boundary of a user-limited channel."""
        if not self.user_boundary or self.user_boundary not in channel:
            return True
        listed = channel.rsplit(self.user_boundary, 1)[1]
        if not self.user_separator:
            return listed == user
        return user in listed.split(self.user_separator)

    # ---- permissions ------------------------------------------------------------------

    def can_subscribe_without_token(self, res: Resolved, user: str) -> bool:
        """Steps 3, 5 and 6 of Centrifugo's OnSubscribe (token and proxy handled elsewhere)."""
        if res.user_limited and user and self.user_allowed(res.channel, user):
            return True
        opts = res.options
        if opts.allow_subscribe_for_client and (user or opts.allow_subscribe_for_anonymous):
            return not res.user_limited
        return self.insecure

    def can_publish(self, res: Resolved, user: str, subscribed: bool) -> bool:
        return self._allowed(res.options, "publish", user, subscribed)

    def can_presence(self, res: Resolved, user: str, subscribed: bool) -> bool:
        return self._allowed(res.options, "presence", user, subscribed)

    def can_history(self, res: Resolved, user: str, subscribed: bool) -> bool:
        return self._allowed(res.options, "history", user, subscribed)

    def _allowed(self, opts: ChannelOptions, action: str, user: str, subscribed: bool) -> bool:
        """Centrifugo's allow_<action>_for_client / _for_subscriber / _for_anonymous rule."""
        anonymous_ok = bool(user) or getattr(opts, f"allow_{action}_for_anonymous")
        if getattr(opts, f"allow_{action}_for_client") and anonymous_ok:
            return True
        if getattr(opts, f"allow_{action}_for_subscriber") and subscribed and anonymous_ok:
            return True
        return self.insecure

    def check_presence(self, channel: str, user: str, subscribed: bool) -> Resolved:
        """Resolve and authorise a presence / presence_stats request (102/107/108/103)."""
        res = self.resolve(channel)
        if not res.options.presence:
            raise codes.error(codes.NOT_AVAILABLE)
        if not self.can_presence(res, user, subscribed):
            raise codes.error(codes.PERMISSION_DENIED)
        return res

    def check_history(self, channel: str, user: str, subscribed: bool) -> Resolved:
        """Resolve and authorise a history request (102/107/108/103)."""
        res = self.resolve(channel)
        if not res.options.history_enabled:
            raise codes.error(codes.NOT_AVAILABLE)
        if not self.can_history(res, user, subscribed):
            raise codes.error(codes.PERMISSION_DENIED)
        return res

    def check_publish(self, channel: str, user: str, subscribed: bool) -> Resolved:
        """Resolve and authorise a client publish (102/107/103)."""
        res = self.resolve(channel)
        if not self.can_publish(res, user, subscribed):
            raise codes.error(codes.PERMISSION_DENIED)
        return res


def byte_length(channel: str) -> int:
    """Length as Centrifugo measures it: UTF-8 bytes (Go ``len`` of a string)."""
    return len(channel) if channel.isascii() else len(channel.encode("utf-8", "surrogatepass"))


def personal_channel(user: str, namespace: str, boundary: str = "#", ns_boundary: str = ":") -> str:
    """Name of a user's personal channel: ``#user`` or ``ns:#user``."""
    return f"{namespace}{ns_boundary}{boundary}{user}" if namespace else f"{boundary}{user}"


__all__ += ["byte_length", "personal_channel", "ClientError"]
