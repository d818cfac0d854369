"""The chat product loads with its first call: a fresh node carries only the loader."""

from __future__ import annotations

from gateway.chat import RPC_METHODS, ChatExtension
from gateway.chat.binding import OPS
from tests.conftest import create_database, drop_database, start_server, stop_server
from tests.gateway.chat.conftest import ChatEnv, chat_settings, rpc
from tests.sdk import Sdk


def test_loader_lists_every_rpc_method() -> None:
    assert sorted(RPC_METHODS) == sorted(op.name for op in OPS if op.rpc)


async def test_service_starts_with_the_first_call(pg_dsn: str) -> None:
    dsn = await create_database(pg_dsn, "lazy")
    srv = await start_server(chat_settings(dsn))
    sdk = Sdk(protobuf=False)
    try:
        ext = srv.node.extensions["chat"]
        assert isinstance(ext, ChatExtension) and ext.service is None and not ext.loaded
        env = ChatEnv(srv, dsn, sdk)
        # HTTP loads it (the admin route), and RPC then finds it loaded.
        alice = await env.user("alice")
        assert ext.service is not None and ext.loaded
        client, _ = await env.connect(alice)
        created = await rpc(client, "channels.create", name=f"lazy-{alice}")
        assert created["channel"]["member_role"] == "admin"
    finally:
        await sdk.close()
        await stop_server(srv)
        await drop_database(dsn)


async def test_first_call_over_rpc(pg_dsn: str) -> None:
    dsn = await create_database(pg_dsn, "lazy")
    srv = await start_server(chat_settings(dsn))
    sdk = Sdk(protobuf=False)
    try:
        # A connection (online announcement) and an RPC arriving before anything else.
        client, _ = await sdk.connect(srv, "bob")
        listed = await rpc(client, "channels.list")
        ext = srv.node.extensions["chat"]
        assert listed == {"channels": []} and isinstance(ext, ChatExtension) and ext.loaded
    finally:
        await sdk.close()
        await stop_server(srv)
        await drop_database(dsn)
