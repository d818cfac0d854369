"""Every chat write leaves a hash-chained audit record; tampering with one of them directly
in the database is named by the real `sentchat audit verify`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.gateway.chat.conftest import ChatEnv, rpc

REPO = Path(__file__).resolve().parents[3]


async def audit_verify(dsn: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTCHAT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "audit", "verify", "--dsn", dsn, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_chat_writes_are_audited_and_tampering_is_named(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    ca, _ = await chat.connect(alice)
    cb, _ = await chat.connect(bob)
    ch = (await rpc(ca, "channels.create", name=f"audit-{alice}", private=True))["channel"]
    await rpc(ca, "channels.invite", channel_id=ch["id"], user_ids=[bob])
    msg = (await rpc(ca, "messages.send", channel_id=ch["id"], text="original words"))["message"]
    await rpc(ca, "messages.edit", message_id=msg["id"], text="softened words")
    await rpc(cb, "reactions.add", message_id=msg["id"], emoji=":ok:")
    await rpc(ca, "messages.delete", message_id=msg["id"])
    await rpc(ca, "channels.kick", channel_id=ch["id"], user_id=bob)

    db = await chat.db()
    try:
        rows = await db.fetch(
            """SELECT id, actor, action, target, delta FROM audit_log
               WHERE target IN ($1, $2) ORDER BY id""", f"channel:{ch['id']}", f"message:{msg['id']}")
        assert [(r["actor"], r["action"]) for r in rows] == [
            (alice, "channel.create"), (alice, "member.add"), (alice, "message.send"),
            (alice, "message.edit"), (bob, "reaction.add"), (alice, "message.delete"),
            (alice, "member.kick")]
        edit = rows[3]
        assert json.loads(edit["delta"]) == {"before": {"text": "original words"},
                                            "after": {"text": "softened words"}}
        # The database refuses to rewrite history...
        rc, out = await audit_verify(chat.dsn)
        assert rc == 0 and out.startswith("audit chain OK"), out
        # ...unless a superuser bypasses the triggers; then verify names the record.
        async with db.transaction():
            await db.execute("SET LOCAL session_replication_role = replica")
            await db.execute("""UPDATE audit_log SET delta = '{"before": {"text": "nothing"},
                                "after": {"text": "softened words"}}' WHERE id = $1""", edit["id"])
        rc, out = await audit_verify(chat.dsn)
        assert rc == 1 and out.startswith(f"audit chain BROKEN at record {edit['id']}:"), out
    finally:
        # Put the record back so the shared database's chain stays whole for other tests.
        async with db.transaction():
            await db.execute("SET LOCAL session_replication_role = replica")
            await db.execute("UPDATE audit_log SET delta = $2 WHERE id = $1", edit["id"], edit["delta"])
        await db.close()
    rc, out = await audit_verify(chat.dsn)
    assert rc == 0, out
