"""Search through both transports against the session's real PostgreSQL: every operator of
the query language, the prefix match, highlighting of messages with markup, every access
rule (non-member, guest, removed member, deleted and edited messages, others' DMs), channel
and people search, and malformed queries each a clear 400.

The chat database is shared by the session, so every test marks its messages with a word
of its own and searches for it: other tests' public messages never match."""

from __future__ import annotations

import random
import secrets
import string
from typing import Any

import pytest
from centrifuge import Client, ReplyError

from tests.gateway.chat.conftest import ChatEnv, Reply, rpc


def word() -> str:
    """A word no other message has (letters only: it stems to itself)."""
    return "zq" + "".join(secrets.choice("bcdfghjklmnpqrtvwxz") for _ in range(10))


async def search(chat: ChatEnv, user: str, q: str, **params: Any) -> Reply:
    return await chat.http("GET", "/v1/search/messages", user, params={"q": q, **params})


async def texts(chat: ChatEnv, user: str, q: str, **params: Any) -> list[str]:
    """The hits' texts, in answer order (asserting a 200)."""
    r = await search(chat, user, q, **params)
    assert r.status == 200, (q, r.status, r.body)
    return [h["message"]["text"] for h in r.body["hits"]]


async def rpc_texts(client: Client, q: str, **params: Any) -> list[str]:
    result = await rpc(client, "search.messages", q=q, **params)
    return [h["message"]["text"] for h in result["hits"]]


async def channel(chat: ChatEnv, owner: str, *, private: bool = False,
                  members: list[str] | None = None) -> str:
    body = {"name": f"s-{secrets.token_hex(5)}", "private": private, "members": members or []}
    return (await chat.ok("POST", "/v1/channels", owner, body))["channel"]["id"]


async def send(chat: ChatEnv, user: str, channel_id: str, text: str, **more: Any) -> dict[str, Any]:
    return (await chat.ok("POST", f"/v1/channels/{channel_id}/messages", user,
                          {"text": text, **more}))["message"]


# ---- words, phrases, exclusions, prefix -----------------------------------------------


