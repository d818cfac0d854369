"""Locust load for SENTchat: Centrifugo-protocol WebSocket users and HTTP API publishers.

    locust -f bench/locustfile.py --host http://127.0.0.1:8000              # web UI on :8089
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 500 -r 50 -t 60s

Settings (environment): ``SENTCHAT_TOKEN_HMAC_SECRET`` (signs the users' connection tokens),
``SENTCHAT_API_KEY`` (for the API user), ``LOCUST_CHANNELS`` (channels ``chat:locust-0..N-1``,
default 10; the namespace must allow subscribing and, for WS publishes, publishing — the
embedded ``chat`` namespace does), ``LOCUST_CHANNEL_PREFIX`` (default ``chat:locust-``).

Request types in locust's statistics:

- ``WS connect`` — TCP connect → WebSocket handshake → connect and subscribe replies;
- ``WS publish`` — a client `publish` command → its reply;
- ``WS delivery`` — a publication's send time (in its data, ``t`` ns) → its arrival at a
  subscriber: the delivery latency, one entry per received publication;
- ``API publish`` — `POST /api/publish` (the HTTP API user).

Frames are built with bench/common.py's client framing on a gevent socket (locust patches
the standard library), one reader greenlet per user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import random
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import FastHttpUser, User, between, events, task

from bench.common import client_frame, parse_server_frames

CHANNELS = int(os.environ.get("LOCUST_CHANNELS", "10"))
PREFIX = os.environ.get("LOCUST_CHANNEL_PREFIX", "chat:locust-")
SECRET = os.environ.get("SENTCHAT_TOKEN_HMAC_SECRET", "")
API_KEY = os.environ.get("SENTCHAT_API_KEY", "")
WS_PATH = "/connection/websocket"
_users = itertools.count()


def token(user: str) -> str:
    """HS256 connection token for ``user``."""
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps({"sub": user}).encode())
    return (signing + b"." + b64(hmac.new(SECRET.encode(), signing, hashlib.sha256).digest())).decode()


def _fire(request_type: str, name: str, started: float, length: int = 0,
          exception: Exception | None = None) -> None:
    events.request.fire(request_type=request_type, name=name,
                        response_time=(time.perf_counter() - started) * 1000,
                        response_length=length, exception=exception, context={})


class CentrifugoUser(User):
    """Connects, subscribes to one channel, publishes now and then, and reports every
    publication it receives as a ``WS delivery`` with its latency."""

    wait_time = between(1, 3)
    weight = 10

    def on_start(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[str, float]] = {}
        self.channel = f"{PREFIX}{random.randrange(CHANNELS)}"
        self.user = f"locust-{next(_users)}-{os.getpid()}"
        started = time.perf_counter()
        try:
            self._open()
        except Exception as exc:  # reported to locust, which counts the failure
            _fire("WS connect", "connect+subscribe", started, exception=exc)
            self.stop(force=True)
            return
        _fire("WS connect", "connect+subscribe", started)
        self.reader = gevent.spawn(self._read_loop)

    def _open(self) -> None:
        url = urlsplit(self.host or "http://127.0.0.1:8000")
        host, port = url.hostname or "127.0.0.1", url.port or 80
        sock = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(f"GET {WS_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buf += chunk
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0] + b" ":
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        self.buf = bytearray(rest)
        sock.sendall(client_frame(json.dumps({"id": next(self.ids), "connect": {"token": token(self.user)}}).encode()
                                  + b"\n" + json.dumps({"id": next(self.ids),
                                                        "subscribe": {"channel": self.channel}}).encode()))
        replies = 0
        while replies < 2:
            for msg in self._messages(sock):
                if "error" in msg:
                    raise ConnectionError(f"error {msg['error']}")
                if "id" in msg:
                    replies += 1
        sock.settimeout(None)
        self.sock = sock

    def _messages(self, sock: socket.socket) -> list[dict[str, Any]]:
        """Read once and return the complete JSON messages (answering pings)."""
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk
        frames, error = parse_server_frames(self.buf)
        if error:
            raise ConnectionError(error)
        out = []
        for op, payload in frames:
            if op == 0x9:
                sock.sendall(client_frame(payload, 0xA))
            elif op == 0x8:
                raise ConnectionError(f"close {int.from_bytes(payload[:2], 'big') if payload else 1005}")
            elif op == 0x1:
                for line in payload.split(b"\n"):
                    if line == b"{}":  # server ping: answer with an empty command
                        sock.sendall(client_frame(b"{}"))
                    elif line:
                        out.append(json.loads(line))
        return out

    def _read_loop(self) -> None:
        sock = self.sock
        assert sock is not None  # noqa: S101
        try:
            while True:
                for msg in self._messages(sock):
                    now = time.time_ns()
                    push = msg.get("push")
                    if push is not None and "pub" in push:
                        data = push["pub"].get("data") or {}
                        if isinstance(data, dict) and "t" in data:
                            events.request.fire(request_type="WS delivery", name=PREFIX + "*",
                                                response_time=(now - int(data["t"])) / 1e6,
                                                response_length=len(json.dumps(data)), exception=None,
                                                context={})
                        continue
                    pending = self.pending.pop(msg.get("id", -1), None)
                    if pending is not None:
                        name, started = pending
                        err = msg.get("error")
                        _fire("WS publish", name, started,
                              exception=ConnectionError(f"error {err}") if err else None)
        except (OSError, ConnectionError, ValueError):
            pass

    @task
    def publish(self) -> None:
        if self.sock is None:
            return
        rid = next(self.ids)
        self.pending[rid] = (PREFIX + "*", time.perf_counter())
        data = {"t": time.time_ns(), "from": self.user}
        self.sock.sendall(client_frame(json.dumps({"id": rid, "publish": {"channel": self.channel,
                                                                          "data": data}}).encode()))

    def on_stop(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            try:
                sock.sendall(client_frame(b"\x03\xe8", 0x8))
                sock.close()
            except OSError:
                pass
            self.sock = None


class ApiUser(FastHttpUser):
    """Publishes through the server HTTP API into the channels the WebSocket users hold."""

    wait_time = between(0.5, 1.5)
    weight = 1

    @task
    def api_publish(self) -> None:
        body = {"channel": f"{PREFIX}{random.randrange(CHANNELS)}", "data": {"t": time.time_ns(), "from": "api"}}
        with self.client.post("/api/publish", json=body, headers={"X-API-Key": API_KEY},
                              name="API publish", catch_response=True) as resp:
            if resp.status_code != 200 or "result" not in (resp.text or ""):
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:100]}")
