"""Long history in the real Chromium: a channel of more than MAX_KEPT (3,000) messages
scrolled back past the point where the client drops the newest from memory, then forward
again until the newest (and a message that arrived meanwhile) are shown, each exactly once
and in order; and a desktop notification clicked open at its message, deep in history,
scrolled to and highlighted, with "Jump to latest" back to the newest."""

from __future__ import annotations

import secrets
from typing import Any

from bench.chat import bulk_load
from tests.conftest import Server
from tests.web.conftest import SHOTS
from tests.web.test_e2e import T, api, axe_ok, open_channel, sign_in

MAX_KEPT = 3000  # web/src/state.ts

# The "history message N:" numbers of the messages in the DOM, top to bottom.
_NUMS = """() => [...document.querySelectorAll('main.pane article.msg')]
  .map((a) => Number((a.textContent.match(/history message (\\d+):/) || [])[1])).filter((n) => n > 0)"""

# Scroll to the top (or the bottom) again and again, each time waiting until the list
# shows older (newer) messages, until ``target`` is shown or nothing more comes. Returns
# every snapshot of the numbers shown, and whether the list says newer messages are not held.
_SCROLL = """async ([direction, target]) => {
  const box = document.querySelector('main.pane .messages');
  const nums = """ + _NUMS + """;
  const edge = () => (direction === 'back' ? Math.min(...nums()) : Math.max(...nums()));
  const done = () => (direction === 'back' ? edge() <= target : nums().includes(target) && !box.dataset.hasNewer);
  const snapshots = [nums()];
  const t0 = performance.now();
  while (!done() && performance.now() - t0 < 90000) {
    const before = edge();
    box.scrollTop = direction === 'back' ? 0 : box.scrollHeight;
    box.dispatchEvent(new Event('scroll'));
    const t1 = performance.now();
    await new Promise((ok) => {
      const check = () => (edge() !== before || performance.now() - t1 > 5000 ? ok() : requestAnimationFrame(check));
      check();
    });
    await new Promise((ok) => requestAnimationFrame(ok));
    snapshots.push(nums());
  }
  return {snapshots, hasNewer: Boolean(box.dataset.hasNewer), inDom: document.querySelectorAll('main.pane article.msg').length};
}"""


def consecutive(nums: list[int]) -> bool:
    return all(b == a + 1 for a, b in zip(nums, nums[1:], strict=False))


async def test_scrolling_forward_pages_the_trimmed_newest_back(web: Server, web_dsn: str, browser: Any) -> None:
    tag = secrets.token_hex(3)
    user = f"reader{tag}"
    total = MAX_KEPT + 600
    page = await sign_in(browser, web, user, "Rita Reader")
    ch = (await api(web, "POST", "/v1/channels", user, {"name": f"long-{tag}"}))["channel"]["id"]
    await bulk_load(web_dsn, ch, total, [user, "someone"])
    await page.reload()
    await open_channel(page, f"long-{tag}")
    await page.locator("main.pane article.msg", has_text=f"history message {total}:").wait_for(timeout=T)

    # Back past the trim: more than MAX_KEPT messages held means the newest were dropped.
    back = await page.evaluate(_SCROLL, ["back", total - MAX_KEPT - 100])
    assert min(back["snapshots"][-1]) <= total - MAX_KEPT - 100, back["snapshots"][-3:]
    assert back["hasNewer"], "the newest messages should have been dropped from memory"
    assert back["inDom"] < 100
    await page.get_by_test_id("jump-latest").wait_for(timeout=T)
    # A message arrives while the newest are not held: not appended after a gap, shown later.
    live = f"live while scrolled back {tag}"
    await api(web, "POST", f"/v1/channels/{ch}/messages", user, {"text": live})

    # Forward again, page by page, to the newest.
    fwd = await page.evaluate(_SCROLL, ["forward", total])
    for snap in fwd["snapshots"]:
        assert consecutive(snap), snap  # each view: in order, no gap, no repeat
    shown = fwd["snapshots"][-1]
    assert shown[-1] == total and not fwd["hasNewer"], shown
    assert fwd["inDom"] < 100
    rows = page.locator("main.pane article.msg")
    await page.locator("main.pane article.msg", has_text=live).wait_for(timeout=T)
    texts = [t.strip() for t in await rows.all_inner_texts()]
    newest = [i for i, t in enumerate(texts) if f"history message {total}:" in t]
    after = [i for i, t in enumerate(texts) if live in t]
    assert len(newest) == 1 and len(after) == 1 and after[0] > newest[0], texts[-3:]
    await page.get_by_test_id("jump-latest").wait_for(state="detached", timeout=T)
    await axe_ok(page, "long channel")
    await page.context.close()


