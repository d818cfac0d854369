"""Real headless Chromium (Debian's package) driven by Playwright for Python, against a real
gateway serving the built web client, with the session's real PostgreSQL.

Chromium is installed with apt when missing and we are root; otherwise the tests are
skipped saying why. The client is built (npm ci + vite) when web/dist is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.web import static
from tests.conftest import Server, create_database, drop_database, start_server, stop_server
from tests.gateway.chat.conftest import chat_settings
from tests.oidc_provider import Provider

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
AXE = ROOT / "tests" / "js" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = Path(os.environ.get("SENTCHAT_SCREENSHOTS", ROOT / "tests" / "web" / "screenshots"))
# Without these the browser stalls on this machine's closed network (background updates,
# QUIC probes, first-run UI).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0:
        pytest.skip("no chromium on PATH and not root: install Debian's `chromium` package to run the browser tests")
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"could not install chromium with apt: {done.stderr.decode()[-300:]}")
    return found


def _build_client() -> None:
    if (WEB / "dist" / "index.html").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("web/dist is not built and npm is missing (Node 20 + npm build the client)")
    subprocess.run([npm, "ci", "--prefix", str(WEB), "--no-audit", "--no-fund"], check=True)
    subprocess.run([npm, "run", "build", "--prefix", str(WEB)], check=True)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return _chromium()


OIDC_CLIENT, OIDC_SECRET = "sentchat-web", "browser-test-client-secret"


@pytest.fixture(scope="session")
def idp() -> Iterator[Provider]:
    """A real OpenID Connect provider (tests/oidc_provider.py) the gateway trusts."""
    provider = Provider().start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="session")
async def web_dsn(pg_dsn: str) -> AsyncIterator[str]:
    """The database of the ``web`` gateway (tests bulk-load history into it)."""
    dsn = await create_database(pg_dsn, "web")
    try:
        yield dsn
    finally:
        await drop_database(dsn)


@pytest.fixture(scope="session")
async def web(web_dsn: str, chromium_path: str, idp: Provider) -> AsyncIterator[Server]:
    """A chat gateway serving the built client, with local accounts and OIDC sign-in."""
    _build_client()
    if not AXE.is_file():
        pytest.skip("axe-core missing: run `npm ci --prefix tests/js`")
    static.reload()
    assert static.site().available
    dsn = web_dsn
    srv = await start_server(chat_settings(dsn, auth__oidc__issuer=idp.issuer, auth__oidc__client_id=OIDC_CLIENT,
                                           auth__oidc__client_secret=OIDC_SECRET))
    idp.add_client(OIDC_CLIENT, OIDC_SECRET, [f"{srv.http_url}/"])
    try:
        yield srv
    finally:
        await stop_server(srv)


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()
