"""Two people chatting in two browser contexts of a real headless Chromium: sign-in
(invitation and password), channel creation and invitation, messages both ways, a thread
reply, a reaction, edit, delete, a mention's desktop notification (and none in Do Not
Disturb), a network cut with every missed message shown once and in order, unread badge
and "new messages" line after a reload, XSS attempts shown as text, and axe-core on the
main screens. Screenshots go to tests/web/screenshots/ (SENTCHAT_SCREENSHOTS)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp

from tests.conftest import API_KEY, Server
from tests.web.conftest import AXE, SHOTS

PASSWORD = "a long enough password"
T = 15_000  # ms: each UI expectation

# Every `new Notification(...)` is recorded (and kept, so a test can click it through its
# `onclick`); and a flag any injected script would set.
RECORD = """
(() => {
  window.__notes = [];
  window.__noteObjs = [];
  window.__xss = 0;
  const Real = window.Notification;
  if (!Real) return;
  class Recorded extends Real {
    constructor(title, options) {
      super(title, options);
      window.__notes.push({title, body: options && options.body});
      window.__noteObjs.push(this);
    }
  }
  Object.defineProperty(Recorded, 'permission', { get: () => Real.permission });
  Recorded.requestPermission = (...a) => Real.requestPermission(...a);
  window.Notification = Recorded;
})();
"""


async def invite(srv: Server, uid: str, name: str) -> str:
    async with aiohttp.ClientSession() as http, http.post(
            f"{srv.http_url}/v1/admin/accounts/{uid}/invite", json={"display_name": name},
            headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["token"]


async def api(srv: Server, method: str, path: str, user: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as http, http.request(
            method, f"{srv.http_url}{path}", json=body,
            headers={"Authorization": f"Bearer {srv.token(user)}"}) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def new_page(browser: Any, srv: Server, **context: Any) -> Any:
    ctx = await browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **context})
    await ctx.grant_permissions(["notifications"], origin=srv.http_url)
    await ctx.add_init_script(RECORD)
    # Injected by the browser's automation channel, which the page's CSP does not govern.
    await ctx.add_init_script(path=str(AXE))
    page = await ctx.new_page()
    page.csp_errors = []  # type: ignore[attr-defined]
    page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_errors.append(m.text))
    return page


async def sign_in(browser: Any, srv: Server, uid: str, name: str, **context: Any) -> Any:
    """A new page of a new context, signed in as a new local account through its invitation."""
    token = await invite(srv, uid, name)
    page = await new_page(browser, srv, **context)
    await page.goto(f"{srv.http_url}/#/invite?token={token}")
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_label("Repeat the password").fill(PASSWORD)
    await page.get_by_role("button", name="Set password and sign in").click()
    await page.locator("nav.sidebar").wait_for(state="attached", timeout=T)
    return page


async def send(page: Any, text: str) -> None:
    box = page.locator("main.pane .composer textarea")
    await box.fill(text)
    await box.press("Enter")
    # Sent (acknowledged by the server) when the box empties.
    await page.wait_for_function("() => document.querySelector('main.pane .composer textarea').value === ''",
                                 timeout=T)


async def message(page: Any, text: str) -> Any:
    loc = page.locator("main.pane article.msg", has_text=text)
    await loc.first.wait_for(timeout=T)
    return loc.first


async def open_channel(page: Any, label: str) -> None:
    await page.locator("nav.sidebar a.chan", has_text=label).first.click()
    await page.locator("#pane-title", has_text=label).wait_for(timeout=T)


async def axe_ok(page: Any, screen: str) -> None:
    result = await page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]
           if v["impact"] in ("serious", "critical")]
    assert not bad, f"{screen}: {bad}"


async def test_two_people_chat_in_real_chromium(web: Server, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    alice_id, bob_id = f"alice{tag}", f"bob{tag}"
    alice_invite = await invite(web, alice_id, "Alice Liddell")
    bob_invite = await invite(web, bob_id, "Bob Builder")
    alice, bob = await new_page(browser, web), await new_page(browser, web)

    # ---- sign in: Alice through her invitation link, Bob with a password ----------------
    await alice.goto(f"{web.http_url}/#/invite?token={alice_invite}")
    await alice.get_by_label("Password", exact=True).fill(PASSWORD)
    await alice.get_by_label("Repeat the password").fill(PASSWORD)
    await alice.get_by_role("button", name="Set password and sign in").click()
    await alice.locator("nav.sidebar").wait_for(timeout=T)
    async with aiohttp.ClientSession() as http, http.post(f"{web.http_url}/v1/auth/invite",
                                                          json={"token": bob_invite, "password": PASSWORD}) as r:
        assert r.status == 200
    await bob.goto(web.http_url + "/")
    await axe_ok(bob, "sign-in")
    await bob.screenshot(path=str(SHOTS / "sign-in.png"))
    await bob.get_by_label("User name or e-mail").fill(bob_id)
    await bob.get_by_label("Password").fill("wrong password")
    await bob.get_by_role("button", name="Sign in", exact=True).click()
    await bob.get_by_role("alert").filter(has_text="wrong user name or password").wait_for(timeout=T)
    await bob.get_by_label("Password").fill(PASSWORD)
    await bob.get_by_role("button", name="Sign in", exact=True).click()
    await bob.locator("nav.sidebar").wait_for(timeout=T)

    # ---- a channel, an invitation -------------------------------------------------------
    name = f"launch-{tag}"
    await alice.get_by_role("button", name="Create channel").click()
    await alice.locator("input[name=channel-name]").fill(name)
    await alice.locator("input[name=channel-topic]").fill("Ship <b>it</b> javascript:alert(1)")
    await alice.get_by_role("button", name="Create", exact=True).click()
    await alice.locator("#pane-title", has_text=name).wait_for(timeout=T)
    await alice.get_by_role("button", name="Invite").click()
    await alice.locator("input[name=people-search]").fill("Bob")
    await alice.locator(f"input[data-user='{bob_id}']").check()
    await alice.get_by_role("button", name="Invite", exact=True).last.click()
    await bob.locator("nav.sidebar a.chan", has_text=name).wait_for(timeout=T)
    await open_channel(bob, name)
    assert await bob.locator(".topic").inner_text() == "Ship <b>it</b> javascript:alert(1)"

    # ---- both ways in real time ---------------------------------------------------------
    await send(alice, "hello **bob**")
    bold = (await message(bob, "hello bob")).locator(".body strong")
    assert await bold.inner_text() == "bob"
    await send(bob, "hi alice")
    await message(alice, "hi alice")

    # ---- thread reply -------------------------------------------------------------------
    first = await message(bob, "hello bob")
    await first.hover()
    await first.get_by_role("button", name="Reply in thread").click()
    box = bob.locator("aside.thread textarea")
    await box.fill("a reply in the thread")
    await box.press("Enter")
    await bob.locator("aside.thread article.msg", has_text="a reply in the thread").wait_for(timeout=T)
    await (await message(alice, "hello bob")).get_by_role("button", name="1 reply").wait_for(timeout=T)

    # ---- reaction, edit, delete ---------------------------------------------------------
    theirs = await message(alice, "hi alice")
    await theirs.hover()
    await theirs.get_by_role("button", name="Add reaction").click()
    await theirs.get_by_role("button", name="React 👍").click()
    await (await message(bob, "hi alice")).locator("button.reaction", has_text="👍 1").wait_for(timeout=T)

    await send(alice, "typo here")
    mine = await message(alice, "typo here")
    await mine.hover()
    await mine.get_by_role("button", name="Edit").click()
    editor = alice.locator("main.pane form.edit")
    await editor.locator("textarea").fill("fixed text")
    await editor.get_by_role("button", name="Save").click()
    edited = await message(bob, "fixed text")
    await edited.locator(".edited").wait_for(timeout=T)
    mine = await message(alice, "fixed text")
    await mine.hover()
    await mine.get_by_role("button", name="Delete").click()
    await mine.get_by_role("button", name="Confirm delete").click()
    await bob.locator("main.pane article.msg.deleted").first.wait_for(timeout=T)
    assert await bob.locator("main.pane article.msg", has_text="fixed text").count() == 0

    await axe_ok(bob, "channel")
    await bob.screenshot(path=str(SHOTS / "channel.png"))

    # ---- a mention notifies Bob (looking at another channel); none in DND ---------------
    other = {"name": f"other-{tag}"}
    await bob.get_by_role("button", name="Create channel").click()
    await bob.locator("input[name=channel-name]").fill(other["name"])
    await bob.get_by_role("button", name="Create", exact=True).click()
    await bob.locator("#pane-title", has_text=other["name"]).wait_for(timeout=T)
    await send(alice, f"@{bob_id} can you look?")
    await bob.wait_for_function("() => window.__notes.length === 1", timeout=T)
    note = (await bob.evaluate("window.__notes"))[0]
    assert "Alice Liddell mentioned you in" in note["title"] and "can you look?" in note["body"]
    assert await alice.evaluate("window.__notes.length") == 0
    # The mention badge on the channel Bob is not looking at.
    await bob.locator(f"a.chan[data-channel='{await channel_id(alice)}'] .mention-badge").wait_for(timeout=T)

    await bob.get_by_test_id("status-button").click()
    await bob.get_by_role("button", name="DND for 30 minutes").click()
    await bob.locator(".dnd-tag").first.wait_for(timeout=T)
    await bob.get_by_role("button", name="Close").click()
    await send(alice, f"@{bob_id} during DND")
    await asyncio.sleep(1.5)
    assert await bob.evaluate("window.__notes.length") == 1
    await bob.get_by_test_id("status-button").click()
    await bob.get_by_role("button", name="End DND").click()
    await bob.get_by_role("button", name="Close").click()

    # ---- network cut: every missed message once, in order -------------------------------
    await open_channel(bob, name)
    await bob.context.set_offline(True)
    await bob.get_by_test_id("reconnecting").wait_for(timeout=T)
    missed = [f"missed {i} {tag}" for i in range(5)]
    for text in missed:
        await send(alice, text)
    await bob.context.set_offline(False)
    await bob.get_by_test_id("reconnecting").wait_for(state="detached", timeout=30_000)
    await message(bob, missed[-1])
    texts = await bob.locator("main.pane article.msg .body").all_inner_texts()
    got = [t.strip() for t in texts if t.strip().startswith("missed ")]
    assert got == missed, got

    # ---- XSS: markup, javascript: links, names and statuses stay text -------------------
    carol = f"carol{tag}"
    async with aiohttp.ClientSession() as http, http.put(
            f"{web.http_url}/v1/admin/users/{carol}", headers={"X-API-Key": API_KEY},
            json={"display_name": '<img src=x onerror="window.__xss=1">Carol'}) as r:
        assert r.status == 200
    ch = await channel_id(alice)
    await api(web, "POST", f"/v1/channels/{ch}/invite", alice_id, {"user_ids": [carol]})
    await api(web, "PUT", "/v1/status", carol, {"text": "<script>window.__xss=4</script>", "emoji": "🔥"})
    attacks = ['<img src=x onerror="window.__xss=2">', "[click me](javascript:window.__xss=3)",
               "<script>window.__xss=5</script>", "javascript:window.__xss=6"]
    for text in attacks:
        await api(web, "POST", f"/v1/channels/{ch}/messages", carol, {"text": text})
    for text in attacks:
        await message(bob, text if "[" not in text else "[click me](javascript:")
    body_texts = await bob.locator("main.pane article.msg .body").all_inner_texts()
    for text in attacks:
        assert any(text in t for t in body_texts), text
    assert await bob.locator("main.pane article.msg .body img, main.pane article.msg .body script").count() == 0
    hrefs = await bob.locator("main.pane a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert not any(h and h.lower().startswith("javascript") for h in hrefs), hrefs
    author = bob.locator("main.pane article.msg .author", has_text="Carol").first
    assert await author.inner_text() == '<img src=x onerror="window.__xss=1">Carol'
    assert await bob.evaluate("window.__xss") == 0
    assert await alice.evaluate("window.__xss") == 0

    # ---- unread badge and "new messages" line after a reload ----------------------------
    await open_channel(bob, other["name"])
    await asyncio.sleep(0.6)  # the read markers' debounce
    await send(alice, f"after reload one {tag}")
    await send(alice, f"after reload two {tag}")
    await bob.reload()
    badge = bob.locator(f"a.chan[data-channel='{ch}'] .unread-badge")
    await badge.wait_for(timeout=T)
    assert await badge.inner_text() == "2"
    await open_channel(bob, name)
    line = bob.get_by_test_id("new-messages")
    await line.wait_for(timeout=T)
    after_line = await bob.locator("[data-row]").evaluate_all(
        "rows => { const i = rows.findIndex(r => r.querySelector('[data-testid=new-messages]'));"
        " return rows.slice(i + 1).map(r => r.innerText); }")
    assert f"after reload one {tag}" in after_line[0], after_line
    assert await bob.title() in ("SENTchat", "(1) SENTchat", "(2) SENTchat")

    await axe_ok(alice, "thread and channel")
    await alice.screenshot(path=str(SHOTS / "alice.png"))
    assert not bob.csp_errors and not alice.csp_errors, (bob.csp_errors, alice.csp_errors)
    await bob.context.close()
    await alice.context.close()


async def channel_id(page: Any) -> str:
    """The id of the channel open on ``page`` (from the URL fragment)."""
    url = page.url
    return url.split("#/c/", 1)[1]


async def test_sign_in_through_the_identity_provider(web: Server, browser: Any, idp: Any) -> None:
    """OIDC in the real browser: the button, the provider's own sign-in page, back to the
    client signed in as the provider's ``sub``, the code gone from the address bar."""
    sub = f"dana{secrets.token_hex(3)}"
    idp.add_user(sub, "dana-at-the-provider", "Dana Scully", f"{sub}@example.com")
    page = await new_page(browser, web)
    await page.goto(web.http_url + "/")
    await page.get_by_role("button", name="Sign in with SSO").click()
    await page.wait_for_url(f"{idp.issuer}/authorize**", timeout=T)
    await page.locator("#username").fill(sub)
    await page.locator("#password").fill("dana-at-the-provider")
    await page.get_by_role("button", name="Sign in at the provider").click()
    await page.wait_for_url(f"{web.http_url}/", timeout=T)  # back, the code and state removed
    await page.locator("nav.sidebar").wait_for(timeout=T)
    me = await page.evaluate("""async () => {
        const s = await fetch('/v1/auth/refresh', {method: 'POST'}).then((r) => r.json());
        return fetch('/v1/me', {headers: {Authorization: 'Bearer ' + s.token}}).then((r) => r.json());
    }""")
    assert me["user"]["id"] == sub and me["user"]["display_name"] == "Dana Scully"
    assert "code=" not in page.url
    await page.screenshot(path=str(SHOTS / "oidc-signed-in.png"))
    # A provider answer replayed into another tab of no sign-in is refused with a message.
    await page.goto(web.http_url + "/?code=replayed&state=forged")
    await page.get_by_role("alert").wait_for(timeout=T)
    assert "not started in this tab" in await page.get_by_role("alert").inner_text()
    assert page.csp_errors == []
    await page.context.close()
