"""The extension seam (gateway/extension.py) against a real node: a small product registers
an RPC method, an HTTP prefix, an access provider and both listeners, and uses the engine
only through its port; the node refuses registrations that would shadow each other."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from centrifuge import Client

from gateway.compose import build_node
from gateway.config import build_settings
from gateway.extension import FALLBACK_PREFIX, Engine, Extension, Registration
from gateway.http import Answer, RequestHead
from gateway.server import serve
from tests.conftest import API_KEY, Server, standard_settings, stop_server
from tests.gateway.chat.test_rbac import PERMISSION_DENIED, subscribe_refused
from tests.gateway.test_durable import durable_settings
from tests.sdk import SubEvents, eventually, uniq

ROOT = Path(__file__).resolve().parents[2]


class Probe:
    """A product in a few lines: what it heard, and an engine port it uses."""

    name = "probe"

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.online: list[tuple[str, bool]] = []
        self.committed: list[tuple[str, int]] = []
        self.lifecycle: list[str] = []

    def register(self, engine: Engine) -> Registration:
        self.engine = engine
        return Registration(
            rpc_methods={"probe.echo": self._echo},
            http_prefixes={"/probe/": self._http},
            access_checks={"probe": self._check},
            on_user_online=lambda user, online: self.online.append((user, online)),
            on_committed=lambda channel, pub: self.committed.append((channel, pub.offset)))

    async def start(self) -> None:
        self.lifecycle.append("start")

    async def stop(self) -> None:
        self.lifecycle.append("stop")

    async def _echo(self, user: str, client: str, data: bytes) -> bytes:
        assert self.engine is not None
        return orjson.dumps({"user": user, "params": orjson.loads(data),
                             "here": self.engine.connected_here(user),
                             "info": orjson.loads(self.engine.connection_info(client) or b"null")})

    async def _http(self, head: RequestHead, body: bytes) -> Answer:
        assert self.engine is not None
        channel = head.path.removeprefix("/probe/")
        position = await self.engine.publish(channel, body, source="api")
        state = await self.engine.history(channel, 10)
        return 200, orjson.dumps({"offset": position.offset, "history": len(state.publications)}), \
            "application/json"

    async def _check(self, user: str, channel: str, action: str) -> bool:
        return channel.endswith(":open")


def _settings(dsn: str) -> dict[str, Any]:
    settings = durable_settings(dsn)
    settings["channel"]["namespaces"].append({"name": "guarded", "allow_subscribe_for_client": True,
                                              "acl": "probe"})
    return settings


async def _heard(events: list[Any], event: Any) -> bool:
    return event in events


async def _start(settings: dict[str, Any], extensions: list[Extension]) -> Server:
    node = build_node(build_settings(settings), extensions=extensions)
    await node.start()
    server = await serve(node, "127.0.0.1", 0)
    return Server(node, server, server.sockets[0].getsockname()[1])


async def test_an_extension_serves_rpc_http_access_and_hears_events(empty_dsn: str) -> None:
    probe = Probe()
    srv = await _start(_settings(empty_dsn), [probe])
    assert probe.lifecycle == ["start"] and srv.node.extensions == {"probe": probe}
    client = Client(srv.ws_url, token=srv.token("alice", info={"team": "core"}))
    try:
        await client.connect()
        await eventually(lambda: _heard(probe.online, ("alice", True)))
        # RPC: registered by the extension, called through the real SDK.
        result = await client.rpc("probe.echo", {"x": 1})
        assert result.data == {"user": "alice", "params": {"x": 1}, "here": True,
                               "info": {"team": "core"}}
        # HTTP: the server routes the prefix to the extension, which publishes through the
        # port into a durable channel; the commit listener hears it.
        channel = uniq("log:probe")
        async with aiohttp.ClientSession() as http, http.post(
                f"{srv.http_url}/probe/{channel}", data=b'{"n":1}') as resp:
            assert resp.status == 200
            assert await resp.json() == {"offset": 1, "history": 1}
        await eventually(lambda: _heard(probe.committed, (channel, 1)))
        # Access: the namespace's acl names the extension's provider.
        events = SubEvents()
        await client.new_subscription("guarded:open", events).subscribe()
        await events.next("subscribed")
        assert await subscribe_refused(client, "guarded:shut") == PERMISSION_DENIED
        # The engine's own routes are still the engine's.
        async with aiohttp.ClientSession() as http, http.get(f"{srv.http_url}/health") as resp:
            assert resp.status == 200
        await client.disconnect()
        await eventually(lambda: _heard(probe.online, ("alice", False)))
    finally:
        await client.disconnect()
        await stop_server(srv)
    assert probe.lifecycle == ["start", "stop"]


@pytest.mark.parametrize(("registration", "message"), [
    (Registration(rpc_methods={"whoami": lambda u, c, d: asyncio.sleep(0, b"")}), "RPC methods"),
    (Registration(http_prefixes={"/api/x": lambda h, b: asyncio.sleep(0, (200, b"", ""))}), "overlaps"),
    (Registration(http_prefixes={"/health/x": lambda h, b: asyncio.sleep(0, (200, b"", ""))}), "overlaps"),
    (Registration(http_prefixes={"v2/": lambda h, b: asyncio.sleep(0, (200, b"", ""))}), "start with"),
])
def test_install_refuses_what_would_shadow_the_engine(registration: Registration, message: str) -> None:
    class Greedy:
        name = "greedy"

        def register(self, engine: Engine) -> Registration:
            return registration

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

    node = build_node(build_settings(standard_settings()), extensions=[])
    with pytest.raises(ValueError, match=message):
        node.install(Greedy())
    assert "greedy" not in node.extensions


def test_two_extensions_cannot_share_a_name_or_a_prefix() -> None:
    node = build_node(build_settings(standard_settings()), extensions=[Probe()])
    with pytest.raises(ValueError, match="already installed"):
        node.install(Probe())
    other = Probe()
    other.name = "other"  # type: ignore[misc]  # the same registrations under another name
    with pytest.raises(ValueError, match="RPC methods already registered"):
        node.install(other)


def test_the_longest_prefix_wins() -> None:
    async def outer(head: RequestHead, body: bytes) -> Answer:
        return 200, b"outer", "text/plain"

    async def inner(head: RequestHead, body: bytes) -> Answer:
        return 200, b"inner", "text/plain"

    class Outer:
        name = "outer"

        def register(self, engine: Engine) -> Registration:
            return Registration(http_prefixes={"/x/": outer})

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

    node = build_node(build_settings(standard_settings()), extensions=[Outer()])
    # A prefix inside another extension's is refused too: one owner per subtree.
    with pytest.raises(ValueError, match="overlaps"):
        node.install(type("Inner", (Outer,), {"name": "inner", "register":
                          lambda self, engine: Registration(http_prefixes={"/x/y/": inner})})())
    assert node.http_handler("/x/anything") is outer
    assert node.http_handler("/y/") is None


def test_the_fallback_prefix_takes_only_what_nothing_else_answers() -> None:
    """``/`` (a web client) is the one prefix allowed to overlap: it gets the paths no other
    prefix takes, never the engine's own, and only one extension may hold it."""
    async def site(head: RequestHead, body: bytes) -> Answer:
        return 200, b"site", "text/plain"

    async def api(head: RequestHead, body: bytes) -> Answer:
        return 200, b"api", "text/plain"

    def extension(name: str, prefixes: dict[str, Any]) -> Any:
        return type(name, (), {"name": name, "register": lambda self, engine: Registration(http_prefixes=prefixes),
                               "start": lambda self: asyncio.sleep(0), "stop": lambda self: asyncio.sleep(0)})()

    node = build_node(build_settings(standard_settings()),
                      extensions=[extension("site", {FALLBACK_PREFIX: site}), extension("api", {"/v9/": api})])
    assert node.http_handler("/v9/things") is api
    assert node.http_handler("/") is site
    assert node.http_handler("/assets/app.js") is site
    for engine_path in ("/health", "/metrics", "/api/publish", "/connection/websocket"):
        assert node.http_handler(engine_path) is None, engine_path
    with pytest.raises(ValueError, match="overlaps"):
        node.install(extension("site2", {FALLBACK_PREFIX: site}))


async def test_without_chat_v1_says_the_product_is_off(server: Server) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            f"{server.http_url}/v1/channels", headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": {"code": "not_found",
                                               "message": "the chat product is not enabled"}}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_chat_product_sees_the_engine_only_through_the_port() -> None:
    engine_inside = ("gateway.node", "gateway.connection", "gateway.broker", "gateway.server", "gateway.api",
                     "gateway.hub", "gateway.durable")
    # The chat and the web client (both extensions).
    for path in sorted([*(ROOT / "gateway" / "chat").glob("*.py"), *(ROOT / "gateway" / "web").glob("*.py")]):
        bad = {m for m in _imports(path) if m.startswith(engine_inside)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        # A node's internals, reached through any object: its tables, tasks, broker, users,
        # a connection's session.
        reach = re.search(r"\bnode\.|\._spawn\b|\.broker\b|(?<!search)\.users\b(?!\.upsert)|\.session\b|"
                          r"rpc_handlers|access_providers", path.read_text())
        assert reach is None, f"{path.relative_to(ROOT)} reaches into {reach.group()}"


def test_node_and_server_do_not_name_a_product() -> None:
    for name in ("node.py", "server.py"):
        text = (ROOT / "gateway" / name).read_text()
        assert "chat" not in text, name
