"""The `sentchat` command run for real, as subprocesses.

`sentchat token` output is checked with PyJWT; `sentchat serve` is driven over the network
(GET /health, the HTTP API, the centrifuge-python client) and stopped with SIGTERM. Every
subprocess is killed in a `finally`; timeouts below only guard against hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectingContext,
    PublicationContext,
    ReplyError,
    SubscribedContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)

REPO = Path(__file__).resolve().parents[2]
SENTCHAT = Path(sys.executable).with_name("sentchat")
# Guards against hangs only.
WAIT = 20.0
# The default config has durable namespaces: a first start of the embedded PostgreSQL
# (initdb, creating its system user) can take this long on a loaded 2-core machine.
EMBEDDED_PG_WAIT = 120.0
SECRET = "cli-test-secret-0123456789-0123456789-abcdef"


def command(*args: str) -> list[str]:
    """The installed console script when present (tests the entry point), else -m."""
    if SENTCHAT.exists():
        return [str(SENTCHAT), *args]
    return [sys.executable, "-m", "gateway.cli", *args]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The session's PostgreSQL (tests/conftest.py), so that servers started here do not each
# initialise an embedded one; set by the autouse fixture below.
_session_dsn = ""


@pytest.fixture(autouse=True)
def _use_session_postgres(pg_dsn: str) -> None:
    global _session_dsn
    _session_dsn = pg_dsn


def cli_env(data_dir: Path, *, embedded_pg: bool = False, **extra: str) -> dict[str, str]:
    """The test runner's environment without any SENTCHAT_* setting, plus ``extra``; durable
    namespaces use the session's PostgreSQL unless ``embedded_pg``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTCHAT_")}
    env["SENTCHAT_DATA_DIR"] = str(data_dir)
    if not embedded_pg and _session_dsn:
        env["SENTCHAT_POSTGRES_DSN"] = _session_dsn
    env.update(extra)
    return env


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


async def run(*args: str, env: dict[str, str]) -> Result:
    """Run the CLI to completion."""
    proc = await asyncio.create_subprocess_exec(
        *command(*args), cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def http(port: int, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request from a worker thread (the loop stays free for the clients)."""

    def call() -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method, headers=headers or {})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await asyncio.to_thread(call)


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    port: int
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    async def stop(self) -> int:
        """SIGTERM; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), WAIT)


@asynccontextmanager
async def serving(*args: str, port: int, env: dict[str, str], tmp: Path,
                  wait: float = WAIT) -> AsyncIterator[Served]:
    """`sentchat serve ARGS`, yielded once GET /health answers 200 on ``port``."""
    stderr_path = tmp / f"serve-{port}.log"
    with stderr_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *command("serve", *args), cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=log, stderr=log)
    served = Served(proc, port, stderr_path)
    try:
        deadline = time.monotonic() + wait
        while True:
            if proc.returncode is not None:
                pytest.fail(f"sentchat serve exited with {proc.returncode}:\n{served.stderr}")
            try:
                status, body = await http(port, "GET", "/health")
            except OSError:
                status, body = 0, b""
            if status == 200:
                assert json.loads(body)["status"] == "ok"
                break
            if time.monotonic() > deadline:
                pytest.fail(f"/health never answered on port {port}:\n{served.stderr}")
            await asyncio.sleep(0.05)
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
            with suppress(ProcessLookupError):
                await proc.wait()


class ClientEvents(ClientEventHandler):
    def __init__(self) -> None:
        self.connecting_codes: list[int] = []

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.connecting_codes.append(ctx.code)


class SubEvents(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.outcome: asyncio.Future[str | int] = asyncio.get_running_loop().create_future()
        self.pubs: asyncio.Queue[PublicationContext] = asyncio.Queue()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        if not self.outcome.done():
            self.outcome.set_result("subscribed")

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        if not self.outcome.done():
            self.outcome.set_result(ctx.code)

    async def on_publication(self, ctx: PublicationContext) -> None:
        await self.pubs.put(ctx)


# ---- sentchat token ---------------------------------------------------------------------


async def test_token_prints_verifiable_jwt(tmp_path: Path) -> None:
    env = cli_env(tmp_path, SENTCHAT_TOKEN_HMAC_SECRET=SECRET)
    before = int(time.time())
    res = await run("token", "--user", "alice", "--ttl", "60", "--info", '{"a":1}', env=env)
    assert res.rc == 0, res.stderr
    token = res.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["info"] == {"a": 1}
    assert before + 60 <= claims["exp"] <= int(time.time()) + 60
    assert "channel" not in claims
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "some-other-secret-0123456789-0123456789", algorithms=["HS256"])


