"""The header's search box in a real headless Chromium: Enter searches, the hit shows the
server's snippet with the word marked and the message's own markup as text (never as
elements), clicking it opens the channel at the message (highlighted), Escape closes the
results, a channel the searcher is not in is never found, axe-core is clean with the results
open, and "Load more" pages on with the cursor."""

from __future__ import annotations

import secrets
from typing import Any

from tests.conftest import Server
from tests.web.conftest import SHOTS
from tests.web.test_e2e import T, api, axe_ok, open_channel, sign_in


async def test_search_finds_marks_and_opens_a_message(web: Server, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    alice, bob, carol = f"salice{tag}", f"sbob{tag}", f"scarol{tag}"
    word = f"needle{tag}"
    page = await sign_in(browser, web, bob, "Bob Seeker")
    await api(web, "PUT", "/v1/status", alice, {"text": ""})  # Alice and Carol exist
    await api(web, "PUT", "/v1/status", carol, {"text": ""})
    chan = f"hay-{tag}"
    ch = (await api(web, "POST", "/v1/channels", alice, {"name": chan}))["channel"]["id"]
    await api(web, "POST", f"/v1/channels/{ch}/invite", alice, {"user_ids": [bob]})
    target = (await api(web, "POST", f"/v1/channels/{ch}/messages", alice,
                        {"text": f"<b>bold{tag}</b> {word} <i>y</i>"}))["message"]
    # Many newer messages: the hit is not on the page the channel opens with.
    for i in range(60):
        await api(web, "POST", f"/v1/channels/{ch}/messages", alice, {"text": f"filler {i} {tag}"})
    # Carol's private channel: Bob is not a member, its needle is never his to find.
    secret = (await api(web, "POST", "/v1/channels", carol, {"name": f"secret-{tag}", "private": True}))["channel"]["id"]
    await api(web, "POST", f"/v1/channels/{secret}/messages", carol, {"text": f"hidden bold{tag} {word} here"})
    other = (await api(web, "POST", "/v1/channels", bob, {"name": f"mine-{tag}"}))["channel"]["id"]
    await page.goto(f"{web.http_url}/#/c/{other}")
    await page.reload()
    await open_channel(page, f"mine-{tag}")

    box = page.get_by_role("searchbox", name="Search messages")
    await box.click()
    await box.fill(f"bold{tag} {word}")
    await box.press("Enter")
    results = page.get_by_test_id("search-results")
    hit = results.locator(f"button.hit[data-message='{target['id']}']")
    await hit.wait_for(timeout=T)
    await page.get_by_role("status").filter(has_text="1 result").wait_for(timeout=T)
    assert await results.locator("button.hit").count() == 1  # not Carol's private message
    assert "hidden" not in await results.inner_text()
    assert chan in await hit.inner_text() and alice in await hit.inner_text()
    # The word marked; the markup shown as text, never made into elements.
    assert await hit.locator("mark").all_inner_texts() == [f"bold{tag}", word]
    assert await results.locator("b, img, script").count() == 0
    snippet = await hit.locator(".snippet").inner_text()
    assert f"bold{tag}</b> {word}" in snippet, snippet
    assert await page.evaluate("() => window.__xss") == 0
    await axe_ok(page, "search results")
    await page.screenshot(path=str(SHOTS / "search-results.png"))

    # Escape closes, focus stays on the box; Enter again shows the results again.
    await box.press("Escape")
    await results.wait_for(state="detached", timeout=T)
    assert await page.evaluate("() => document.activeElement && document.activeElement.id") == "search-q"
    assert await box.input_value() == f"bold{tag} {word}"  # the words are kept
    await box.press("Enter")
    await hit.wait_for(timeout=T)
    # A hit by keyboard: focus it and press Enter; the channel opens at the message.
    await hit.focus()
    await page.keyboard.press("Enter")
    await results.wait_for(state="detached", timeout=T)
    await page.locator("#pane-title", has_text=chan).wait_for(timeout=T)
    shown = page.locator(f"main.pane article.msg.highlight[data-message='{target['id']}']")
    await shown.wait_for(timeout=T)
    assert word in await shown.inner_text()
    assert await page.evaluate("() => window.__xss") == 0

    # "Load more": 60 fillers match, 20 a page, then the next 20 with the cursor.
    await box.fill(f"filler {tag}")
    await box.press("Enter")
    await page.get_by_role("status").filter(has_text="60 results").wait_for(timeout=T)
    assert await results.locator("button.hit").count() == 20
    await results.get_by_role("button", name="Load more").click()
    await page.wait_for_function("() => document.querySelectorAll('[data-testid=search-results] button.hit').length === 40",
                                 timeout=T)
    ids = await results.locator("button.hit").evaluate_all("els => els.map((e) => Number(e.dataset.message))")
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 40, ids
    await page.context.close()
