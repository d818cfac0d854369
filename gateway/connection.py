"""One client WebSocket: frames in and out, command pipeline, backpressure, timers.

Reading is driven by the socket's ``asyncio.Protocol`` (no task while idle). Commands run
strictly in order; a task exists only while a burst of commands is being processed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from centrifugo_bridge import codes
from centrifugo_bridge.codecs import Codec
from centrifugo_bridge.codes import Disconnect, DisconnectError
from centrifugo_bridge.protocol import Command
from centrifugo_bridge.session import Session
from gateway.frames import build_frame

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("sentchat.connection")

# Seconds to wait for the client's close frame after ours (Centrifuge waits 5 s too).
CLOSE_TIMEOUT = 5.0
# Commands queued but not yet processed; a client pipelining more is flooding us.
MAX_PENDING_COMMANDS = 1000


class Connection:
    """A live client connection after the WebSocket handshake."""

    __slots__ = ("node", "transport", "ws", "session", "codec", "pending", "task",
                 "closed", "timer_key", "client_id", "buffering", "cutoffs", "__weakref__")

    def __init__(self, node: Node, transport: asyncio.Transport, ws: ServerProtocol,
                 session: Session) -> None:
        self.node = node
        self.transport = transport
        self.ws = ws
        self.session = session
        self.codec: Codec = session.codec
        self.client_id = session.client_id
        self.pending: deque[Command] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.timer_key = 0
        # Pushes of channels whose subscribe is in flight, and the stream offset each
        # subscribe reply covers (see start_buffering / flush_buffered).
        self.buffering: dict[str, list[tuple[int, bytes]]] | None = None
        self.cutoffs: dict[str, int] = {}

    # ---- input ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for frame in ws.events_received():
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                if self.closed:
                    continue
                if (op is Opcode.BINARY) != self.codec.binary:
                    self.close(codes.INAPPROPRIATE_PROTOCOL)
                    continue
                self._on_message(bytes(frame.data))
        self._flush_ws()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._flush_ws()

    def _on_message(self, data: bytes) -> None:
        try:
            commands = self.session.decode(data)
        except DisconnectError as exc:
            self.close(exc.disconnect)
            return
        self.pending.extend(commands)
        if len(self.pending) > MAX_PENDING_COMMANDS:
            self.close(codes.TOO_MANY_REQUESTS_DISCONNECT)
            return
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._process())

    async def _process(self) -> None:
        node = self.node
        session = self.session
        try:
            while self.pending and not self.closed:
                cmd = self.pending.popleft()
                started = time.perf_counter()
                method = _method(cmd)
                try:
                    reply = await node.drive(session.handle(cmd, time.time()), self)
                except DisconnectError as exc:
                    self.close(exc.disconnect)
                    return
                if reply is not None and not self.closed:
                    if reply.error is not None:
                        node.metrics.errors.labels(str(reply.error.code)).inc()
                    self.write_frame(build_frame(session.encode(reply), self.codec.binary))
                if self.buffering is not None:
                    self.flush_buffered()
                node.metrics.command_done(method, time.perf_counter() - started)
                if session.failed:
                    # Centrifugo stops reading after a failed connect; the SDK closes.
                    self.pending.clear()
            self.reschedule()
        except Exception:
            log.exception("command processing failed for %s", self.client_id)
            self.close(codes.SERVER_ERROR)
        finally:
            self.task = None

    # ---- subscribe-time buffering -----------------------------------------------------

    def start_buffering(self, channel: str) -> None:
        """Hold this channel's pushes until the subscribe reply has been written, so a
        publication landing while history is read is neither lost nor sent first."""
        if self.buffering is None:
            self.buffering = {}
        self.buffering[channel] = []

    def set_cutoff(self, channel: str, offset: int) -> None:
        """The subscribe reply covers the stream up to ``offset`` (top or last recovered)."""
        self.cutoffs[channel] = offset

    def flush_buffered(self) -> None:
        """After a reply: send held pushes the reply did not cover; drop those of channels
        whose subscribe failed."""
        buffering = self.buffering
        if buffering is None:
            return
        self.buffering = None
        for channel, held in buffering.items():
            cutoff = self.cutoffs.pop(channel, 0)
            if channel not in self.session.subs:
                continue
            for offset, frame in held:
                # offset 0: no stream (join/leave, history off) — always new to the client.
                if offset == 0 or offset > cutoff:
                    self.write_frame(frame)

    # ---- output -----------------------------------------------------------------------

    def write_frame(self, frame: bytes) -> None:
        """Write a ready frame; a subscriber that does not read is cut off with 3008."""
        if self.closed:
            return
        transport = self.transport
        if transport.get_write_buffer_size() > self.node.write_buffer_limit:
            self.close(codes.SLOW)
            return
        transport.write(frame)

    def _flush_ws(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                # websockets asks us to close TCP (close handshake finished).
                self.transport.close()
        if self.ws.state is State.CLOSED and not self.closed:
            self._closed_by_peer()

    def close(self, disconnect: Disconnect) -> None:
        """Close with the disconnect code and a plain-text reason (protocol v2)."""
        if self.closed:
            return
        self._teardown(disconnect.code)
        if self.ws.state is State.OPEN:
            self.ws.send_close(disconnect.code, disconnect.reason)
            self._flush_ws()
            loop = asyncio.get_running_loop()
            loop.call_later(CLOSE_TIMEOUT, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()

    def _closed_by_peer(self) -> None:
        self._teardown(0)

    def connection_lost(self) -> None:
        if not self.closed:
            self._teardown(0)

    def _teardown(self, code: int) -> None:
        self.closed = True
        self.pending.clear()
        if code:
            self.node.metrics.errors.labels(str(code)).inc()
        self.node.timers.cancel(self)
        self.node.connection_closed(self)

    # ---- timers -----------------------------------------------------------------------

    def reschedule(self) -> None:
        if not self.closed:
            self.node.timers.schedule(self, self.session.next_deadline())

    def on_timer(self, now: float) -> None:
        if self.closed:
            return
        try:
            actions = self.session.on_timer(now)
            for frame in actions.frames:
                self.write_frame(build_frame(frame, self.codec.binary))
            for effect in actions.unsubscribe:
                self.node.detach(effect, self)
            if actions.disconnect is not None:
                self.close(actions.disconnect)
                return
        except Exception:
            log.exception("timer handling failed for %s", self.client_id)
            self.close(codes.SERVER_ERROR)
            return
        self.reschedule()


def _method(cmd: Command) -> str:
    for name in ("connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats",
                 "history", "rpc", "send", "refresh", "sub_refresh"):
        if getattr(cmd, name) is not None:
            return name
    return "pong" if cmd.id == 0 else "unknown"
