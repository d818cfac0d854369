"""The web client's files served by the gateway at / (gateway/web/static.py): cache
headers, CSP, MIME types, gzip, conditional requests, no path escapes, and a clear 404 with
a log line when the client was not built."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.web import static
from tests.conftest import Server, standard_settings, start_server, stop_server

JS = b"console.log('sentchat');\n" * 200


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text('<!doctype html><script type="module" src="/assets/index-abc123.js"></script>')
    (tmp_path / "assets" / "index-abc123.js").write_bytes(JS)
    (tmp_path / "assets" / "style-def456.css").write_text("body{color:red}")
    (tmp_path.parent / "secret.txt").write_text("outside the web root")
    monkeypatch.setenv("SENTCHAT_WEB_DIR", str(tmp_path))
    static.reload()
    yield tmp_path
    monkeypatch.delenv("SENTCHAT_WEB_DIR")
    static.reload()


async def get(srv: Server, path: str, headers: dict[str, str] | None = None,
              method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession(auto_decompress=False) as http, http.request(
            method, f"{srv.http_url}{path}", headers=headers or {}) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_index_assets_headers_and_gzip(built: Path) -> None:
    srv = await start_server(standard_settings())
    try:
        status, body, h = await get(srv, "/")
        assert status == 200 and body.startswith(b"<!doctype html>")
        assert h["Content-Type"] == "text/html; charset=utf-8"
        assert h["Cache-Control"] == "no-cache"
        csp = h["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
        assert h["X-Content-Type-Options"] == "nosniff"

        status, body, h = await get(srv, "/assets/index-abc123.js", {"Accept-Encoding": "gzip, br"})
        assert status == 200 and h["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == JS and len(body) < len(JS) / 5
        assert h["Content-Type"] == "text/javascript; charset=utf-8"
        assert h["Cache-Control"] == "public, max-age=31536000, immutable"
        status, body, h = await get(srv, "/assets/index-abc123.js", {"Accept-Encoding": "identity"})
        assert status == 200 and body == JS and "Content-Encoding" not in h
        etag = {k.lower(): v for k, v in h.items()}["etag"]
        status, _, _ = await get(srv, "/assets/index-abc123.js", {"If-None-Match": etag})
        assert status == 304
        status, body, h = await get(srv, "/assets/style-def456.css")
        assert status == 200 and h["Content-Type"] == "text/css; charset=utf-8"
        status, body, h = await get(srv, "/assets/index-abc123.js", {"Accept-Encoding": "identity"}, method="HEAD")
        assert status == 200 and body == b"" and int(h["Content-Length"]) == len(JS)

        for path in ("/nope", "/assets/missing.js", "/../secret.txt", "/assets/../../secret.txt"):
            status, body, _ = await get(srv, path)
            assert status in (400, 404) and b"outside" not in body, path
        async with aiohttp.ClientSession() as http, http.post(f"{srv.http_url}/") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD"
        # The other routes are untouched.
        status, _, _ = await get(srv, "/health")
        assert status == 200
    finally:
        await stop_server(srv)


async def test_missing_build_is_a_404_and_said_in_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SENTCHAT_WEB_DIR", str(tmp_path / "not-built"))
    caplog.set_level(logging.INFO, logger="sentchat.web")
    static.reload()
    srv = await start_server(standard_settings())
    try:
        assert "web client not built" in caplog.text
        status, body, _ = await get(srv, "/")
        assert status == 404
        status, _, _ = await get(srv, "/health")
        assert status == 200
    finally:
        await stop_server(srv)
        monkeypatch.delenv("SENTCHAT_WEB_DIR")
        static.reload()
