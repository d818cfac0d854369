"""Link previews against real pages served by a local aiohttp server: the SSRF rules refuse
loopback, private, link-local/metadata, mapped and redirected-to-private addresses (the page
server records that nothing reached it), oversized and slow pages get no preview, and an
allowed page's Open Graph tags arrive as ``message.updated`` at a real centrifuge-python
subscriber. Prism charts and file metadata come from configured local endpoints."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.integrations.unfurl import links_in, refusal
from tests.conftest import create_database, drop_database, start_server, stop_server
from tests.gateway.chat.conftest import ChatEnv, chat_settings
from tests.gateway.integrations.conftest import free_port

ALLOWED = "127.0.0.2"  # the page server's address let through unfurl_allow
PAGE = """<html><head><title>plain title</title>
<meta property="og:title" content="Quarterly report">
<meta property="og:description" content="Revenue &amp; growth">
<meta property="og:image" content="/img/cover.png">
<meta property="og:site_name" content="Intranet">
</head><body>hello</body></html>"""


class Pages:
    """A real HTTP server on 127.0.0.1, 127.0.0.2 and (when the host has it) ::1, one port;
    every request is recorded as (local address, path)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[tuple[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.ipv6 = False

    def hit_paths(self, path: str) -> list[tuple[str, str]]:
        return [h for h in self.hits if h[1] == path]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        for host in ("127.0.0.1", ALLOWED):
            await web.TCPSite(self.runner, host, self.port).start()
        try:
            await web.TCPSite(self.runner, "::1", self.port).start()
            self.ipv6 = True
        except OSError:
            pass

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        self.hits.append((str(sock[0]) if sock else "?", request.path))
        path = request.path
        if path.startswith("/page"):
            return web.Response(text=PAGE, content_type="text/html")
        if path.startswith("/secret"):
            return web.Response(text="<meta property='og:title' content='SECRET'>", content_type="text/html")
        if path.startswith("/redirect-private"):
            raise web.HTTPFound(f"http://127.0.0.1:{self.port}/secret-redirected")
        if path.startswith("/redirect-ok"):
            raise web.HTTPFound(f"http://{ALLOWED}:{self.port}/page-after-redirect")
        if path.startswith("/loop"):
            n = int(request.query.get("n", "0"))
            raise web.HTTPFound(f"http://{ALLOWED}:{self.port}/loop?n={n + 1}")
        if path.startswith("/big"):
            resp = web.StreamResponse(headers={"Content-Type": "text/html"})
            await resp.prepare(request)
            # No Content-Length: the limit must hold while reading, not only from a header.
            await resp.write(b"<meta property='og:title' content='BIG'>")
            for _ in range(40):
                await resp.write(b"x" * 10_000)
            await resp.write_eof()
            return resp
        if path.startswith("/slow"):
            await asyncio.sleep(3)
            return web.Response(text=PAGE, content_type="text/html")
        if path.startswith("/oembed-page"):
            return web.Response(content_type="text/html", text=(
                f'<html><head><link rel="alternate" type="application/json+oembed" '
                f'href="http://{ALLOWED}:{self.port}/oembed.json"></head></html>'))
        if path == "/oembed.json":
            return web.json_response({"title": "A video", "provider_name": "Tube",
                                      "author_name": "Ana", "thumbnail_url": "/t.jpg"})
        if path.startswith("/prism/"):
            name = path.rsplit("/", 1)[1]
            return web.json_response({"title": f"Dashboard {name}", "link": f"https://prism.example/d/{name}",
                                      "series": [{"name": "p95", "points": [[1, 2.5], [2, 3.0], ["x", 1]]}]})
        if path.startswith("/files/"):
            return web.json_response({"name": path.rsplit("/", 1)[1], "size": 1234, "type": "application/pdf"})
        return web.Response(status=404)


@pytest.fixture(scope="module")
async def pages() -> AsyncIterator[Pages]:
    p = Pages()
    await p.start()
    yield p
    await p.stop()


@pytest.fixture(scope="module")
async def env(pg_dsn: str, pages: Pages) -> AsyncIterator[ChatEnv]:
    dsn = await create_database(pg_dsn, "unfurl")
    base = f"http://127.0.0.1:{pages.port}"
    settings = chat_settings(
        dsn, integrations__unfurl_ports=[80, 443, pages.port],
        integrations__unfurl_allow=[f"{ALLOWED}/32"], integrations__unfurl_timeout=1.0,
        integrations__unfurl_max_bytes=100_000,
        integrations__unfurl_resolve={"status.example.com": "127.0.0.1", "wiki.example.com": ALLOWED,
                                      "meta.example.com": "169.254.169.254"},
        integrations__prism_url=f"{base}/prism/{{name}}", integrations__files_url=f"{base}/files/{{path}}",
        integrations__file_hosts=["files.example.com"])
    srv = await start_server(settings)
    e = ChatEnv(srv, dsn)
    yield e
    await e.sdk.close()
    await stop_server(srv)
    await drop_database(dsn)


async def send(env: ChatEnv, user: str, ch: str, text: str) -> dict[str, Any]:
    r = await env.http("POST", f"/v1/channels/{ch}/messages", user, {"text": text})
    assert r.status == 201, r.body  # delivered whatever the links are
    return r.body["message"]


async def setup_channel(env: ChatEnv) -> tuple[str, str]:
    user = f"u{secrets.token_hex(4)}"
    await env.admin("PUT", f"/v1/admin/users/{user}", {})
    body = await env.ok("POST", "/v1/channels", user, {"name": f"c-{secrets.token_hex(4)}"})
    return user, body["channel"]["id"]


async def message(env: ChatEnv, user: str, ch: str, mid: int) -> dict[str, Any]:
    page = await env.ok("GET", f"/v1/channels/{ch}/messages", user)
    return next(m for m in page["messages"] if m["id"] == mid)


# ---- the address rules on their own ---------------------------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "fd00:ec2::254",
    "100.64.0.1", "100.100.100.200", "224.0.0.1", "ff02::1", "fe80::1",
    "0.0.0.0", "::",  # noqa: S104 - addresses judged, nothing is bound
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::", "240.0.0.1", "192.0.2.1"])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_links_in_text() -> None:
    text = ("see https://a.example/x, and (http://b.example/y) or sent://prism/dashboard/api "
            "https://a.example/x again ftp://no")
    assert links_in(text, 5) == ["https://a.example/x", "http://b.example/y", "sent://prism/dashboard/api"]
    assert links_in(text, 1) == ["https://a.example/x"]


# ---- end to end -------------------------------------------------------------------------------


async def test_refused_links_are_never_fetched_and_the_message_is_delivered(env: ChatEnv, pages: Pages) -> None:
    user, ch = await setup_channel(env)
    p = pages.port
    tag = secrets.token_hex(3)
    links = [
        f"http://127.0.0.1:{p}/secret-{tag}-loopback",
        f"http://status.example.com:{p}/secret-{tag}-name-to-loopback",   # public-looking name, private answer
        f"http://10.0.0.7:{p}/secret-{tag}-ten",
        "http://169.254.169.254/latest/meta-data/",
        f"http://meta.example.com/secret-{tag}-metadata",
        f"http://[::ffff:127.0.0.1]:{p}/secret-{tag}-mapped",
        f"http://{ALLOWED}:{p + 1 if p < 65535 else p - 1}/secret-{tag}-port",  # port not allowed
    ]
    if pages.ipv6:
        links.append(f"http://[::1]:{p}/secret-{tag}-v6")
    ids = []
    for url in links:
        ids.append((await send(env, user, ch, f"look {url}"))["id"])
    # A redirect from an allowed page to a private address: the allowed hop is fetched, the
    # private one never; too many redirects end the fetch too.
    ids.append((await send(env, user, ch, f"http://{ALLOWED}:{p}/redirect-private-{tag}"))["id"])
    ids.append((await send(env, user, ch, f"http://{ALLOWED}:{p}/loop-{tag}?n=0"))["id"])
    # Oversized and slow pages (allowed address): fetched, given up, no preview.
    ids.append((await send(env, user, ch, f"http://{ALLOWED}:{p}/big-{tag}"))["id"])
    ids.append((await send(env, user, ch, f"http://{ALLOWED}:{p}/slow-{tag}"))["id"])
    # And a good one, to know when the background jobs have had their time.
    good = (await send(env, user, ch, f"http://{ALLOWED}:{p}/page-{tag}-marker"))["id"]
    for _ in range(100):
        if (await message(env, user, ch, good)).get("previews"):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # past the 1 s unfurl_timeout of the slow page
    assert not [h for h in pages.hits if "secret" in h[1]], pages.hits
    assert pages.hit_paths(f"/redirect-private-{tag}")  # the allowed first hop was fetched
    assert len([h for h in pages.hits if h[1] == "/loop"]) <= 4  # 1 + unfurl_max_redirects (3)
    for mid in ids:
        m = await message(env, user, ch, mid)
        assert m["previews"] is None, m
        assert m["text"]


async def test_allowed_page_preview_reaches_a_subscriber_as_message_updated(env: ChatEnv, pages: Pages) -> None:
    user, ch = await setup_channel(env)
    client, _ = await env.connect(user)
    sub, events = await env.sdk.subscribe(client, f"chat:{ch}")
    url = f"http://wiki.example.com:{pages.port}/page-{secrets.token_hex(3)}"
    sent = await send(env, user, ch, f"the report: {url}.")
    assert sent["previews"] is None  # acknowledged before any fetch
    ev = await events.next_where("publication", lambda c: c.pub.data.get("type") == "message.updated"
                                 and c.pub.data["message"]["id"] == sent["id"])
    preview = ev.pub.data["message"]["previews"]
    assert preview == [{"type": "link", "url": url, "title": "Quarterly report",
                        "description": "Revenue & growth",
                        "image": f"http://wiki.example.com:{pages.port}/img/cover.png",
                        "site_name": "Intranet"}]
    assert (await message(env, user, ch, sent["id"]))["previews"] == preview
    # Cached per URL: the same link again is not fetched again.
    path = url.rsplit("/", 1)[1]
    before = len(pages.hit_paths("/" + path))
    again = await send(env, user, ch, url)
    await events.next_where("publication", lambda c: c.pub.data.get("type") == "message.updated"
                            and c.pub.data["message"]["id"] == again["id"])
    assert len(pages.hit_paths("/" + path)) == before == 1
    # A redirect between allowed pages is followed; oEmbed fills a page without og tags.
    r = await send(env, user, ch, f"http://{ALLOWED}:{pages.port}/redirect-ok-{secrets.token_hex(2)} "
                   f"http://{ALLOWED}:{pages.port}/oembed-page-{secrets.token_hex(2)}")
    ev = await events.next_where("publication", lambda c: c.pub.data.get("type") == "message.updated"
                                 and c.pub.data["message"]["id"] == r["id"])
    got = ev.pub.data["message"]["previews"]
    assert [p["title"] for p in got] == ["Quarterly report", "A video"]
    assert got[1]["site_name"] == "Tube" and got[1]["image"].endswith("/t.jpg")
    await sub.unsubscribe()


async def test_prism_chart_and_file_previews(env: ChatEnv, pages: Pages) -> None:
    user, ch = await setup_channel(env)
    sent = await send(env, user, ch, "latency sent://prism/dashboard/api-latency and sent://files/reports/q3.pdf "
                      "and https://files.example.com/docs/plan.pdf")
    for _ in range(100):
        m = await message(env, user, ch, sent["id"])
        if m["previews"]:
            break
        await asyncio.sleep(0.05)
    chart, file, hosted = m["previews"]
    assert chart == {"type": "chart", "url": "sent://prism/dashboard/api-latency", "dashboard": "api-latency",
                     "title": "Dashboard api-latency", "series": [{"name": "p95", "points": [[1, 2.5], [2, 3.0]]}],
                     "link": "https://prism.example/d/api-latency", "refresh_interval": 60.0}
    assert file == {"type": "file", "url": "sent://files/reports/q3.pdf", "name": "q3.pdf", "size": 1234,
                    "mime_type": "application/pdf", "link": None}
    assert hosted["name"] == "plan.pdf" and hosted["url"] == "https://files.example.com/docs/plan.pdf"


def test_static_resolve_entries_must_be_addresses() -> None:
    from gateway.config import ConfigError, build_settings

    with pytest.raises(ConfigError, match="unfurl_resolve"):
        build_settings({"integrations": {"unfurl_resolve": {"x.example": "not-an-ip"}}})
    with pytest.raises(ConfigError, match="unfurl_allow"):
        build_settings({"integrations": {"unfurl_allow": ["10.0.0.0/99"]}})
    assert socket.AF_INET  # the module's resolver speaks both families
