"""One client WebSocket: frames in and out, command pipeline, backpressure, timers.

Reading is driven by the socket's ``asyncio.Protocol`` (no task while idle). Commands run
strictly in order, synchronously as far as they can: a command whose effects must be
awaited gets a task; a durable publish waits for its group commit without one (the
writer calls back), and the commands queued behind it follow from that callback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from centrifugo_bridge import codes, effects
from centrifugo_bridge.codecs import Codec
from centrifugo_bridge.codes import ClientError, Disconnect, DisconnectError
from centrifugo_bridge.protocol import Command, Reply, StreamPosition
from centrifugo_bridge.session import Handler, Session
from gateway.frame_reader import FrameReader
from gateway.frames import build_frame
from gateway.subscribe_buffer import SubscribeBuffer

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
                 "closed", "timer_key", "client_id", "buffering", "subscribe_buffer", "parked",
                 "current", "started", "timers_stale", "reader", "delayed", "__weakref__")

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
        # The pushes of channels whose subscribe is in flight and the stream offset each
        # subscribe reply covers (see start_buffering / flush_buffered). `buffering` is set
        # only while a subscribe is in flight: fan-out checks it for None on every push.
        # `subscribe_buffer` is the same object while it holds anything (made on demand).
        self.buffering: SubscribeBuffer | None = None
        self.subscribe_buffer: SubscribeBuffer | None = None
        # The handler of the command being run while it waits for a durable commit.
        self.parked: Handler | None = None
        # The command being run and when it started (metrics).
        self.current: Command | None = None
        self.started = 0.0
        # A command that may have moved the session's deadlines ran: reschedule the timer.
        self.timers_stale = False
        # Data frames are parsed by the reader until the first frame that needs websockets.
        self.delayed: list[bytes] | None = None
        limits = [n for n in (ws.max_message_size, ws.max_fragment_size) if n is not None]
        self.reader = FrameReader(self._on_message, self.codec.binary,
                                  min(limits) if limits else None, ws.state is State.OPEN)

    @property
    def peer(self) -> str:
        """The client's address as ``host:port`` (for logs); ``-`` when unknown."""
        addr = self.transport.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            return f"{addr[0]}:{addr[1]}"
        return "-"

    # ---- input ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader.active:
            data = reader.release(data) if self.closed else reader.feed(data)
            if not data:
                return
        ws = self.ws
        ws.receive_data(data)
        for frame in ws.events_received():
            if not isinstance(frame, Frame):  # after the handshake only frames arrive
                continue
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

    def _on_message(self, data: bytes) -> bool:
        """Queue and run the commands of one client message; True once the connection is
        closed (the frame reader then hands the rest of the bytes to websockets)."""
        try:
            commands = self.session.decode(data)
        except DisconnectError as exc:
            self.close(exc.disconnect)
            return True
        self.pending.extend(commands)
        if len(self.pending) > MAX_PENDING_COMMANDS:
            self.close(codes.TOO_MANY_REQUESTS_DISCONNECT)
            return True
        if self.task is None and self.parked is None:
            self._advance()
        return self.closed

    def _advance(self) -> None:
        """Run queued commands in order, each as far as it goes without awaiting: until
        one is handed to a task or parked on a durable commit, or none is left."""
        session = self.session
        pending = self.pending
        try:
            while pending and not self.closed and self.task is None and self.parked is None:
                cmd = pending.popleft()
                self.current = cmd
                self.started = time.perf_counter()
                self._resume(session.handle(cmd, time.time()), None, None)
            if self.timers_stale and self.task is None and self.parked is None:
                self.timers_stale = False
                self.reschedule()
        except Exception:
            log.exception("command processing failed for %s", self.client_id)
            self.close(codes.SERVER_ERROR)

    def _resume(self, gen: Handler, value: object, error: BaseException | None) -> None:
        """Step the current command's handler with ``value`` (or ``error``) until it
        finishes, parks on a durable commit, or yields an effect a task must await."""
        while True:
            try:
                effect = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                self._finish(stop.value)
                return
            except DisconnectError as exc:
                self.close(exc.disconnect)
                return
            error = None
            if type(effect) is effects.PublishToChannel:
                try:
                    if self.node.publish_nowait(effect, self._published):
                        self.parked = gen
                        return
                except ClientError as exc:
                    error = exc  # e.g. 111, queue full: the handler turns it into the reply
                    continue
                except Exception:
                    # As Node.drive does with a failing effect.
                    log.exception("effect %s failed", type(effect).__name__)
                    error = codes.error(codes.INTERNAL)
                    continue
            self.task = asyncio.get_running_loop().create_task(self._drive(gen, effect))
            return

    def _published(self, position: StreamPosition | None, error: ClientError | None) -> None:
        """The parked publish committed (or failed for good): reply, then go on."""
        gen = self.parked
        self.parked = None
        if error is None:
            self.node.metrics.publication("client")
        if gen is None or self.closed:
            return
        try:
            self._resume(gen, position, error)
        except Exception:
            log.exception("command processing failed for %s", self.client_id)
            self.close(codes.SERVER_ERROR)
            return
        self._advance()

    async def _drive(self, gen: Handler, effect: effects.Effect) -> None:
        """Await the rest of a command whose effect cannot be performed synchronously."""
        try:
            reply = await self.node.drive(gen, self, effect)
        except DisconnectError as exc:
            self.close(exc.disconnect)
            return
        except Exception:
            log.exception("command processing failed for %s", self.client_id)
            self.close(codes.SERVER_ERROR)
            return
        finally:
            self.task = None
        if not self.closed:
            self._finish(reply)
            self._advance()

    def _finish(self, reply: Reply | None) -> None:
        """The current command is done: write its reply, count it."""
        node = self.node
        session = self.session
        if reply is not None and not self.closed:
            if reply.error is not None:
                node.metrics.errors.labels(str(reply.error.code)).inc()
            self.write_frame(build_frame(session.encode(reply), self.codec.binary))
        if self.buffering is not None:
            self.flush_buffered()
        cmd = self.current
        if cmd is not None:
            self.current = None
            method = _method(cmd)
            node.metrics.command_done(method, time.perf_counter() - self.started)
            # A publish moves none of the session's deadlines (pings, expiries); anything
            # else may have (connect, refresh, pong, subscribe with expiry).
            if method != "publish":
                self.timers_stale = True
        if session.failed:
            # Centrifugo stops reading after a failed connect; the SDK closes.
            self.pending.clear()

    # ---- subscribe-time buffering -----------------------------------------------------

    def start_buffering(self, channel: str) -> None:
        """Hold this channel's pushes until the subscribe reply has been written, so a
        publication landing while history is read is neither lost nor sent first."""
        buffer = self.buffering
        if buffer is None:
            buffer = self.subscribe_buffer
            if buffer is None:
                buffer = self.subscribe_buffer = SubscribeBuffer()
            self.buffering = buffer
        buffer.start(channel)

    def set_cutoff(self, channel: str, offset: int) -> None:
        """The subscribe reply covers the stream up to ``offset`` (top or last recovered)."""
        buffer = self.subscribe_buffer
        if buffer is None:
            buffer = self.subscribe_buffer = SubscribeBuffer()
        buffer.set_cutoff(channel, offset)

    def flush_buffered(self) -> None:
        """After a reply: send held pushes the reply did not cover; drop those of channels
        whose subscribe failed."""
        buffer = self.buffering
        if buffer is None:
            return
        self.buffering = None
        frames = buffer.release(self.session.subs)
        if buffer.idle:
            # Tens of thousands of idle connections each keeping an empty buffer (and its
            # dicts' tables) cost ~0.25 KiB apiece: the next subscribe makes a new one.
            self.subscribe_buffer = None
        for frame in frames:
            self.write_frame(frame)

    # ---- output -----------------------------------------------------------------------

    def write_frame(self, frame: bytes) -> None:
        """Write a ready frame; a subscriber that does not read is cut off with 3008.
        With ``client.write_delay`` the frame waits (in order) for the node's next flush."""
        if self.closed:
            return
        delayed = self.delayed
        if delayed is not None:
            delayed.append(frame)
            return
        if self.node.write_delay:
            self.delayed = [frame]
            self.node.delay_write(self)
            return
        transport = self.transport
        if transport.get_write_buffer_size() > self.node.write_buffer_limit:
            self.close(codes.SLOW)
            return
        transport.write(frame)

    def flush_delayed(self) -> None:
        """Write the held frames in one go (the node's flush, or before a close)."""
        frames = self.delayed
        if frames is None:
            return
        self.delayed = None
        if self.closed:
            return
        transport = self.transport
        if transport.get_write_buffer_size() > self.node.write_buffer_limit:
            self.close(codes.SLOW)
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

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
        held = self.delayed
        if held and not self.transport.is_closing():
            # Frames held by client.write_delay go out before the close frame.
            self.delayed = None
            self.transport.write(b"".join(held))
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
