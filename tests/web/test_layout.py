"""The client at a phone's width (390x844) and in dark mode, in the real Chromium: the
sidebar folds away behind a button, the message view is usable (read, send), nothing scrolls
sideways; the dark palette is used when the system asks for it; axe-core finds no serious or
critical violation in any of these. Screenshots go to tests/web/screenshots/."""

from __future__ import annotations

import secrets
from typing import Any

from tests.conftest import Server
from tests.web.conftest import SHOTS
from tests.web.test_e2e import T, api, axe_ok, message, send, sign_in

PHONE = {"width": 390, "height": 844}
DARK_BG = "rgb(26, 29, 33)"  # --bg of the dark palette (web/src/styles.css)
LIGHT_BG = "rgb(255, 255, 255)"

# Whether anything makes the page scroll sideways, and which elements stick out.
_OVERFLOW = """() => {
  const w = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('body *')].filter((e) => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && (r.right > w + 1 || r.left < -1) && getComputedStyle(e).position !== 'fixed'
      && !e.closest('[aria-hidden=true]') && e.offsetParent !== null;
  }).map((e) => e.tagName.toLowerCase() + '.' + e.className).slice(0, 5);
  return {scroll: document.documentElement.scrollWidth - w, body: document.body.scrollWidth - w, wide};
}"""


async def no_sideways_scroll(page: Any, screen: str) -> None:
    got = await page.evaluate(_OVERFLOW)
    assert got["scroll"] <= 0 and got["body"] <= 0 and not got["wide"], (screen, got)


async def background(page: Any, selector: str) -> str:
    return str(await page.locator(selector).first.evaluate("(e) => getComputedStyle(e).backgroundColor"))


async def a_channel_with_messages(srv: Server, user: str, tag: str) -> str:
    ch = (await api(srv, "POST", "/v1/channels", user, {"name": f"phone-{tag}", "topic": "a topic long enough to be cut "
                                                        "at a phone's width, however long it goes on and on"}))
    for i in range(8):
        await api(srv, "POST", f"/v1/channels/{ch['channel']['id']}/messages", user,
                  {"text": f"message {i} with a long unbroken word "
                           "supercalifragilisticexpialidocious-supercalifragilisticexpialidocious"})
    return str(ch["channel"]["name"])


async def test_a_phone_width_in_light_and_dark(web: Server, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    user = f"phone{tag}"
    page = await sign_in(browser, web, user, "Pat Phone", viewport=PHONE, is_mobile=True, has_touch=True)
    name = await a_channel_with_messages(web, user, tag)
    await page.reload()
    await page.locator("#pane-title").wait_for(timeout=T)

    # The sidebar is folded away; its button opens it over the messages, a pick closes it.
    sidebar = page.locator("nav.sidebar")
    toggle = page.get_by_role("button", name="Show channels")
    assert not await sidebar.is_visible()
    await toggle.click()
    await sidebar.wait_for(state="visible", timeout=T)
    assert await toggle.get_attribute("aria-expanded") == "true"
    await no_sideways_scroll(page, "phone, channels open")
    await axe_ok(page, "phone, channels open")
    await page.screenshot(path=str(SHOTS / "phone-channels.png"))
    await toggle.click()  # folds away again
    await sidebar.wait_for(state="hidden", timeout=T)
    await toggle.click()
    await sidebar.wait_for(state="visible", timeout=T)
    await sidebar.locator("a.chan", has_text=name).click()
    await sidebar.wait_for(state="hidden", timeout=T)
    await page.locator("#pane-title", has_text=name).wait_for(timeout=T)

    # The message view: the newest message, the composer in view, sending works.
    await message(page, "message 7 with")
    box = page.locator("main.pane .composer textarea")
    composer = await box.bounding_box()
    assert composer and composer["y"] + composer["height"] <= PHONE["height"], composer
    listing = await page.locator("main.pane .messages").bounding_box()
    assert listing and listing["height"] > 400 and listing["width"] >= 350, listing
    await send(page, f"sent from a phone {tag}")
    await message(page, f"sent from a phone {tag}")
    # The fold-out button covers nothing of the header (title, topic, buttons).
    button = await toggle.bounding_box()
    assert button
    for part in ("#pane-title", "main.pane .topic", "main.pane .head-tools"):
        r = await page.locator(part).bounding_box()
        assert r, part
        apart = (r["x"] + r["width"] <= button["x"] or button["x"] + button["width"] <= r["x"]
                 or r["y"] + r["height"] <= button["y"] or button["y"] + button["height"] <= r["y"])
        assert apart, (part, r, button)
    await no_sideways_scroll(page, "phone, channel")
    assert await background(page, "main.pane") in (LIGHT_BG, "rgba(0, 0, 0, 0)")
    assert await background(page, "body") == LIGHT_BG
    await axe_ok(page, "phone, channel")
    await page.screenshot(path=str(SHOTS / "phone-channel.png"))

    # Dark, as the system asks: the dark palette, still readable (axe checks the contrast).
    await page.emulate_media(color_scheme="dark")
    assert await background(page, "body") == DARK_BG
    await no_sideways_scroll(page, "phone, dark")
    await axe_ok(page, "phone, dark")
    await page.screenshot(path=str(SHOTS / "phone-dark.png"))
    await page.context.close()


async def test_dark_mode_at_a_desktop_width(web: Server, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    user = f"dark{tag}"
    page = await sign_in(browser, web, user, "Dana Dark", color_scheme="dark")
    await a_channel_with_messages(web, user, tag)
    await page.reload()
    await message(page, "message 7 with")
    assert await page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    assert await background(page, "body") == DARK_BG
    assert await page.locator("body").evaluate("(e) => getComputedStyle(e).color") == "rgb(232, 232, 234)"
    # Every message row and the composer are on the dark background, not a light box.
    assert await background(page, "main.pane .composer textarea") == DARK_BG
    await no_sideways_scroll(page, "dark")
    await axe_ok(page, "dark, channel")
    # A dialog in dark too.
    await page.get_by_role("button", name="Create channel").click()
    dialog = page.locator("dialog[open]")
    await dialog.wait_for(timeout=T)
    await axe_ok(page, "dark, dialog")
    await page.screenshot(path=str(SHOTS / "dark-dialog.png"))
    await page.keyboard.press("Escape")
    await dialog.wait_for(state="detached", timeout=T)
    await page.screenshot(path=str(SHOTS / "dark.png"))
    await page.context.close()
