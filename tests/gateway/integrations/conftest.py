"""A chat gateway with the integrations on, reachable at a known public URL (apps get
response URLs and webhook URLs pointing at it), plus helpers to register apps and to run
real ``slack_bolt`` apps on local ports."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from slack_bolt import App
from slack_bolt.app.app import SlackAppDevelopmentServer
from slack_sdk import WebClient

from gateway.compose import build_node
from gateway.server import serve
from tests.conftest import Server, create_database, drop_database
from tests.gateway.chat.conftest import ChatEnv, chat_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class IntegEnv(ChatEnv):
    async def app(self, name: str, **spec: Any) -> dict[str, Any]:
        """Register an app with the API key; the answer has bot_token and signing_secret."""
        r = await self.admin("POST", "/v1/apps", {"name": name, **spec})
        assert r.status == 201, r.body
        return r.body

    async def channel(self, owner: str, *members: str, private: bool = False) -> str:
        import secrets

        body = await self.ok("POST", "/v1/channels", owner,
                             {"name": f"c-{secrets.token_hex(4)}", "private": private,
                              "members": list(members)})
        return body["channel"]["id"]

    @property
    def slack_api(self) -> str:
        return f"{self.srv.http_url}/slack/api/"

    def web(self, token: str) -> WebClient:
        return WebClient(token=token, base_url=self.slack_api)


@pytest.fixture(scope="session")
async def integ(pg_dsn: str) -> AsyncIterator[IntegEnv]:
    dsn = await create_database(pg_dsn, "integ")
    port = free_port()
    settings = chat_settings(dsn, integrations__public_url=f"http://127.0.0.1:{port}",
                             integrations__hook_burst=5, integrations__hook_rate=0.5,
                             integrations__command_timeout=2.0,
                             integrations__event_backoff=0.2, integrations__event_backoff_max=0.5,
                             integrations__event_max_attempts=10, integrations__event_poll_interval=0.1,
                             integrations__huddle_url_template="https://meet.example.test/{channel}/{id}")
    node = build_node(settings)
    await node.start()
    server = await serve(node, "127.0.0.1", port)
    env = IntegEnv(Server(node, server, port), dsn)
    try:
        yield env
    finally:
        await env.sdk.close()
        server.close()
        await node.stop()
        await server.wait_closed()
        await drop_database(dsn)


class BoltRunner:
    """A real slack_bolt App (request verification on) on a local port, in a thread."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.server = SlackAppDevelopmentServer(port=0, path="/slack/events", app=app,
                                                http_server_logger_enabled=False)
        self.port = self.server._server.server_address[1]
        self.thread = threading.Thread(target=self.server._server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    def stop(self) -> None:
        self.server._server.shutdown()
        self.server._server.server_close()


@pytest.fixture
async def bolt(integ: IntegEnv) -> AsyncIterator[Callable[..., Any]]:
    """make(token, signing_secret, setup) -> BoltRunner; setup(app) adds listeners.
    The App is built in a thread: it calls auth.test on SENTchat (token verification on)."""
    started: list[BoltRunner] = []

    async def make(token: str, signing_secret: str, setup: Callable[[App], None], **options: Any) -> BoltRunner:
        def build() -> App:
            return App(client=integ.web(token), signing_secret=signing_secret, **options)

        app = await asyncio.to_thread(build)
        setup(app)
        runner = BoltRunner(app)
        started.append(runner)
        return runner

    yield make
    for r in started:
        r.stop()
