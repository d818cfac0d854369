"""The web bench (bench/web.py) run small against the session's PostgreSQL and Debian's
Chromium: every figure is produced, and the window of messages keeps the DOM bounded."""

from __future__ import annotations

from typing import Any

from bench import web as bench_web
from tests.web.conftest import _build_client


async def test_the_web_bench_runs_small(pg_dsn: str, chromium_path: str) -> None:
    _build_client()
    args = bench_web.parse_args(["--messages", "1500", "--scrollback", "400", "--loads", "1", "--switches", "4",
                                 "--dsn", pg_dsn, "--chromium", chromium_path])
    result: dict[str, Any] = await bench_web.run(args)
    assert 0 < result["transfer"]["js_css_gzip_bytes"] <= 250_000
    assert {f.rsplit(".", 1)[1] for f in result["transfer"]["files"]} == {"js", "css"}
    browser = result["browser"]
    assert browser["first_messages_ms"]["median"] > 0 and browser["switch_ms"]["n"] == 4
    back = browser["scrollback"]
    assert back["messages"] >= 400
    # Virtualized: a few dozen messages in the DOM however far back the reader went.
    assert all(s.get("messages_in_dom", 0) < 100 for s in back["samples"])
    assert set(result["verdict"]) == {"gzip_kb", "first_messages_ms", "switch_p95_ms"}
    assert "Chromium" in bench_web.summary(result)