async def test_words_are_stemmed_and_accent_insensitive(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    w = word()
    await send(chat, alice, cid, f"{w} deploying the service failed")
    await send(chat, alice, cid, f"{w} the deploy went fine at the Café")
    await send(chat, alice, cid, f"{w} rollback after a deploy failure")
    assert sorted(await texts(chat, alice, f"{w} deploys ")) == sorted([
        f"{w} deploying the service failed", f"{w} the deploy went fine at the Café",
        f"{w} rollback after a deploy failure"])
    assert await texts(chat, alice, f"{w} cafe ") == [f"{w} the deploy went fine at the Café"]
    assert await texts(chat, alice, f"{w} CAFÉ ") == [f"{w} the deploy went fine at the Café"]
    # A stop word alone is still found through the unstemmed (simple) form.
    assert len(await texts(chat, alice, f"{w} the ")) == 2
    # Newest first by default.
    assert (await texts(chat, alice, w))[0] == f"{w} rollback after a deploy failure"


async def test_exact_phrases_and_exclusions(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    w = word()
    await send(chat, alice, cid, f"{w} the build went green")
    await send(chat, alice, cid, f"{w} green went the build")
    await send(chat, alice, cid, f"{w} the build failed again")
    assert await texts(chat, alice, f'{w} "build went green"') == [f"{w} the build went green"]
    assert await texts(chat, alice, f'"green went the build" {w}') == [f"{w} green went the build"]
    assert await texts(chat, alice, f'{w} "went green build"') == []
    assert sorted(await texts(chat, alice, f"{w} build -failed")) == sorted([
        f"{w} the build went green", f"{w} green went the build"])
    assert await texts(chat, alice, f'{w} -"went green" -"green went"') == [f"{w} the build failed again"]
    # Excluding a stemmed form excludes the others ("fails" excludes "failed").
    assert len(await texts(chat, alice, f"{w} -fails")) == 2


async def test_last_word_is_a_prefix_while_typing(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    w = word()
    await send(chat, alice, cid, f"{w} kubernetes upgrade tonight")
    await send(chat, alice, cid, f"{w} kubectl cheatsheet")
    assert len(await texts(chat, alice, f"{w} kube")) == 2
    assert await texts(chat, alice, f"{w} kubern") == [f"{w} kubernetes upgrade tonight"]
    # A finished word (followed by a space) is not a prefix any more.
    assert await texts(chat, alice, f"{w} kube ") == []
    # Only the last word: "kube" in the middle is a whole word.
    assert await texts(chat, alice, f"kube {w}") == []
    assert await texts(chat, alice, f"{w[:-2]}") != []  # the marker itself, as typed so far


async def test_snippet_highlights_matches_and_escapes_the_messages_markup(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    w = word()
    text = f'<b>{w}</b> & <script>alert("x")</script> `code` \ue000trap\ue001 **bold**'
    await send(chat, alice, cid, text)
    r = await search(chat, alice, f"{w} alert ")
    assert r.status == 200, r.body
    (hit,) = r.body["hits"]
    snippet = hit["snippet"]
    assert f"<mark>{w}</mark>&lt;/b&gt; &amp; &lt;script&gt;<mark>alert</mark>" in snippet
    assert "&amp;" in snippet and "&lt;script&gt;<mark>alert</mark>" in snippet
    assert "<script>" not in snippet and "<b>" not in snippet
    # Marker characters typed into a message cannot forge a highlight.
    assert snippet.count("<mark>") == 2 and snippet.count("</mark>") == 2
    assert hit["message"]["text"] == text
    # Filters only, no words: the message's beginning, escaped, nothing marked.
    r = await search(chat, alice, "from:me")
    (hit,) = r.body["hits"]
    assert hit["snippet"].startswith(f"&lt;b&gt;{w}&lt;/b&gt; &amp;") and "<mark>" not in hit["snippet"]


async def test_hit_carries_channel_author_time_thread_parent(chat: ChatEnv) -> None:
    alice = await chat.user("alice", display_name="Alice Liddell")
    cid = await channel(chat, alice)
    w = word()
    parent = await send(chat, alice, cid, f"{w} parent")
    reply = await send(chat, alice, cid, f"{w} the reply", thread_parent=parent["id"])
    r = await search(chat, alice, f"{w} reply ")
    (hit,) = r.body["hits"]
    assert hit["message"]["id"] == reply["id"]
    assert hit["message"]["thread_parent"] == parent["id"]
    assert hit["message"]["created_at"] == reply["created_at"]
    assert hit["channel"]["id"] == cid and hit["channel"]["kind"] == "public"
    assert hit["channel"]["name"].startswith("s-")
    assert hit["author"] == {"id": alice, "display_name": "Alice Liddell"}
    assert r.body["total"] == 1 and r.body["total_more"] is False and r.body["next_cursor"] is None


# ---- operators ------------------------------------------------------------------------


async def test_from_and_in_operators(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    one = await channel(chat, alice, members=[bob])
    two = await channel(chat, alice, members=[bob])
    w = word()
    await send(chat, alice, one, f"{w} from alice in one")
    await send(chat, bob, one, f"{w} from bob in one")
    await send(chat, bob, two, f"{w} from bob in two")
    dm = (await chat.ok("POST", "/v1/dms", alice, {"user_ids": [bob]}))["channel"]["id"]
    await send(chat, bob, dm, f"{w} from bob in the dm")
    ca, _ = await chat.connect(alice)
    assert sorted(await rpc_texts(ca, f"{w} from:@{bob}")) == sorted([
        f"{w} from bob in one", f"{w} from bob in two", f"{w} from bob in the dm"])
    assert await rpc_texts(ca, f"{w} from:me") == [f"{w} from alice in one"]
    assert await rpc_texts(ca, f"{w} from:{alice}") == [f"{w} from alice in one"]
    # Channel names are found whatever the case; in: by id works too.
    names = {c["id"]: c["name"] for c in (await rpc(ca, "channels.list"))["channels"]}
    assert sorted(await rpc_texts(ca, f"{w} in:#{names[one].upper()}")) == sorted([
        f"{w} from alice in one", f"{w} from bob in one"])
    assert await rpc_texts(ca, f"{w} in:{two}") == [f"{w} from bob in two"]
    assert await rpc_texts(ca, f"{w} in:@{bob}") == [f"{w} from bob in the dm"]
    # Two in: are either; from: and in: together are both.
    assert len(await rpc_texts(ca, f"{w} in:#{names[one]} in:#{names[two]}")) == 3
    assert await rpc_texts(ca, f"{w} in:#{names[one]} from:@{bob}") == [f"{w} from bob in one"]
    # Filters without words.
    assert f"{w} from bob in the dm" in await rpc_texts(ca, f"in:@{bob}")
    with pytest.raises(ReplyError) as err:
        await rpc(ca, "search.messages", q=f"{w} in:#no-such-channel-{w}")
    assert err.value.code == 400 and "no channel" in err.value.message
    carol = await chat.user("carol")
    with pytest.raises(ReplyError) as err:
        await rpc(ca, "search.messages", q=f"{w} in:@{carol}")
    assert err.value.code == 400 and "no direct message" in err.value.message


async def test_date_operators_in_the_users_time_zone(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    w = word()
    late = await send(chat, alice, cid, f"{w} late on the tenth (UTC)")
    march = await send(chat, alice, cid, f"{w} in march")
    await send(chat, alice, cid, f"{w} today")
    conn = await chat.db()
    try:
        # Backdated rows: the API cannot send in the past.
        await conn.execute("UPDATE chat_messages SET created_at = '2023-03-10 23:30+00' WHERE id = $1", late["id"])
        await conn.execute("UPDATE chat_messages SET created_at = '2023-03-20 12:00+00' WHERE id = $1", march["id"])
    finally:
        await conn.close()
    late_t, march_t, today_t = f"{w} late on the tenth (UTC)", f"{w} in march", f"{w} today"
    assert await texts(chat, alice, f"{w} on:2023-03-10") == [late_t]
    # 23:30 UTC is already the 11th in Paris.
    assert await texts(chat, alice, f"{w} on:2023-03-10", tz="Europe/Paris") == []
    assert await texts(chat, alice, f"{w} on:2023-03-11", tz="Europe/Paris") == [late_t]
    assert await texts(chat, alice, f"{w} during:2023-03") == [march_t, late_t]
    assert await texts(chat, alice, f"{w} during:2023") == [march_t, late_t]
    assert await texts(chat, alice, f"{w} before:2023-03-11") == [late_t]
    assert await texts(chat, alice, f"{w} after:2023-03-10 before:2024-01-01") == [march_t]
    assert await texts(chat, alice, f"{w} after:2023-03-20T11:59Z before:2023-03-20T12:01:00+00:00") == [march_t]
    assert await texts(chat, alice, f"{w} on:today") == [today_t]
    assert await texts(chat, alice, f"{w} after:yesterday") == [today_t]
    assert await texts(chat, alice, f"{w} on:yesterday") == []
    # Contradictory bounds: nothing, not an error.
    assert await texts(chat, alice, f"{w} before:2020-01-01 after:2021-01-01") == []


async def test_has_and_is_operators(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    cid = await channel(chat, alice, members=[bob])
    w = word()
    link = await send(chat, alice, cid, f"{w} see https://example.org/runbook")
    code = await send(chat, alice, cid, f"{w} run `make test` first")
    pinned = await send(chat, alice, cid, f"{w} pinned rules")
    reacted = await send(chat, alice, cid, f"{w} ship it")
    parent = await send(chat, alice, cid, f"{w} thread starter")
    await send(chat, bob, cid, f"{w} thread reply", thread_parent=parent["id"])
    await send(chat, alice, cid, f"{w} plain")
    await chat.ok("PUT", f"/v1/messages/{pinned['id']}/pin", alice)
    await chat.ok("PUT", f"/v1/messages/{reacted['id']}/reactions/:tada:", bob)
    assert await texts(chat, alice, f"{w} has:link") == [link["text"]]
    assert await texts(chat, alice, f"{w} has:code") == [code["text"]]
    assert await texts(chat, alice, f"{w} has:pin") == [pinned["text"]]
    assert await texts(chat, alice, f"{w} has:reaction") == [reacted["text"]]
    assert await texts(chat, alice, f"{w} is:thread") == [f"{w} thread reply", f"{w} thread starter"]
    assert await texts(chat, alice, f"{w} has:link has:code") == []
    r = await search(chat, alice, f"{w} has:reaction")
    assert r.body["hits"][0]["message"]["reactions"] == {":tada:": [bob]}


async def test_relevance_sort_cursor_pages_and_total(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    w = word()
    best = f"{w} outage outage outage postmortem outage"
    await send(chat, alice, cid, best)
    for i in range(6):
        await send(chat, alice, cid, f"{w} note {i} about an outage and many other unrelated words here")
    first = await search(chat, alice, f"{w} outage ", sort="relevance", limit=3)
    assert first.status == 200, first.body
    assert first.body["hits"][0]["message"]["text"] == best
    assert first.body["total"] == 7 and not first.body["total_more"]
    seen = [h["message"]["id"] for h in first.body["hits"]]
    cursor = first.body["next_cursor"]
    while cursor:
        page = await search(chat, alice, f"{w} outage ", sort="relevance", limit=3, cursor=cursor)
        seen += [h["message"]["id"] for h in page.body["hits"]]
        cursor = page.body["next_cursor"]
    assert len(seen) == len(set(seen)) == 7
    # Recent: pages by id, newest first, no overlap.
    ids: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await search(chat, alice, w, **params)
        ids += [h["message"]["id"] for h in page.body["hits"]]
        cursor = page.body["next_cursor"]
        if not cursor:
            break
    assert ids == sorted(ids, reverse=True) and len(ids) == 7
    # A relevance cursor is not a recent one.
    r = await search(chat, alice, w, cursor=first.body["next_cursor"])
    assert r.status == 400 and "cursor" in r.body["error"]["message"]


# ---- access ---------------------------------------------------------------------------


async def both(chat: ChatEnv, user: str, q: str) -> list[str]:
    """The same search through HTTP and through RPC: the same texts."""
    over_http = await texts(chat, user, q)
    client, _ = await chat.connect(user)
    over_rpc = await rpc_texts(client, q)
    await client.disconnect()
    assert over_http == over_rpc, (over_http, over_rpc)
    return over_http


async def test_private_channels_only_to_members_public_to_non_guests(chat: ChatEnv) -> None:
    alice, bob, guest = await chat.user("alice"), await chat.user("bob"), await chat.user("guest", role="guest")
    public = await channel(chat, alice)
    secret = await channel(chat, alice, private=True)
    guests_room = await channel(chat, alice, members=[guest])
    w = word()
    await send(chat, alice, public, f"{w} public news")
    await send(chat, alice, secret, f"{w} secret plans")
    await send(chat, alice, guests_room, f"{w} for the guest too")
    assert len(await both(chat, alice, w)) == 3
    # bob is in none of them: public ones (as channels.list shows them), never the private.
    assert sorted(await both(chat, bob, w)) == sorted([f"{w} public news", f"{w} for the guest too"])
    # A guest sees only channels it was added to.
    assert await both(chat, guest, w) == [f"{w} for the guest too"]
    # Totals count only what the searcher may read (no hint of hidden hits).
    r = await search(chat, bob, w)
    assert r.body["total"] == 2
    # Naming a private channel one cannot read answers like a missing one.
    secret_name = next(c["name"] for c in (await chat.ok("GET", "/v1/channels", alice))["channels"]
                       if c["id"] == secret)
    r1 = await search(chat, bob, f"{w} in:#{secret_name}")
    r2 = await search(chat, bob, f"{w} in:#{secret_name}x")
    assert r1.status == r2.status == 400
    assert r1.body["error"]["message"].replace(secret_name, "") == \
        r2.body["error"]["message"].replace(secret_name + "x", "")


async def test_removed_member_stops_finding_at_once(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    secret = await channel(chat, alice, private=True, members=[bob])
    w = word()
    await send(chat, alice, secret, f"{w} before the kick")
    assert await both(chat, bob, w) == [f"{w} before the kick"]
    await chat.ok("POST", f"/v1/channels/{secret}/kick", alice, {"user_id": bob})
    assert await both(chat, bob, w) == []
    assert (await search(chat, bob, w)).body["total"] == 0
    # Leaving by oneself too.
    carol = await chat.user("carol")
    other = await channel(chat, alice, private=True, members=[carol])
    await send(chat, alice, other, f"{w} carol saw this")
    assert await both(chat, carol, w) == [f"{w} carol saw this"]
    await chat.ok("POST", f"/v1/channels/{other}/leave", carol)
    assert await both(chat, carol, w) == []


async def test_deleted_never_found_edited_by_current_text_only(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    w, old, new = word(), word(), word()
    gone = await send(chat, alice, cid, f"{w} to be deleted")
    edited = await send(chat, alice, cid, f"{w} {old} first words")
    assert len(await both(chat, alice, w)) == 2
    await chat.ok("DELETE", f"/v1/messages/{gone['id']}", alice)
    await chat.ok("PATCH", f"/v1/messages/{edited['id']}", alice, {"text": f"{w} {new} second words"})
    assert await both(chat, alice, w) == [f"{w} {new} second words"]
    assert await both(chat, alice, f"{old} ") == []
    assert await both(chat, alice, f"{new} ") == [f"{w} {new} second words"]
    assert await both(chat, alice, f"{w} deleted") == []
    assert await both(chat, alice, f"{w} first") == []


async def test_others_dms_are_never_found(chat: ChatEnv) -> None:
    alice, bob, carol = await chat.user("alice"), await chat.user("bob"), await chat.user("carol")
    admin = await chat.user("admin", role="admin")
    dm = (await chat.ok("POST", "/v1/dms", alice, {"user_ids": [bob]}))["channel"]["id"]
    group = (await chat.ok("POST", "/v1/dms", alice, {"user_ids": [bob, carol]}))["channel"]["id"]
    w = word()
    await send(chat, alice, dm, f"{w} between alice and bob")
    await send(chat, alice, group, f"{w} the three of us")
    assert len(await both(chat, bob, w)) == 2
    assert await both(chat, carol, w) == [f"{w} the three of us"]
    # Workspace admins do not read others' DMs either.
    assert await both(chat, admin, w) == []
    r = await search(chat, carol, f"{w} in:@{bob}")
    assert r.status == 400


# ---- malformed queries and parameters --------------------------------------------------


@pytest.mark.parametrize(("params", "needle"), [
    ({"q": '"unbalanced quote'}, "never closed"),
    ({"q": "deploy foo:bar"}, "unknown operator foo:"),
    ({"q": "deploy before:yesterday-ish"}, "before:yesterday-ish is not a date"),
    ({"q": "deploy on:2024-02-30"}, "on:2024-02-30 is not a date"),
    ({"q": "deploy has:kittens"}, "has:kittens is not known"),
    ({"q": "deploy is:open"}, "is:open is not known"),
    ({"q": "from: deploy"}, "from: needs a value"),
    ({"q": "in:#Bad!Name x"}, "does not name a channel"),
    ({"q": "-only -exclusions"}, "exclusions only"),
    ({"q": "   "}, "empty"),
    ({"q": "x" * 1001}, "q"),
    ({"q": "a " * 5000}, "q"),
    ({"q": "nul\x00byte"}, "NUL"),
    ({"q": "deploy", "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"q": "deploy", "cursor": "garbage"}, "cursor"),
    ({"q": "deploy", "sort": "oldest"}, "sort"),
    ({"q": "deploy", "limit": "0"}, "limit"),
    ({"q": "deploy", "nope": "1"}, "nope"),
    ({}, "q"),
])
async def test_malformed_queries_are_clear_400s(chat: ChatEnv, params: dict[str, str], needle: str) -> None:
    alice = await chat.user("alice")
    r = await chat.http("GET", "/v1/search/messages", alice, params=params)
    assert r.status == 400, (params, r.status, r.body)
    assert r.body["error"]["code"] == "bad_request"
    assert needle in r.body["error"]["message"], r.body
    assert "SQL" not in r.body["error"]["message"] and "syntax error" not in r.body["error"]["message"]


async def test_malformed_queries_over_rpc(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    client, _ = await chat.connect(alice)
    for q, needle in [('"open', "never closed"), ("x todo:fix", "unknown operator"),
                      ("before:yesterday-ish", "not a date"), ("a" * 10_000, "q"), ("a\x00", "NUL")]:
        with pytest.raises(ReplyError) as err:
            await rpc(client, "search.messages", q=q)
        assert err.value.code == 400 and needle in err.value.message, (q, err.value.message)
    await client.disconnect()


async def test_random_junk_never_reaches_sql_as_syntax(chat: ChatEnv) -> None:
    """Anything typed is a 200 or a 400 naming the problem, never a 500 (a SQL error)."""
    alice = await chat.user("alice")
    rng = random.Random(14)
    alphabet = string.printable + "éßøæ中文\u200b\\'\"&|!<>:*()-@#"
    for _ in range(60):
        q = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        r = await search(chat, alice, q)
        assert r.status in (200, 400), (q, r.status, r.body)
    for q in ["a & b | !c", "a:* b:*", "'quoted'", "(x)", "<->", "a<->b", "\\", "''", "!!!x",
              "x:*", "café:*", "foo-bar baz_qux", "üñí", "日本語", "x ¹²³", "@", "#"]:
        r = await search(chat, alice, q)
        assert r.status in (200, 400), (q, r.status, r.body)


# ---- channels and people ---------------------------------------------------------------


async def test_search_channels_prefix_substring_typo_and_visibility(chat: ChatEnv) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    guest = await chat.user("guest", role="guest")
    tag = secrets.token_hex(3)
    pub = f"platform-{tag}-infra"
    sec = f"platform-{tag}-secret"
    await chat.ok("POST", "/v1/channels", alice, {"name": pub})
    await chat.ok("POST", "/v1/channels", alice, {"name": sec, "private": True})

    async def names(user: str, q: str) -> list[str]:
        r = await chat.http("GET", "/v1/search/channels", user, params={"q": q})
        assert r.status == 200, r.body
        return [c["name"] for c in r.body["channels"]]

    assert sorted(await names(alice, f"platform-{tag}")) == sorted([pub, sec])
    assert await names(alice, f"{tag}-infra") == [pub]          # substring
    assert pub in await names(alice, f"platfrom-{tag}-infra")   # a typo (pg_trgm)
    assert await names(bob, f"platform-{tag}") == [pub]         # private: members only
    assert await names(guest, f"platform-{tag}") == []          # guests: only their channels
    client, _ = await chat.connect(bob)
    found = await rpc(client, "search.channels", q=f"{tag}-secret")
    assert found["channels"] == []
    await client.disconnect()
    r = await chat.http("GET", "/v1/search/channels", alice, params={"q": ""})
    assert r.status == 400


async def test_search_users_prefix_substring_typo(chat: ChatEnv) -> None:
    alice = await chat.user("alice")
    tag = secrets.token_hex(3)
    grace = await chat.user(f"grace{tag}", display_name=f"Grace Hopper{tag}")
    r = await chat.http("GET", "/v1/search/users", alice, params={"q": f"grace{tag}"})
    assert [u["id"] for u in r.body["users"]] == [grace]
    r = await chat.http("GET", "/v1/search/users", alice, params={"q": f"hopper{tag}"})
    assert [u["id"] for u in r.body["users"]] == [grace]
    r = await chat.http("GET", "/v1/search/users", alice, params={"q": f"hoper{tag}"})
    assert grace in [u["id"] for u in r.body["users"]]
    assert r.body["users"][0]["display_name"] == f"Grace Hopper{tag}"
    client, _ = await chat.connect(alice)
    found = await rpc(client, "search.users", q=grace[:8])
    assert grace in [u["id"] for u in found["users"]]
    await client.disconnect()
    r = await chat.http("GET", "/v1/search/users", alice, params={"q": "x" * 101})
    assert r.status == 400


# ---- storage.search_dsn ----------------------------------------------------------------


async def test_search_reads_from_search_dsn(chat: ChatEnv) -> None:
    """A gateway whose storage.search_dsn names another connection target (here the same
    database under another application_name, standing in for a replica) runs its searches
    there, and everything else on postgres_dsn."""
    from tests.conftest import start_server, stop_server
    from tests.gateway.chat.conftest import chat_settings

    marker = f"search_{secrets.token_hex(3)}"
    srv = await start_server(chat_settings(chat.dsn, storage__search_dsn=f"{chat.dsn}?application_name={marker}"))
    other = ChatEnv(srv, chat.dsn)
    try:
        alice = await other.user("alice")
        cid = await channel(other, alice)
        w = word()
        await send(other, alice, cid, f"{w} through the replica")
        assert await texts(other, alice, w) == [f"{w} through the replica"]
        conn = await chat.db()
        try:
            names = {r["application_name"] for r in await conn.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")}
        finally:
            await conn.close()
        assert marker in names
    finally:
        await other.sdk.close()
        await stop_server(srv)


async def test_every_plan_path_gives_the_same_answer(chat: ChatEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact path (small results), the newest-first walk (many matches expected, total
    estimated) and the walk abandoned past its time budget all return the same hits."""
    import storage.search

    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    w = word()
    for i in range(7):
        await send(chat, alice, cid, f"{w} item {i} {'even' if i % 2 == 0 else 'odd'}")
    queries = [(f"{w} even", {}), (f"{w}", {"limit": 3}), (f'"{w} item"', {}),
               (f"{w} on:today", {}), (f"{w} odd", {"sort": "relevance"})]

    async def answers() -> list[list[int]]:
        out = []
        for q, params in queries:
            r = await search(chat, alice, q, **params)
            assert r.status == 200, r.body
            out.append([h["message"]["id"] for h in r.body["hits"]])
        return out

    exact = await answers()
    monkeypatch.setattr(storage.search, "WALK_ABOVE_ESTIMATE", -1)
    assert await answers() == exact
    r = await search(chat, alice, w, limit=3)
    assert r.body["total_estimated"] is True and r.body["next_cursor"]
    r = await search(chat, alice, f"{w} even")
    assert r.body["total"] == 4 and r.body["total_estimated"] is False  # one page: exact
    monkeypatch.setattr(storage.search, "WALK_BUDGET_MS", 1)
    assert await answers() == exact


@pytest.mark.parametrize("patch", [
    {},                                                    # the exact path
    {"WALK_ABOVE_ESTIMATE": -1},                           # a walk fills the page
    {"WALK_ABOVE_ESTIMATE": -1, "WALK_BUDGET_MS": 1},      # the walk runs out of time
    {"WALK_ROWS_PER_MS": 1e-9},                            # sparse: no walk, newest sorted
    {"WALK_ROWS_PER_MS": 1e-9, "SORT_ALL_BELOW_ESTIMATE": -1},  # sparse but many expected
], ids=["exact", "walk", "walk-timeout", "sparse", "sparse-many"])
@pytest.mark.parametrize("cap", [1000, 4])
async def test_every_plan_path_pages_the_same(chat: ChatEnv, monkeypatch: pytest.MonkeyPatch,
                                              patch: dict[str, float], cap: int) -> None:
    """Paging through every hit with the cursor gives the same ids, newest first, on every
    plan path, with a result under the count cap and over it (a cap of 4: "more than")."""
    import storage.search

    alice = await chat.user("alice")
    cid = await channel(chat, alice)
    other = await channel(chat, alice)
    w = word()
    sent = []
    for i in range(9):
        sent.append((await send(chat, alice, cid if i % 3 else other, f"{w} item {i}"))["id"])
        await send(chat, alice, cid, f"unrelated {i}")
    monkeypatch.setattr(storage.search, "COUNT_CAP", cap)
    for name, value in patch.items():
        monkeypatch.setattr(storage.search, name, value)
    for q in (w, w[:-1], f'"{w} item"'):   # a word, a prefix while typing, a phrase
        seen: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            r = await search(chat, alice, q, **params)
            assert r.status == 200, r.body
            if not seen and not r.body["total_estimated"]:
                assert r.body["total"] == min(9, cap) and r.body["total_more"] == (cap < 9)
            seen += [h["message"]["id"] for h in r.body["hits"]]
            cursor = r.body["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(sent, reverse=True), (q, patch, cap)