async def test_token_without_ttl_has_no_exp(tmp_path: Path) -> None:
    res = await run("token", "--user", "bob", env=cli_env(tmp_path, SENTCHAT_TOKEN_HMAC_SECRET=SECRET))
    assert res.rc == 0, res.stderr
    assert jwt.decode(res.stdout.strip(), SECRET, algorithms=["HS256"]) == {"sub": "bob"}


async def test_token_channel_claim(tmp_path: Path) -> None:
    env = cli_env(tmp_path, SENTCHAT_TOKEN_HMAC_SECRET=SECRET)
    res = await run("token", "--user", "alice", "--channel", "secret:room", "--ttl", "60", env=env)
    assert res.rc == 0, res.stderr
    claims = jwt.decode(res.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["channel"] == "secret:room"
    assert claims["sub"] == "alice"


async def test_token_channel_uses_subscription_secret(tmp_path: Path) -> None:
    config = tmp_path / "sentchat.toml"
    config.write_text(f'[client.token]\nhmac_secret_key = "{SECRET}"\n'
                      '[client.subscription_token]\nhmac_secret_key = "sub-secret-0123456789-0123456789-xyz"\n')
    env = cli_env(tmp_path)
    res = await run("token", "--config", str(config), "--user", "a", "--channel", "secret:x", env=env)
    assert res.rc == 0, res.stderr
    jwt.decode(res.stdout.strip(), "sub-secret-0123456789-0123456789-xyz", algorithms=["HS256"])
    res = await run("token", "--config", str(config), "--user", "a", env=env)
    jwt.decode(res.stdout.strip(), SECRET, algorithms=["HS256"])


async def test_token_bad_info_json(tmp_path: Path) -> None:
    env = cli_env(tmp_path, SENTCHAT_TOKEN_HMAC_SECRET=SECRET)
    res = await run("token", "--user", "alice", "--info", "{not json", env=env)
    assert res.rc == 2
    assert "--info" in res.stderr and "JSON" in res.stderr
    assert res.stdout == ""


async def test_token_never_invents_a_secret(tmp_path: Path) -> None:
    """Run away from the server's data dir, `token` refuses (saying where it looked and how
    to point it at the server's secret) instead of signing with a new, useless secret."""
    env = cli_env(tmp_path)
    res = await run("token", "--user", "alice", env=env)
    assert res.rc == 2 and res.stdout == ""
    assert "secrets.json" in res.stderr and "SENTCHAT_TOKEN_HMAC_SECRET" in res.stderr
    assert not list(tmp_path.rglob("secrets.json")), "nothing generated"


async def test_token_requires_user(tmp_path: Path) -> None:
    res = await run("token", env=cli_env(tmp_path, SENTCHAT_TOKEN_HMAC_SECRET=SECRET))
    assert res.rc == 2
    assert "--user" in res.stderr


# ---- sentchat serve: configuration errors ---------------------------------------------------


@pytest.mark.parametrize(("toml", "key"), [
    ('[http]\nbogus = 1\n', "http.bogus"),
    ('[nonsense]\nx = 1\n', "nonsense"),
    ('[client.token]\nhmac_secret_key = "x"\nrsa_key = "y"\n', "client.token.rsa_key"),
    ('[[channel.namespaces]]\nname = "chat"\nhistory_sise = 10\n', "channel.namespaces[0].history_sise"),
])
async def test_serve_unknown_key(tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    res = await run("serve", "--config", str(config), "--port", str(free_port()), env=cli_env(tmp_path))
    assert res.rc != 0
    assert key in res.stderr
    assert "unknown" in res.stderr


@pytest.mark.parametrize(("toml", "key"), [
    ('[http]\nport = "eighty"\n', "http.port"),
    ('[client]\nping_interval = "soon"\n', "client.ping_interval"),
    ('[client]\nchannel_limit = "many"\n', "client.channel_limit"),
    ('[[channel.namespaces]]\nname = "chat"\npresence = "yes"\n', "channel.namespaces[0].presence"),
])
async def test_serve_wrong_type_names_key(tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    # No --port: the flag would override (and so hide) a bad http.port in the file.
    res = await run("serve", "--config", str(config), env=cli_env(tmp_path))
    assert res.rc != 0
    assert key in res.stderr


async def test_serve_missing_config_file(tmp_path: Path) -> None:
    res = await run("serve", "--config", str(tmp_path / "nope.toml"), env=cli_env(tmp_path))
    assert res.rc == 2
    assert "nope.toml" in res.stderr


async def test_serve_workers_share_the_port_over_embedded_valkey(tmp_path: Path) -> None:
    """`SENTCHAT_WORKERS=2` (like `--workers 2`) with no Redis configured: an embedded Valkey
    is started, both workers answer on one port and register as nodes, SIGTERM stops all."""
    port = free_port()
    env = cli_env(tmp_path, SENTCHAT_WORKERS="2", SENTCHAT_API_KEY="k")
    async with serving("--port", str(port), port=port, env=env, tmp=tmp_path) as served:
        names: set[str] = set()
        deadline = time.monotonic() + WAIT
        while len(names) < 2 and time.monotonic() < deadline:
            status, body = await http(port, "POST", "/api/info", {}, {"X-API-Key": "k"})
            assert status == 200
            names = {n["name"] for n in json.loads(body)["result"]["nodes"]}
            await asyncio.sleep(0.1)
        assert len(names) == 2, names
        assert await served.stop() == 0


# ---- sentchat serve: running ------------------------------------------------------------------


async def test_serve_port_flag_generated_secret_shared_with_token(tmp_path: Path) -> None:
    """The README's first command: embedded defaults, nothing configured — the gateway
    generates its secrets and starts its own PostgreSQL for the durable namespaces."""
    port = free_port()
    env = cli_env(tmp_path / "data", embedded_pg=True)
    async with serving("--port", str(port), env=env, port=port, tmp=tmp_path,
                       wait=EMBEDDED_PG_WAIT) as served:
        assert "embedded PostgreSQL started" in served.stderr
        secrets_file = tmp_path / "data" / "secrets.json"
        assert secrets_file.exists()
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        assert "generated HMAC secret" in served.stderr

        # Same data dir, no secret configured: `sentchat token` signs with the generated one.
        res = await run("token", "--user", "alice", "--ttl", "300", "--info", '{"n":"Alice"}', env=env)
        assert res.rc == 0, res.stderr
        token = res.stdout.strip()
        assert jwt.decode(token, json.loads(secrets_file.read_text())["hmac_secret_key"],
                          algorithms=["HS256"])["sub"] == "alice"

        events = ClientEvents()
        client = Client(served.ws_url, events=events, token=token, proxy=None)
        try:
            await client.connect()
            await client.ready(timeout=WAIT)
            assert (await client.rpc("whoami", {})).data["user"] == "alice"
            # The chat product is on by default: a channel, its durable stream, a message.
            channel = (await client.rpc("channels.create", {"name": "cli"})).data["channel"]
            sub_events = SubEvents()
            sub = client.new_subscription(channel["subscription"], sub_events)
            await sub.subscribe()
            assert await asyncio.wait_for(sub_events.outcome, WAIT) == "subscribed"
            sent = (await client.rpc("messages.send", {"channel_id": channel["id"], "text": "hi"})).data
            pub = await asyncio.wait_for(sub_events.pubs.get(), WAIT)
            while pub.pub.data["type"] != "message.created":  # member.joined comes first
                pub = await asyncio.wait_for(sub_events.pubs.get(), WAIT)
            assert pub.pub.data["message"]["text"] == "hi"
            assert pub.pub.data["message"]["id"] == sent["message"]["id"]
            # Clients cannot publish into chat channels themselves (103 permission denied).
            with pytest.raises(ReplyError) as err:
                await sub.publish({"text": "forged"})
            assert err.value.code == 103

            # The API key was generated too and is enforced.
            api_key = json.loads(secrets_file.read_text())["api_key"]
            status, _ = await http(port, "POST", "/api/info", {}, {"X-API-Key": "wrong"})
            assert status == 401
            status, body = await http(port, "POST", "/api/info", {}, {"X-API-Key": api_key})
            assert status == 200 and json.loads(body)["result"]["nodes"][0]["num_clients"] == 1

            # Shutdown with a client still connected: it is told 3001 and the process exits 0.
            assert await served.stop() == 0
            assert "shutting down" in served.stderr
        finally:
            await client.disconnect()
        assert 3001 in events.connecting_codes


async def test_serve_port_from_env(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(tmp_path, SENTCHAT_HTTP_PORT=str(port), SENTCHAT_TOKEN_HMAC_SECRET=SECRET,
                  SENTCHAT_API_KEY="env-api-key",
                  SENTCHAT_CHAT__ENCRYPTION_KEYS='{ k1 = "%s" }' % ("A" * 43 + "="),
                  SENTCHAT_CHAT__ENCRYPTION_KEY_ID="k1")
    async with serving(env=env, port=port, tmp=tmp_path) as served:
        # Secret, API key and chat encryption key configured: nothing generated.
        assert not (tmp_path / "secrets.json").exists()
        status, _ = await http(port, "POST", "/api/info", {}, {"X-API-Key": "env-api-key"})
        assert status == 200
        token = jwt.encode({"sub": "carol"}, SECRET, algorithm="HS256")
        client = Client(served.ws_url, token=token, proxy=None)
        try:
            await client.connect()
            await client.ready(timeout=WAIT)
            assert (await client.rpc("whoami", {})).data["user"] == "carol"
        finally:
            await client.disconnect()
        assert await served.stop() == 0


async def test_serve_port_flag_beats_env(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(tmp_path, SENTCHAT_HTTP_PORT=str(free_port()))
    async with serving("--port", str(port), env=env, port=port, tmp=tmp_path) as served:
        assert await served.stop() == 0


CENTRIFUGO_SECRET = "centrifugo-secret-0123456789-0123456789"
CENTRIFUGO_API_KEY = "centrifugo-api-key"


def centrifugo_config(port: int) -> dict[str, Any]:
    return {
        "client": {
            "token": {"hmac_secret_key": CENTRIFUGO_SECRET},
            "allowed_origins": ["*"],
        },
        "http_api": {"key": CENTRIFUGO_API_KEY},
        "http_server": {"port": port},
        "channel": {
            "namespaces": [
                {"name": "news", "history_size": 10, "history_ttl": "300s",
                 "force_recovery": True, "presence": True,
                 "allow_subscribe_for_client": True, "allow_history_for_subscriber": True,
                 "allow_presence_for_subscriber": True, "subscribe_proxy_enabled": True},
                # Clients may not subscribe here (no allow_subscribe_for_client).
                {"name": "closed", "history_size": 10, "history_ttl": "1m"},
            ],
        },
        "engine": {"type": "memory"},
    }


async def test_serve_centrifugo_config(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(centrifugo_config(port)))
    env = cli_env(tmp_path)
    async with serving("--centrifugo-config", str(config), env=env, port=port, tmp=tmp_path) as served:
        # One warning from the config import (others, e.g. an unbuilt web client, are not
        # this test's business).
        warnings = [line for line in served.stderr.splitlines()
                    if "WARNING" in line and "centrifugo config" in line]
        assert len(warnings) == 1, served.stderr
        assert "not implemented" in warnings[0]
        assert "channel.namespaces[0].subscribe_proxy_enabled" in warnings[0]
        assert "engine" in warnings[0]
        # Secret and key came from the imported config: nothing generated.
        assert not (tmp_path / "secrets.json").exists()

        # `sentchat token` with the same Centrifugo config signs with its secret.
        res = await run("token", "--centrifugo-config", str(config), "--user", "dave",
                        "--ttl", "300", env=env)
        assert res.rc == 0, res.stderr
        token = res.stdout.strip()
        jwt.decode(token, CENTRIFUGO_SECRET, algorithms=["HS256"])

        client = Client(served.ws_url, token=token, proxy=None)
        try:
            await client.connect()
            await client.ready(timeout=WAIT)
            news = SubEvents()
            sub = client.new_subscription("news:1", news)
            await sub.subscribe()
            assert await asyncio.wait_for(news.outcome, WAIT) == "subscribed"

            closed = SubEvents()
            denied = client.new_subscription("closed:1", closed)
            await denied.subscribe()
            assert await asyncio.wait_for(closed.outcome, WAIT) == 103

            # The HTTP API with the imported key.
            status, _ = await http(port, "POST", "/api/publish", {"channel": "news:1", "data": {"x": 1}},
                                   {"X-API-Key": "wrong"})
            assert status == 401
            status, body = await http(port, "POST", "/api/publish",
                                      {"channel": "news:1", "data": {"x": 1}},
                                      {"Authorization": f"apikey {CENTRIFUGO_API_KEY}"})
            assert status == 200, body
            assert json.loads(body)["result"]["offset"] == 1
            pub = await asyncio.wait_for(news.pubs.get(), WAIT)
            assert pub.pub.data == {"x": 1}

            # history_size / history_ttl ("300s") were imported: the publication is kept.
            history = await sub.history(limit=10)
            assert [p.data for p in history.publications] == [{"x": 1}]
            status, body = await http(port, "POST", "/api/history", {"channel": "news:1", "limit": 10},
                                      {"X-API-Key": CENTRIFUGO_API_KEY})
            assert status == 200 and len(json.loads(body)["result"]["publications"]) == 1
            # Presence was imported too.
            presence = await sub.presence()
            assert [c.user for c in presence.clients.values()] == ["dave"]
        finally:
            await client.disconnect()
        assert await served.stop() == 0


async def test_serve_centrifugo_config_port_flag_overrides(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(centrifugo_config(free_port())))
    args = ("--centrifugo-config", str(config), "--port", str(port))
    async with serving(*args, env=cli_env(tmp_path), port=port, tmp=tmp_path) as served:
        assert await served.stop() == 0


async def test_serve_centrifugo_config_invalid_json(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{not json")
    res = await run("serve", "--centrifugo-config", str(config), "--port", str(free_port()),
                    env=cli_env(tmp_path))
    assert res.rc == 2
    assert "not valid JSON" in res.stderr


async def test_serve_config_from_env_and_sigint(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "sentchat.toml"
    config.write_text(f'[http]\nport = {port}\n[client.token]\nhmac_secret_key = "{SECRET}"\n'
                      '[http_api]\nkey = "toml-api-key"\n')
    async with serving(env=cli_env(tmp_path, SENTCHAT_CONFIG=str(config)), port=port,
                       tmp=tmp_path) as served:
        status, _ = await http(port, "POST", "/api/info", {}, {"X-API-Key": "toml-api-key"})
        assert status == 200
        served.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(served.proc.wait(), WAIT) == 0


async def test_version(tmp_path: Path) -> None:
    res = await run("--version", env=cli_env(tmp_path))
    assert res.rc == 0
    assert res.stdout.startswith("sentchat ")


def test_generated_secrets_concurrent_first_start(tmp_path: Path) -> None:
    """`serve` and `token` starting together on a fresh data dir must agree on one secret
    (neither crash on the file the other created nor read it half-written)."""
    from gateway.cli import _generated_secrets

    for trial in range(20):
        directory = tmp_path / f"data{trial}"
        barrier = threading.Barrier(8)
        results: list[str] = []
        failures: list[BaseException] = []

        def first_start(directory: Path = directory, barrier: threading.Barrier = barrier,
                        results: list[str] = results, failures: list[BaseException] = failures) -> None:
            barrier.wait()
            try:
                results.append(_generated_secrets(directory)["hmac_secret_key"])
            except Exception as exc:
                failures.append(exc)

        threads = [threading.Thread(target=first_start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert len(results) == 8 and len(set(results)) == 1
        assert [p.name for p in directory.iterdir()] == ["secrets.json"]
        assert stat.S_IMODE((directory / "secrets.json").stat().st_mode) == 0o600


async def test_serve_on_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    """A port already taken: one line naming the port and what to do, exit 2, no traceback,
    and nothing started for nothing (no embedded PostgreSQL data directory)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = await run("serve", "--port", str(port), env=cli_env(tmp_path, embedded_pg=True))
    assert res.rc == 2, res.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in res.stderr and "--port" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "postgres").exists()