async def test_a_clicked_notification_opens_its_message(web: Server, web_dsn: str, browser: Any) -> None:
    tag = secrets.token_hex(3)
    alice, bob = f"nalice{tag}", f"nbob{tag}"
    page = await sign_in(browser, web, bob, "Bob Notified")
    await api(web, "PUT", "/v1/status", alice, {"text": ""})  # Alice exists
    ch = (await api(web, "POST", "/v1/channels", alice, {"name": f"busy-{tag}"}))["channel"]["id"]
    await api(web, "POST", f"/v1/channels/{ch}/invite", alice, {"user_ids": [bob]})
    await bulk_load(web_dsn, ch, 200, [alice, "someone"])  # older history
    elsewhere = f"elsewhere-{tag}"
    other = (await api(web, "POST", "/v1/channels", bob, {"name": elsewhere}))["channel"]["id"]
    # Straight to the other channel: Bob's client has never read `busy` (the bulk-loaded
    # messages bypass the live stream, so a held copy would not know of them).
    await page.goto(f"{web.http_url}/#/c/{other}")
    await page.reload()
    await page.locator("#pane-title", has_text=elsewhere).wait_for(timeout=T)

    mention = f"@{bob} please read this one {tag}"
    sent = (await api(web, "POST", f"/v1/channels/{ch}/messages", alice, {"text": mention}))["message"]
    await page.wait_for_function("() => window.__noteObjs.length === 1", timeout=T)
    # Many newer messages: the mention is far from the latest page the channel opens with.
    await bulk_load(web_dsn, ch, 300, ["someone", alice])  # (the first author reacts: not twice)

    await page.evaluate("() => window.__noteObjs[0].onclick(new Event('click'))")
    await page.locator("#pane-title", has_text=f"busy-{tag}").wait_for(timeout=T)
    target = page.locator(f"main.pane article.msg.highlight[data-message='{sent['id']}']")
    await target.wait_for(timeout=T)
    assert f"please read this one {tag}" in await target.inner_text()
    box = await page.locator("main.pane .messages").bounding_box()
    row = await target.bounding_box()
    assert box and row and box["y"] <= row["y"] and row["y"] + row["height"] <= box["y"] + box["height"] + 1, (box, row)
    assert await page.locator("main.pane article.msg.highlight").count() == 1
    # Its neighbours around it, in order, and the newest not held: "Jump to latest" offered.
    ids = await page.locator("main.pane article.msg").evaluate_all("els => els.map((e) => Number(e.dataset.message))")
    assert ids == sorted(set(ids)) and sent["id"] in ids, ids
    at = ids.index(sent["id"])
    texts = await page.locator("main.pane article.msg").all_inner_texts()
    assert "history message 200:" in texts[at - 1] and "history message 1:" in texts[at + 1], texts[at - 1: at + 2]
    jump = page.get_by_test_id("jump-latest")
    await jump.wait_for(timeout=T)
    await axe_ok(page, "notification opened")
    await page.screenshot(path=str(SHOTS / "notification-opened.png"))
    await jump.click()
    await page.locator("main.pane article.msg", has_text="history message 300:").wait_for(timeout=T)
    assert await page.locator("main.pane article.msg", has_text="history message 300:").count() == 1
    await jump.wait_for(state="detached", timeout=T)
    await page.context.close()
