"""Redis server URLs: the one parser that both the configuration check and the broker use,
so a URL the configuration accepts is one the broker can connect to.

Kept free of sockets and TLS so that reading the configuration stays cheap.

- ``redis://[[user]:password@]host[:port][/db]`` (``valkey://`` is the same);
  ``rediss://`` / ``valkeys://`` with TLS.
- ``unix://[[user]:password@]/path/to/socket[?db=N]``: a server on a Unix socket (the
  database goes in the query because the path names the socket).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["URL_SCHEMES", "RedisAddress", "parse_redis_url", "redact"]

URL_SCHEMES = ("redis", "rediss", "valkey", "valkeys", "unix")
_TLS_SCHEMES = ("rediss", "valkeys")
DEFAULT_PORT = 6379


class RedisAddress(NamedTuple):
    """Where and how to reach one Redis server."""

    url: str
    host: str
    port: int
    # The Unix socket's path ("" for TCP).
    socket_path: str
    username: str
    password: str
    db: int
    tls: bool

    def handshake(self) -> list[tuple[bytes | str | int, ...]]:
        """Commands a fresh connection sends before anything else."""
        commands: list[tuple[bytes | str | int, ...]] = []
        if self.password:
            commands.append((b"AUTH", self.username, self.password) if self.username
                            else (b"AUTH", self.password))
        return commands


def parse_redis_url(url: str) -> RedisAddress:
    """The address of ``url``; ValueError saying what is wrong (the password redacted)."""
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in URL_SCHEMES)
        raise ValueError(f"redis url {redact(url)!r} must start with one of {schemes}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"redis url {redact(url)!r}: bad port") from None
    username = unquote(parts.username) if parts.username else ""
    password = unquote(parts.password) if parts.password else ""
    if parts.scheme == "unix":
        if not parts.path or parts.path == "/":
            raise ValueError(f"redis url {redact(url)!r}: no socket path (unix:///path/to/socket)")
        db_text = parse_qs(parts.query).get("db", [""])[-1]
        host, socket_path = "", unquote(parts.path)
    else:
        db_text = parts.path.strip("/")
        host, socket_path = parts.hostname or "127.0.0.1", ""
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ValueError(f"redis url {redact(url)!r}: database {db_text!r} is not a number") from None
    if db < 0:
        raise ValueError(f"redis url {redact(url)!r}: database must be >= 0")
    return RedisAddress(url, host, port or DEFAULT_PORT, socket_path, username, password, db,
                        parts.scheme in _TLS_SCHEMES)


def redact(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()
