"""A refused token is logged with its reason (bad signature, expired, not yet valid, wrong
audience) — never with the token — while the client hears only Centrifugo's codes: 3500
"invalid token" (terminal) or 109 "token expired" (the SDK fetches a new one)."""

from __future__ import annotations

import logging
import time

import jwt
import pytest

from tests.conftest import SECRET, Server
from tests.sdk import Sdk


@pytest.fixture
async def sdk() -> Sdk:
    s = Sdk(protobuf=False)
    yield s  # type: ignore[misc]
    await s.close()


CASES = {
    "bad signature": (lambda: jwt.encode({"sub": "mallory"}, "x" * 40, algorithm="HS256"),
                      "Signature verification failed"),
    "expired": (lambda: jwt.encode({"sub": "eve", "exp": int(time.time()) - 600}, SECRET,
                                   algorithm="HS256"), "expired (exp)"),
    "not yet valid": (lambda: jwt.encode({"sub": "eve", "nbf": int(time.time()) + 600,
                                          "exp": int(time.time()) + 3600}, SECRET,
                                         algorithm="HS256"), "not valid yet (nbf in the future)"),
    "garbage": (lambda: "not-a-jwt", "Not enough segments"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_refused_token_reason_is_logged_without_the_token(
        server: Server, sdk: Sdk, case: str, caplog: pytest.LogCaptureFixture) -> None:
    make, reason = CASES[case]
    token = make()
    client, events = sdk.client(server, token, max_reconnect_delay=0.2)
    with caplog.at_level(logging.INFO, logger="sentchat"):
        await client.connect()
        # Invalid: the terminal disconnect; expired / not yet valid: error 109 first.
        terminal = case in ("bad signature", "garbage")
        await events.next_where("disconnected" if terminal else "error", lambda c: True)
    lines = [r.getMessage() for r in caplog.records if "token refused" in r.getMessage()]
    assert lines, "the refusal is logged"
    assert any(reason in line for line in lines), lines
    assert not any(token in line for line in lines), "the token never reaches the log"
    assert all("127.0.0.1:" in line for line in lines), "the peer address is named"
