"""The web client's benchmark: ``python -m bench.web``.

1. **Transferred size**: the JS and CSS that ``index.html`` loads, fetched from the gateway
   with ``Accept-Encoding: gzip`` as a browser does, bytes on the wire (target <= 250 KB).
2. A gateway in this process (embedded defaults, chat on, its own embedded PostgreSQL or
   ``--dsn``) with one user and two channels: ``big`` with ``--messages`` messages (default
   100,000, written in one INSERT ... SELECT by ``bench.chat.bulk_load``) and ``small``.
3. In Debian's Chromium (Playwright), signed in through the real sign-in route:
   - **first messages**: navigation start to the newest message of ``big`` in the DOM,
     read in the page (``performance.now()`` is measured from navigation start), over
     ``--loads`` fresh pages (target < 1 s);
   - **channel switch**: a click on the other channel to its newest message in the DOM,
     polled every animation frame, ``--switches`` times alternating (target P95 < 200 ms);
   - **scroll-back**: the message list scrolled to its top until ``--scrollback`` messages
     (default 5,000) older than the newest were loaded and shown, the JS heap (after a
     forced GC, CDP ``Runtime.getHeapUsage``) and the DOM's message count sampled on the way:
     a virtualized list with a bounded window keeps both flat.

Prints a summary and writes the JSON result under ``bench/results/`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TARGETS = {"gzip_kb": 250.0, "first_messages_ms": 1000.0, "switch_p95_ms": 200.0}
PASSWORD = "bench password long enough"  # noqa: S105 - a throw-away bench account
SMALL = 300  # messages in the second channel


def _settings(dsn: str) -> Any:
    from gateway.config import load_settings

    secret = secrets.token_urlsafe(32)
    return load_settings(ROOT / "gateway" / "defaults.toml", environ={}, overrides={
        ("client", "token", "hmac_secret_key"): secret,
        ("http_api", "key"): secrets.token_urlsafe(16),
        ("storage", "postgres_dsn"): dsn,
        # A fixed test key: the bench's database is thrown away.
        ("chat", "encryption_keys"): {"b1": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="},
        ("chat", "encryption_key_id"): "b1",
    })[0]


async def transferred(url: str) -> dict[str, Any]:
    """Bytes on the wire of the JS and CSS that the index loads, gzip as negotiated."""
    out: dict[str, Any] = {"files": {}}
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(url + "/", headers={"Accept-Encoding": "gzip"}) as resp:
            raw = await resp.read()
            index = gzip.decompress(raw) if resp.headers.get("Content-Encoding") == "gzip" else raw
        for path in re.findall(rb'(?:src|href)="(/assets/[^"]+\.(?:js|css))"', index):
            async with http.get(url + path.decode(), headers={"Accept-Encoding": "gzip"}) as resp:
                body = await resp.read()
                out["files"][path.decode()] = {"bytes": len(body), "encoding": resp.headers.get("Content-Encoding", "")}
    out["index_bytes"] = len(raw)
    out["js_css_gzip_bytes"] = sum(f["bytes"] for f in out["files"].values())
    return out


async def setup(url: str, api_key: str, dsn: str, messages: int) -> dict[str, Any]:
    """One user (signed up through the invitation route) and the two channels, filled."""
    from bench.chat import bulk_load

    user = "benchuser"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/admin/accounts/{user}/invite", json={"display_name": "Bench User"},
                             headers={"X-API-Key": api_key}) as resp:
            invite = (await resp.json())["token"]
        async with http.post(f"{url}/v1/auth/invite", json={"token": invite, "password": PASSWORD}) as resp:
            token = (await resp.json())["token"]
        ids = {}
        for name in ("big", "small"):
            async with http.post(f"{url}/v1/channels", json={"name": f"{name}-{secrets.token_hex(3)}"},
                                 headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status in (200, 201), await resp.text()  # noqa: S101 - a bench precondition
                ids[name] = (await resp.json())["channel"]["id"]
    t0 = time.perf_counter()
    big = await bulk_load(dsn, ids["big"], messages, [user, "someone", "another"])
    small = await bulk_load(dsn, ids["small"], SMALL, [user, "someone"])
    return {"user": user, "channels": ids, "load_s": round(time.perf_counter() - t0, 2),
            "big": big, "small": small}


# In the page: click, then poll each animation frame until a message containing ``text``
# is in the list; the time in ms.
_SWITCH = """async ([id, text]) => {
  const t0 = performance.now();
  document.querySelector(`a.chan[data-channel="${id}"]`).click();
  await new Promise((done) => {
    const check = () => [...document.querySelectorAll('main.pane article.msg')].some((a) => a.textContent.includes(text))
      ? done() : requestAnimationFrame(check);
    check();
  });
  return performance.now() - t0;
}"""

# In the page: wait (each frame) until ``text`` is shown; ms since navigation start.
_SHOWN = """async (text) => {
  await new Promise((done) => {
    const check = () => [...document.querySelectorAll('main.pane article.msg')].some((a) => a.textContent.includes(text))
      ? done() : requestAnimationFrame(check);
    check();
  });
  return performance.now();
}"""

# In the page: scroll the list to its top; the lowest message number shown and the count.
_BACK = """async () => {
  const box = document.querySelector('main.pane .messages');
  box.scrollTop = 0;
  box.dispatchEvent(new Event('scroll'));
  await new Promise((r) => setTimeout(r, 30));
  const nums = [...document.querySelectorAll('main.pane article.msg')]
    .map((a) => Number((a.textContent.match(/history message (\\d+):/) || [])[1])).filter((n) => n > 0);
  return [Math.min(...nums), nums.length, document.getElementsByTagName('*').length];
}"""


def _last_text(n: int) -> str:
    return f"history message {n}:"


async def browse(url: str, chromium: str, ids: dict[str, str], messages: int, loads: int, switches: int,
                 scrollback: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    out: dict[str, Any] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        out["chromium"] = browser.version
        ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
        resp = await ctx.request.post(f"{url}/v1/auth/login", data={"login": "benchuser", "password": PASSWORD})
        assert resp.ok, await resp.text()  # noqa: S101 - the refresh cookie now lives in the context

        first: list[float] = []
        for _ in range(loads):
            page = await ctx.new_page()
            await page.goto(f"{url}/#/c/{ids['big']}", wait_until="commit")
            first.append(await page.evaluate(_SHOWN, _last_text(messages)))
            await page.close()
        out["first_messages_ms"] = {"runs": [round(v, 1) for v in first], "median": round(statistics.median(first), 1),
                                    "max": round(max(first), 1)}

        page = await ctx.new_page()
        await page.goto(f"{url}/#/c/{ids['big']}", wait_until="commit")
        await page.evaluate(_SHOWN, _last_text(messages))
        times: list[float] = []
        for i in range(switches):
            target, text = (ids["small"], _last_text(SMALL)) if i % 2 == 0 else (ids["big"], _last_text(messages))
            times.append(await page.evaluate(_SWITCH, [target, text]))
        times.sort()
        out["switch_ms"] = {"n": len(times), "median": round(statistics.median(times), 1),
                            "p95": round(times[min(len(times) - 1, int(len(times) * 0.95))], 1),
                            "max": round(times[-1], 1), "first_visit": round(times[0 if switches == 1 else 0], 1)}

        # Scroll back through ``scrollback`` messages of the big channel.
        if switches % 2 == 1:  # the last switch went to the small channel: back to the big one
            await page.evaluate(_SWITCH, [ids["big"], _last_text(messages)])
        cdp = await ctx.new_cdp_session(page)

        async def heap() -> int:
            await cdp.send("HeapProfiler.collectGarbage")
            return int((await cdp.send("Runtime.getHeapUsage"))["usedSize"])

        samples = [{"back": 0, "heap_bytes": await heap(), "dom_nodes": 0}]
        goal = messages - scrollback
        step = max(1, scrollback // 10)
        next_sample = step
        t0 = time.perf_counter()
        lowest, stalled = messages, 0
        while lowest > goal:
            low, shown, nodes = await page.evaluate(_BACK)
            if low >= lowest:
                stalled += 1
                if stalled > 200:  # 6 s without an older message: the client stopped loading
                    raise RuntimeError(f"scroll-back stalled at message {lowest}")
            else:
                stalled = 0
                lowest = low
            if messages - lowest >= next_sample:
                samples.append({"back": messages - lowest, "heap_bytes": await heap(), "dom_nodes": nodes,
                                "messages_in_dom": shown})
                next_sample += step
        out["scrollback"] = {"messages": messages - lowest, "seconds": round(time.perf_counter() - t0, 2),
                             "samples": samples,
                             "heap_start_mb": round(samples[0]["heap_bytes"] / 2**20, 2),
                             "heap_end_mb": round(samples[-1]["heap_bytes"] / 2**20, 2),
                             "heap_max_mb": round(max(s["heap_bytes"] for s in samples) / 2**20, 2),
                             "dom_nodes_max": max(s["dom_nodes"] for s in samples)}
        await browser.close()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.durable import Postgres
    from gateway.compose import build_node
    from gateway.server import serve
    from gateway.web import static

    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium), or pass --chromium")
    site = static.reload()
    if not site.available:
        raise SystemExit("the web client is not built: npm ci --prefix web && npm run build --prefix web")
    pg = Postgres(args.dsn)
    await pg.start()
    result: dict[str, Any] = {"config": vars(args) | {"chromium": chromium}, "machine": machine()}
    try:
        dsn = await pg.create_database(f"web_{secrets.token_hex(3)}")
        settings = _settings(dsn)
        node = build_node(settings)
        await node.start()
        server = await serve(node, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        try:
            result["transfer"] = await transferred(url)
            result["setup"] = await setup(url, settings.http_api.key, dsn, args.messages)
            result["browser"] = await browse(url, chromium, result["setup"]["channels"], args.messages,
                                             args.loads, args.switches, args.scrollback)
        finally:
            server.close()
            await node.stop()
    finally:
        await pg.stop()
    result["verdict"] = verdict(result)
    return result


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0]}


def verdict(result: dict[str, Any]) -> dict[str, str]:
    kb = result["transfer"]["js_css_gzip_bytes"] / 1000
    first = result["browser"]["first_messages_ms"]["median"]
    p95 = result["browser"]["switch_ms"]["p95"]
    return {
        "gzip_kb": f"{kb:.1f} KB vs <= {TARGETS['gzip_kb']:.0f} KB: {'met' if kb <= TARGETS['gzip_kb'] else 'NOT met'}",
        "first_messages_ms": f"{first:.0f} ms vs < {TARGETS['first_messages_ms']:.0f} ms: "
                             f"{'met' if first < TARGETS['first_messages_ms'] else 'NOT met'}",
        "switch_p95_ms": f"{p95:.0f} ms vs < {TARGETS['switch_p95_ms']:.0f} ms: "
                         f"{'met' if p95 < TARGETS['switch_p95_ms'] else 'NOT met'}",
    }


def summary(result: dict[str, Any]) -> str:
    b, t, m = result["browser"], result["transfer"], result["machine"]
    s = b["scrollback"]
    return "\n".join([
        f"machine: {m['cpu']} ({m['cores']} cores), Chromium {b['chromium']}",
        f"JS+CSS transferred (gzip): {t['js_css_gzip_bytes'] / 1000:.1f} KB in {len(t['files'])} files",
        f"channel of {result['setup']['big']['messages']:,} messages (loaded in {result['setup']['load_s']} s)",
        f"first messages shown: median {b['first_messages_ms']['median']} ms, max {b['first_messages_ms']['max']} ms "
        f"over {len(b['first_messages_ms']['runs'])} loads",
        f"channel switch: median {b['switch_ms']['median']} ms, P95 {b['switch_ms']['p95']} ms, "
        f"max {b['switch_ms']['max']} ms over {b['switch_ms']['n']} switches",
        f"scroll-back {s['messages']:,} messages in {s['seconds']} s: JS heap {s['heap_start_mb']} MB -> "
        f"{s['heap_end_mb']} MB (max {s['heap_max_mb']} MB), DOM nodes <= {s['dom_nodes_max']}",
        *(f"target {k}: {v}" for k, v in result["verdict"].items()),
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000, help="messages in the big channel")
    p.add_argument("--loads", type=int, default=5, help="fresh page loads measured")
    p.add_argument("--switches", type=int, default=40, help="channel switches measured")
    p.add_argument("--scrollback", type=int, default=5000, help="messages scrolled back through")
    p.add_argument("--dsn", help="a PostgreSQL server to use instead of an embedded one")
    p.add_argument("--chromium", help="the Chromium binary (default: chromium on PATH)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "web.json")
    args = p.parse_args(argv)
    if args.messages < 100 or args.scrollback >= args.messages or args.loads < 1 or args.switches < 2:
        p.error("need --messages >= 100, --scrollback < --messages, --loads >= 1, --switches >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(summary(result))
    print(f"result: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
