"""The bare fan-out reference server of `sentchat bench saturate --reference`.

    python -m bench.reference --port P --api-port Q [--host 127.0.0.1]

One worker process: the `websockets` asyncio server on uvloop, sharing port P with its
sibling workers (SO_REUSEPORT), plus a private HTTP port Q for publications. It has no
protocol, no broker and no storage — it is the ceiling of what this machine does for the same
load, so SENTchat's figures can be stated as ratios to it:

- a WebSocket at any path; the query ``u=<user>`` names the connection's personal channel
  ``personal:#<user>``; its first text message (the bench's pipelined Centrifugo connect and
  subscribe commands) is scanned for ``subscribe`` channels, then it gets one reply per
  command id so the bench client sees the same handshake as with SENTchat;
- ``POST /api/publish`` on the private port with ``{"channel": C, "data": D}`` writes
  ``{"push":{"channel":C,"pub":{"data":D}}}`` — encoded and framed once, the same bytes
  written to each subscriber's transport (``--fanout broadcast``: `websockets.broadcast`,
  which frames it per connection) — to every local subscriber of C
  and answers ``{"result":{}}``; ``POST /api/batch`` (``{"commands":[{"publish":{…}}, …]}``)
  does that for each command in order. Pipelined requests are answered in order. The bench
  posts each publication to every worker's port (there is no broker to carry it between
  workers).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import struct
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.protocol import OPEN

Subscribers = dict[str, set[ServerConnection]]


def make_handler(subs: Subscribers) -> Any:
    """The per-connection coroutine: register, answer the handshake, wait for the close."""

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        user = parse_qs(urlsplit(path).query).get("u", [""])[0]
        channels = [f"personal:#{user}"] if user else []
        replies: list[bytes] = []
        try:
            first = await ws.recv()
        except Exception:
            return
        for line in (first.encode() if isinstance(first, str) else first).split(b"\n"):
            try:
                cmd = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            sub = cmd.get("subscribe")
            if sub is not None:
                channels.append(sub["channel"])
                replies.append(b'{"id":%d,"subscribe":{}}' % cmd.get("id", 0))
            elif "connect" in cmd:
                replies.append(b'{"id":%d,"connect":{}}' % cmd.get("id", 0))
        for ch in channels:
            subs.setdefault(ch, set()).add(ws)
        try:
            await ws.send(b"\n".join(replies).decode())
            async for _ in ws:  # nothing else is expected; keep reading for the close
                pass
        except Exception:  # noqa: S110 - a client aborting its socket is normal here
            pass
        finally:
            for ch in channels:
                members = subs.get(ch)
                if members is not None:
                    members.discard(ws)
                    if not members:
                        del subs[ch]

    return handler


FANOUT = "frame"  # or "broadcast": set by --fanout


def _fan_out(subs: Subscribers, msg: dict[str, Any]) -> None:
    channel = msg["channel"]
    members = subs.get(channel)
    if not members:
        return
    push = orjson.dumps({"push": {"channel": channel, "pub": {"data": msg["data"]}}})
    if FANOUT == "broadcast":
        broadcast(members, push.decode())
        return
    # One unmasked text frame built once, the same bytes written to every subscriber's
    # transport (as SENTchat's hub does); websockets still runs each connection's
    # handshake, pings and close.
    n = len(push)
    head = bytes((0x81, n)) if n < 126 else (
        struct.pack("!BBH", 0x81, 126, n) if n < 65536 else struct.pack("!BBQ", 0x81, 127, n))
    frame = head + push
    for ws in list(members):
        if ws.protocol.state is OPEN:
            ws.transport.write(frame)


async def _publish_api(subs: Subscribers, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
    """Keep-alive HTTP/1.1 (pipelined requests answered in order): POST /api/publish, or
    POST /api/batch with {"commands": [{"publish": {...}}, ...]} run in order."""
    def response(body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body)

    ok_response = response(b'{"result":{}}')
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            msg = orjson.loads(body)
            if head.startswith(b"POST /api/batch "):
                replies = []
                for cmd in msg["commands"]:
                    _fan_out(subs, cmd["publish"])
                    replies.append(b'{"publish":{}}')
                writer.write(response(b'{"replies":[' + b",".join(replies) + b"]}"))
            else:
                _fan_out(subs, msg)
                writer.write(ok_response)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int, api_port: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    # Same collector setting as the gateway (gateway/cli.py): full collections over tens of
    # thousands of live objects freeze the loop.
    gc.set_threshold(50_000, 50, 100)
    subs: Subscribers = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api = await asyncio.start_server(lambda r, w: _publish_api(subs, r, w), "127.0.0.1", api_port)
    async with serve(make_handler(subs), host, port, reuse_port=True, backlog=4096,
                     compression=None, ping_interval=25, ping_timeout=8, max_size=65536):
        await stop.wait()
    api.close()


def cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.reference", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-port", type=int, required=True)
    ap.add_argument("--fanout", choices=("frame", "broadcast"), default="frame",
                    help="frame: the push framed once, the same bytes written to every "
                         "subscriber's transport (default); broadcast: websockets.broadcast(), "
                         "which frames it again for every connection")
    args = ap.parse_args(argv)
    global FANOUT
    FANOUT = args.fanout
    uvloop.run(main(args.host, args.port, args.api_port))


if __name__ == "__main__":
    cli()
