"""The real npm `centrifuge` SDK (centrifuge-js 5.8.0), unmodified, under Node, against our gateway.

Each test runs one script of tests/js/scenarios/ (JSON or Protobuf build of the SDK, with the
`ws` package as WebSocket). The script prints JSON lines on stdout: `{"wait": …}` asks this side
to act (answered with one JSON line on stdin), the last line is `{"result": {…}}` with what the
SDK observed. Assertions are made here, on that result and on the server's state.

The scripts stop by themselves (20 s overall timeout, non-zero exit). tests/js/node_modules is
installed once per session with `npm ci` when missing (CI installs it beforehand).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import API_KEY, Server, standard_settings, stop_server
from tests.gateway.test_durable import start_on
from tests.gateway.test_recovery_storm import publish_stream, storm_settings
from tests.sdk import uniq

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCENARIOS = JS_DIR / "scenarios"
MODES = ["json", "protobuf"]
SDK_VERSION = "5.8.0"
# Seconds a script may take in total (its own limit is 20 s); then it is killed.
SCRIPT_LIMIT = 30.0

OnWait = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _installed_version() -> str | None:
    try:
        manifest = json.loads((JS_DIR / "node_modules" / "centrifuge" / "package.json").read_text())
    except (OSError, ValueError):
        return None
    if not (JS_DIR / "node_modules" / "ws" / "package.json").exists():
        return None
    return str(manifest.get("version"))


@pytest.fixture(scope="session")
async def node_modules() -> Path:
    """tests/js/node_modules with the pinned SDK; `npm ci` (from the lockfile) when missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js / npm not installed")
    if _installed_version() != SDK_VERSION:
        proc = await asyncio.create_subprocess_exec(
            "npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", cwd=JS_DIR,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            pytest.fail(f"npm ci failed in {JS_DIR} (rc {proc.returncode}):\n{out.decode(errors='replace')}")
        if _installed_version() != SDK_VERSION:
            pytest.fail(f"npm ci did not install centrifuge {SDK_VERSION}")
    return JS_DIR / "node_modules"


class ScriptFailed(AssertionError):
    """A scenario script failed, timed out or broke the stdout protocol (output attached)."""


async def run_js(scenario: str, args: dict[str, Any], on_wait: OnWait | None = None) -> dict[str, Any]:
    """Run tests/js/scenarios/<scenario>.js with ``args``; returns its result object."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCENARIOS / f"{scenario}.js"), json.dumps(args), cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        limit=4 * 1024 * 1024)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    lines: list[str] = []
    final: dict[str, Any] | None = None

    async def converse() -> None:
        nonlocal final
        assert proc.stdin is not None and proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode().strip()
            if not line:
                continue
            lines.append(line)
            try:
                msg = json.loads(line)
            except ValueError:
                raise ScriptFailed(f"{scenario}.js printed a non-JSON line: {line!r}") from None
            if "wait" in msg:
                if on_wait is None:
                    raise ScriptFailed(f"unexpected request from {scenario}.js: {line}")
                answer = await on_wait(msg)
                proc.stdin.write(json.dumps(answer).encode() + b"\n")
                await proc.stdin.drain()
            else:
                final = msg
        await proc.wait()

    try:
        await asyncio.wait_for(converse(), SCRIPT_LIMIT)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    finally:
        stderr = (await stderr_task).decode(errors="replace")
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
    if proc.returncode != 0 or final is None or "result" not in final:
        out = "\n".join(lines)
        raise ScriptFailed(f"{scenario}.js exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{stderr}")
    result: dict[str, Any] = final["result"]
    return result


def args_for(srv: Server, mode: str, **extra: Any) -> dict[str, Any]:
    return {"url": srv.ws_url, "mode": mode, "api_url": srv.api_url, "api_key": API_KEY, **extra}


def codes_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["code"] for e in events]


async def abort_connection(srv: Server, client: str) -> None:
    """Drop a client's TCP connection without a close frame (a network loss for the client)
    and wait until the server has cleaned it up."""
    srv.node.connections[client].transport.abort()
    for _ in range(500):
        if client not in srv.node.connections:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"connection {client} still registered after abort")


# ---- connect ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_connect_with_subscription_created_before_connect(
        server: Server, node_modules: Path, mode: str) -> None:
    channel = f"chat:connect-{mode}"
    user = f"connect-{mode}"
    seen: dict[str, Any] = {}

    async def on_wait(msg: dict[str, Any]) -> dict[str, Any]:
        conn = server.node.connections[msg["client"]]
        seen.update(user=conn.session.user, subs=sorted(conn.session.subs),
                    codec=conn.codec.name, binary=conn.codec.binary)
        return {"ok": True}

    res = await run_js("connect", args_for(server, mode, channel=channel,
                                           token=server.token(user, info={"name": "Alice"})), on_wait)
    assert res["connectedCtx"]["transport"] == "websocket"
    assert res["clientState"] == "connected"
    assert res["subState"] == "subscribed"
    assert seen == {"user": user, "subs": [channel], "codec": mode, "binary": mode == "protobuf"}
    # The SDK sent connect and subscribe in one frame, and the server handled them in order.
    if mode == "json":
        assert res["firstFrame"] == {"commands": ["connect", "subscribe"]}
    else:
        assert res["firstFrame"] == {"binary": True, "hasChannel": True, "hasToken": True}
    sub = res["subs"]["chat"]
    assert sub["subscribed"] == [{
        "channel": channel, "recoverable": True, "positioned": True, "wasRecovering": False,
        "recovered": False, "hasRecoveredPublications": False,
        "streamPosition": {"offset": 0, "epoch": sub["subscribed"][0]["streamPosition"]["epoch"]},
    }]
    assert sub["subscribed"][0]["streamPosition"]["epoch"]
    assert res["rpc"]["user"] == user and res["rpc"]["client"] == res["connectedCtx"]["client"]
    assert sub["publications"] == [{
        "channel": channel, "data": {"text": "hello"}, "offset": 1,
        "info": {"client": res["connectedCtx"]["client"], "user": user, "connInfo": {"name": "Alice"}},
    }]
    assert res["clients"]["alice"]["disconnected"] == []


@pytest.mark.parametrize("mode", MODES)
async def test_bad_token_is_terminal_and_expired_token_is_replaced(
        server: Server, node_modules: Path, mode: str) -> None:
    bad = jwt.encode({"sub": f"bad-{mode}"}, "not-the-secret-0123456789-0123456789", algorithm="HS256")
    res = await run_js("connect_tokens", args_for(
        server, mode, bad_token=bad, expired_token=server.token(f"exp-{mode}", ttl=-30),
        good_token=server.token(f"exp-{mode}")))
    assert res["bad"] == {"state": "disconnected",
                          "disconnectedCtx": {"code": 3500, "reason": "invalid token"}}
    bad_log = res["clients"]["bad"]
    # One attempt only: no reconnect loop after a terminal code.
    assert codes_of(bad_log["connecting"]) == [0]
    assert bad_log["connected"] == []
    assert bad_log["disconnected"] == [{"code": 3500, "reason": "invalid token"}]
    assert res["expired"] == {"state": "connected", "getTokenCalls": 1}
    assert len(res["clients"]["expired"]["connected"]) == 1


@pytest.fixture(scope="module")
async def expiring_server(make_server: Callable[..., Awaitable[Server]]) -> Server:
    """Standard namespaces; expired connections / subscriptions are dropped 1 s after expiry,
    and the server pings every 2 s (pong within 1 s)."""
    return await make_server(standard_settings(
        expired_close_delay="1s", expired_sub_close_delay="1s", ping_interval="2s", pong_timeout="1s"))


def _count(srv: Server, method: str) -> float:
    value = srv.node.metrics.registry.get_sample_value("sentchat_commands_total", {"method": method})
    return value or 0.0


@pytest.mark.parametrize("mode", MODES)
async def test_expiring_tokens_refreshed_with_get_token(
        expiring_server: Server, node_modules: Path, mode: str) -> None:
    srv = expiring_server
    user = f"refresh-{mode}"
    channel, stuck_channel = f"$secret:refresh-{mode}", f"$secret:refresh-stuck-{mode}"
    seen: dict[str, Any] = {}
    before = {m: _count(srv, m) for m in ("refresh", "sub_refresh", "pong")}

    async def on_wait(msg: dict[str, Any]) -> dict[str, Any]:
        conn = srv.node.connections.get(msg["client"])
        assert conn is not None and not conn.closed
        seen["expires_in"] = conn.session.expire_at - time.time()
        seen["sub_expires_in"] = conn.session.subs[msg["channel"]].expire_at - time.time()
        seen["subs"] = sorted(conn.session.subs)
        return {"ok": True}

    res = await run_js("refresh", args_for(
        srv, mode, channel=channel, stuck_channel=stuck_channel,
        token=srv.token(user, ttl=2), fresh_token=srv.token(user, ttl=3600),
        sub_token=srv.token(user, ttl=2, channel=channel),
        fresh_sub_token=srv.token(user, ttl=3600, channel=channel),
        stuck_sub_token=srv.token(user, ttl=2, channel=stuck_channel),
        stuck_token=srv.token(f"stuck-{mode}", ttl=3)), on_wait)
    assert res["getTokenCalls"] >= 1 and res["subGetTokenCalls"] >= 1
    assert res["state"] == "connected" and res["subState"] == "subscribed"
    assert res["rpcClient"] == res["client"]
    log = res["clients"]["refreshing"]
    assert codes_of(log["connecting"]) == [0]
    assert log["disconnected"] == [] and log["errors"] == []
    assert len(log["connected"]) == 1
    sub = res["subs"]["refreshing"]
    assert codes_of(sub["subscribing"]) == [0] and sub["unsubscribed"] == [] and sub["errors"] == []
    assert [p["data"] for p in sub["publications"]] == [{"still": "here"}]
    # The server took the new tokens' expiry, through refresh and sub_refresh commands.
    assert seen["expires_in"] > 3000 and seen["sub_expires_in"] > 3000
    assert _count(srv, "refresh") > before["refresh"]
    assert _count(srv, "sub_refresh") > before["sub_refresh"]
    # Pings were answered (no 3012 anywhere, pongs counted).
    assert _count(srv, "pong") > before["pong"]
    # Controls: without new tokens the server does enforce both expiries.
    assert res["stuckConnecting"] == {"code": 3005, "reason": "connection expired"}
    assert res["stuckSubscribing"] == {"channel": stuck_channel, "code": 2501,
                                       "reason": "subscription expired"}
    assert seen["subs"] == [channel]


# ---- publish / join-leave / presence / history --------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_publish_and_receive_own_and_others(server: Server, node_modules: Path, mode: str) -> None:
    channel = f"chat:pubsub-{mode}"
    alice, bob = f"alice-pubsub-{mode}", f"bob-pubsub-{mode}"
    res = await run_js("pubsub", args_for(
        server, mode, channel=channel, other_channel=f"chat:pubsub-other-{mode}",
        alice_token=server.token(alice, info={"name": "Alice"}), bob_token=server.token(bob)))
    a_id = res["clients"]["alice"]["connected"][0]["client"]
    b_id = res["clients"]["bob"]["connected"][0]["client"]
    expected = [
        {"channel": channel, "data": {"from": "alice"}, "offset": 1,
         "info": {"client": a_id, "user": alice, "connInfo": {"name": "Alice"}}},
        {"channel": channel, "data": {"from": "bob"}, "offset": 2, "info": {"client": b_id, "user": bob}},
        {"channel": channel, "data": {"from": "api"}, "offset": 3, "tags": {"kind": "server"}},
    ]
    assert res["subs"]["alice"]["publications"] == expected
    assert res["subs"]["bob"]["publications"] == expected
    assert res["apiResult"]["offset"] == 3 and res["apiResult"]["epoch"]
    assert res["denied"] == {"error": {"code": 103, "message": "permission denied"}}


@pytest.mark.parametrize("mode", MODES)
async def test_join_and_leave(server: Server, node_modules: Path, mode: str) -> None:
    users = {name: f"{name}-jl-{mode}" for name in ("alice", "bob", "carol", "dave")}
    res = await run_js("join_leave", args_for(
        server, mode, channel=f"chat:join-leave-{mode}", bob=users["bob"], carol=users["carol"],
        dave=users["dave"],
        **{f"{name}_token": server.token(user) for name, user in users.items()}))
    watcher = res["subs"]["alice"]
    ids = {name: res["clients"][name]["connected"][0]["client"] for name in users}
    # Subscribe + unsubscribe in one frame: join first, then leave.
    assert res["daveEvents"] == ["join", "leave"]
    joined = [(i["user"], i["client"]) for i in watcher["join"]]
    left = [(i["user"], i["client"]) for i in watcher["leave"]]
    others = [(users[n], ids[n]) for n in ("bob", "carol")]
    # Alice sees her own join too (as with Centrifugo: the join is published after subscribe).
    assert joined == [(users["alice"], ids["alice"]), *others, (users["dave"], ids["dave"])]
    assert left == [*others, (users["dave"], ids["dave"])]
    # Bob and Carol did not ask for join/leave: nothing pushed to them.
    for name in ("bob", "carol"):
        assert res["subs"][name]["join"] == [] and res["subs"][name]["leave"] == []


@pytest.mark.parametrize("mode", MODES)
async def test_presence_and_presence_stats(server: Server, node_modules: Path, mode: str) -> None:
    alice, bob = f"alice-presence-{mode}", f"bob-presence-{mode}"
    res = await run_js("presence", args_for(
        server, mode, channel=f"chat:presence-{mode}", other_channel=f"chat:presence-other-{mode}",
        alice_token=server.token(alice, info={"name": "Alice"}), bob_token=server.token(bob)))
    expected = {
        res["aliceClient"]: {"client": res["aliceClient"], "user": alice, "connInfo": {"name": "Alice"}},
        res["bobClient"]: {"client": res["bobClient"], "user": bob},
    }
    assert res["subPresence"] == expected
    assert res["clientPresence"] == expected
    assert res["subStats"] == {"numClients": 2, "numUsers": 2}
    assert res["clientStats"] == {"numClients": 2, "numUsers": 2}
    assert res["notSubscribed"] == {"error": {"code": 103, "message": "permission denied"}}
    assert res["noPresence"] == {"error": {"code": 108, "message": "not available"}}
    assert res["unknownNamespace"] == {"error": {"code": 102, "message": "unknown channel"}}


@pytest.mark.parametrize("mode", MODES)
async def test_history_limit_reverse_since(server: Server, node_modules: Path, mode: str) -> None:
    channel = f"chat:history-{mode}"
    user = f"history-{mode}"
    res = await run_js("history", args_for(server, mode, channel=channel,
                                           other_channel=f"chat:history-other-{mode}",
                                           token=server.token(user)))
    epoch = res["epoch"]
    assert epoch

    def h(*ns: int) -> dict[str, Any]:
        return {"offset": 5, "epoch": epoch, "publications": [
            {"channel": channel, "data": {"n": n}, "offset": n,
             "info": {"client": res["clients"]["alice"]["connected"][0]["client"], "user": user}}
            for n in ns]}

    assert res["first3"] == h(1, 2, 3)
    assert res["last2Reverse"] == h(5, 4)
    assert res["all"] == h(1, 2, 3, 4, 5)
    assert res["noLimit"] == h()
    assert res["sinceOffset2"] == h(3, 4, 5)
    assert res["beforeOffset4Reverse"] == h(3, 2, 1)
    assert res["fromClient"] == h(5)
    assert res["wrongEpoch"] == {"error": {"code": 112, "message": "unrecoverable position"}}
    assert res["noHistory"] == {"error": {"code": 108, "message": "not available"}}
    assert res["notSubscribed"] == {"error": {"code": 103, "message": "permission denied"}}


# ---- recovery -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_recovery_after_socket_loss(server: Server, node_modules: Path, mode: str) -> None:
    """The socket is aborted server-side (no close frame: a network loss for the client) while
    publications continue; the SDK reconnects and the server recovers the missed ones."""
    channels = {"recovered": f"chat:recovery-{mode}", "lost": f"short:recovery-{mode}"}
    server_channel = f"chat:recovery-server-side-{mode}"
    # `short` keeps 5 publications: 7 missed ones cannot be recovered.
    missed = {"recovered": 3, "lost": 7, "server": 4}
    targets = {**channels, "server": server_channel}
    user = f"recovery-{mode}"

    async def on_wait(msg: dict[str, Any]) -> dict[str, Any]:
        await abort_connection(server, msg["client"])
        for label, channel in targets.items():
            for n in range(3, 3 + missed[label]):
                await server.node.publish(channel, json.dumps({"n": n}).encode())
        return {"published": missed}

    res = await run_js("recovery", args_for(
        server, mode, channels=channels, server_channel=server_channel, missed=missed,
        token=server.token(user, channels=[server_channel])), on_wait)
    assert res["firstClient"] != res["secondClient"]
    log = res["clients"]["alice"]
    # Transport closed (code 1): the SDK reconnects by itself.
    assert codes_of(log["connecting"]) == [0, 1]
    assert log["disconnected"] == []

    def check_recovered(subscribed: list[dict[str, Any]], pubs: list[dict[str, Any]], n: int) -> None:
        first, second = subscribed
        assert first["wasRecovering"] is False and first["recoverable"] is True
        assert second["wasRecovering"] is True and second["recovered"] is True
        assert second["hasRecoveredPublications"] is True
        assert second["streamPosition"]["epoch"] == first["streamPosition"]["epoch"]
        expected = [1, 2, *range(3, 3 + n), "live"]
        assert [p["data"]["n"] for p in pubs] == expected
        assert [p["offset"] for p in pubs] == list(range(1, len(expected) + 1))
        # The recovered ones were published by the server (no publisher info).
        assert all("info" not in p for p in pubs[2:2 + n])

    rec = res["subs"]["recovered"]
    assert codes_of(rec["subscribing"]) == [0, 1]
    check_recovered(rec["subscribed"], rec["publications"], missed["recovered"])
    side = log["server"]
    check_recovered([s for s in side["subscribed"] if s["channel"] == server_channel],
                    [p for p in side["publications"] if p["channel"] == server_channel], missed["server"])

    lost = res["subs"]["lost"]
    first, second = lost["subscribed"]
    assert second["wasRecovering"] is True and second["recovered"] is False
    assert second["streamPosition"]["offset"] == 2 + missed["lost"]
    # Nothing replayed: 1, 2 before the loss, then only the live one (offset 10).
    assert [p["data"]["n"] for p in lost["publications"]] == [1, 2, "live"]
    assert [p["offset"] for p in lost["publications"]] == [1, 2, 10]


@pytest.mark.parametrize("mode", MODES)
async def test_get_state_after_unrecoverable_gap(server: Server, node_modules: Path, mode: str) -> None:
    """js getState sets the subscribe flag "reject unrecovered": an unrecoverable position is
    error 112, and the SDK reloads its state through getState, then subscribes from there."""
    channel = f"short:get-state-{mode}"
    errors_before = server.node.metrics.registry.get_sample_value(
        "sentchat_errors_total", {"code": "112"}) or 0.0

    async def on_wait(msg: dict[str, Any]) -> dict[str, Any]:
        await abort_connection(server, msg["client"])
        # More than the 5 publications `short` keeps.
        for n in range(3, 10):
            await server.node.publish(channel, json.dumps({"n": n}).encode())
        return {"ok": True}

    res = await run_js("get_state", args_for(server, mode, channel=channel,
                                             token=server.token(f"get-state-{mode}")), on_wait)
    epoch = res["positions"][0]["epoch"]
    assert res["positions"] == [{"offset": 0, "epoch": epoch}, {"offset": 9, "epoch": epoch}]
    errors_after = server.node.metrics.registry.get_sample_value("sentchat_errors_total", {"code": "112"})
    assert errors_after == errors_before + 1
    sub = res["subs"]["state"]
    assert [(s["wasRecovering"], s["recovered"], s["streamPosition"]["offset"]) for s in sub["subscribed"]] == [
        (True, True, 0), (True, True, 9)]
    assert sub["unsubscribed"] == []
    assert [p["offset"] for p in sub["publications"]] == [1, 2, 10]


# ---- channel access -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_subscription_tokens(server: Server, node_modules: Path, mode: str) -> None:
    user = f"secret-{mode}"
    private = f"$secret:x-{mode}"
    renew = f"$secret:renew-{mode}"
    secret = f"secret:given-{mode}"
    asked: list[dict[str, Any]] = []

    async def on_wait(msg: dict[str, Any]) -> dict[str, Any]:
        asked.append(msg)
        token = server.token(user, channel=msg["channel"], client=msg["client"],
                             info={"role": "reader"}, data={"welcome": msg["channel"]})
        return {"token": token}

    res = await run_js("secret", args_for(
        server, mode, token=server.token(user), private_channel=private, renew_channel=renew,
        secret_channel=secret, secret_token=server.token(user, channel=secret),
        expired_sub_token=server.token(user, ttl=-30, channel=renew),
        untokened_channel=f"$secret:none-{mode}", mismatch_channel=f"$secret:other-{mode}"), on_wait)
    assert sorted(res["tokenRequests"]) == sorted([private, renew])
    assert sorted(m["channel"] for m in asked) == sorted([private, renew])
    assert res["states"] == {"private": "subscribed", "given": "subscribed", "renewed": "subscribed",
                             "none": "unsubscribed"}
    subs = res["subs"]
    assert subs["private"]["subscribed"][0]["data"] == {"welcome": private}
    client_id = res["clients"]["alice"]["connected"][0]["client"]
    assert subs["private"]["publications"] == [{
        "channel": private, "data": {"secret": 1}, "offset": 1,
        "info": {"client": client_id, "user": user, "chanInfo": {"role": "reader"}}}]
    assert "data" not in subs["given"]["subscribed"][0]
    # The expired token (109) was replaced through getToken, without an unsubscribe.
    assert subs["renewed"]["unsubscribed"] == []
    assert subs["none"]["unsubscribed"] == [{"code": 103, "reason": "permission denied"}]
    # A token for another channel: the connection is closed with 3500 (terminal).
    assert res["clients"]["mallory"]["disconnected"] == [{"code": 3500, "reason": "invalid token"}]
    assert res["clients"]["alice"]["disconnected"] == []


@pytest.mark.parametrize("mode", MODES)
async def test_user_limited_channel(server: Server, node_modules: Path, mode: str) -> None:
    users = {name: f"{name}-dm-{mode}" for name in ("alice", "bob", "carol")}
    channel = f"dm:#{users['alice']},{users['bob']}"
    res = await run_js("dm", args_for(server, mode, channel=channel,
                                      tokens={name: server.token(user) for name, user in users.items()}))
    assert res["states"] == {"alice": "subscribed", "bob": "subscribed", "carol": "unsubscribed"}
    assert res["subs"]["carol"]["unsubscribed"] == [{"code": 103, "reason": "permission denied"}]
    assert [(p["data"], p["info"]["user"]) for p in res["subs"]["bob"]["publications"]] == [
        ({"hi": "bob"}, users["alice"])]


@pytest.mark.parametrize("mode", MODES)
async def test_permission_denied_and_unknown_namespace(server: Server, node_modules: Path, mode: str) -> None:
    res = await run_js("errors", args_for(server, mode, token=server.token(f"errors-{mode}")))
    assert res["subs"]["locked"]["unsubscribed"] == [{"code": 103, "reason": "permission denied"}]
    assert res["subs"]["unknown"]["unsubscribed"] == [{"code": 102, "reason": "unknown channel"}]
    assert res["subStates"] == {"locked": "unsubscribed", "unknown": "unsubscribed"}
    denied = {"error": {"code": 103, "message": "permission denied"}}
    assert res["publishLocked"] == denied
    assert res["historyLocked"] == denied
    assert res["presenceLocked"] == denied
    assert res["publishUnknown"] == {"error": {"code": 102, "message": "unknown channel"}}
    assert res["state"] == "connected"
    assert res["clients"]["alice"]["disconnected"] == []


# ---- server API actions -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_server_subscribe_unsubscribe_disconnect(server: Server, node_modules: Path, mode: str) -> None:
    user = f"server-side-{mode}"
    res = await run_js("server_side", args_for(
        server, mode, user=user, token=server.token(user), channel=f"chat:server-side-{mode}",
        server_channel=f"chat:server-sub-{mode}"))
    assert res["serverSub"] == {"channel": f"chat:server-sub-{mode}", "recoverable": True}
    assert res["serverPub"] == {"channel": f"chat:server-sub-{mode}", "data": {"via": "server-side"}}
    assert res["unsubCtx"] == {"channel": f"chat:server-side-{mode}", "code": 2000,
                               "reason": "server unsubscribe"}
    assert res["afterUnsub"] == {"client": "connected", "sub": "unsubscribed"}
    # An application code in the reconnect range: the SDK comes back.
    assert res["reconnectingCtx"] == {"code": 4001, "reason": "come back"}
    # The default API disconnect is terminal.
    assert res["disconnectedCtx"] == {"code": 3503, "reason": "force disconnect"}
    assert res["finalState"] == "disconnected"
    log = res["clients"]["alice"]
    assert codes_of(log["connecting"]) == [0, 4001]
    assert len(log["connected"]) == 2
    assert log["disconnected"] == [{"code": 3503, "reason": "force disconnect"}]


# ---- reconnect storm ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("namespace", ["log", "eph"], ids=["durable", "ephemeral"])
async def test_reconnect_storm_recovers_everything(empty_dsn: str, node_modules: Path,
                                                   mode: str, namespace: str) -> None:
    """centrifuge-js under a reconnect storm: 12 clients, publications at 120/s, a third of
    them cut twice (socket loss, then the server API's disconnect) while the stream flows;
    every client ends with every acknowledged publication exactly once, in order, and every
    resubscribe reports recovered (tests/gateway/test_recovery_storm.py has the Python SDK)."""
    srv = await start_on(storm_settings(empty_dsn))
    channel = uniq(f"{namespace}:js-storm")
    tokens = [srv.token(f"js{i}", channels=[channel] if i % 3 == 2 else []) for i in range(12)]
    acked: list[int] = []

    async def on_wait(msg: dict[str, Any]) -> dict[str, Any]:
        clients = msg["clients"]
        publisher = asyncio.ensure_future(publish_stream(srv.api_url, channel, 240, 120.0))
        await asyncio.sleep(0.6)
        for client in clients[:4]:
            await abort_connection(srv, client)
        await asyncio.sleep(0.6)
        for i in range(2, 6):
            await api_disconnect_user(srv, f"js{i}")
        acked.extend(await publisher)
        return {"top": acked[-1]}

    try:
        res = await run_js("storm", args_for(srv, mode, channel=channel, tokens=tokens), on_wait)
    finally:
        await stop_server(srv)
    assert acked == list(range(1, 241))
    for i, f in enumerate(res["followers"]):
        assert f["offsets"] == acked, f"client {i}: gaps, duplicates or disorder"
        again = [s for s in f["subscribed"] if s["wasRecovering"]]
        assert all(s["recovered"] for s in again), f"client {i}: {again}"
        if i < 6:
            assert again, f"client {i} was cut and must have resubscribed"


async def api_disconnect_user(srv: Server, user: str) -> None:
    """The server API's disconnect with a reconnecting code."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{srv.api_url}/disconnect", headers={"X-API-Key": API_KEY},
            json={"user": user, "disconnect": {"code": 4001, "reason": "storm"}}) as resp:
        assert resp.status == 200
