"""gateway/chat/render.py: code snippets highlighted once at send time, mentions extracted."""

from __future__ import annotations

from gateway.chat import render


def test_language_tagged_fence_is_highlighted() -> None:
    text = "before\n```python\ndef f(x):\n    return x\n```\nafter"
    (snippet,) = render.render_snippets(text)
    assert snippet["lang"] == "python" and snippet["requested"] == "python"
    assert snippet["code"] == "def f(x):\n    return x"
    assert '<div class="highlight">' in snippet["html"]
    assert '<span class="k">def</span>' in snippet["html"]


def test_language_tags_are_case_insensitive_and_aliases_work() -> None:
    (snippet,) = render.render_snippets("```JS\nlet a = 1;\n```")
    assert snippet["lang"] == "js" and '<span class="kd">let</span>' in snippet["html"]


def test_unknown_and_missing_language_fall_back_to_plain_text() -> None:
    unknown, missing = render.render_snippets("```nosuchlang\nx = 1\n```\n\n```\ny = 2\n```")
    assert unknown["lang"] == "text" and unknown["requested"] == "nosuchlang"
    assert missing["lang"] == "text" and missing["requested"] == ""
    for snippet, code in ((unknown, "x = 1"), (missing, "y = 2")):
        assert snippet["code"] == code
        assert code in snippet["html"] and '<span class="k">' not in snippet["html"]


def test_code_is_html_escaped_whatever_the_language() -> None:
    hostile = '<script>alert("x")</script> & </pre>'
    for lang in ("html", "python", "nosuchlang", ""):
        (snippet,) = render.render_snippets(f"```{lang}\n{hostile}\n```")
        assert "<script>" not in snippet["html"] and "</pre> &" not in snippet["html"], lang
        assert "&lt;" in snippet["html"] and "&amp;" in snippet["html"], lang
        assert snippet["code"] == hostile  # the source is stored as written


def test_no_fence_no_snippet() -> None:
    assert render.render_snippets("just `inline` code and ``` not closed\nx") == []
    assert render.render_snippets("") == []


def test_multiple_fences_in_order_and_capped() -> None:
    text = "\n".join(f"```python\nx{i} = {i}\n```" for i in range(render.MAX_SNIPPETS + 5))
    snippets = render.render_snippets(text)
    assert len(snippets) == render.MAX_SNIPPETS
    assert [s["code"] for s in snippets[:3]] == ["x0 = 0", "x1 = 1", "x2 = 2"]


def test_mentions_users_channel_and_here() -> None:
    users, channel, here = render.mentions("hi @alice and @bob.smith, see @carol-1. cc @channel @here")
    assert users == {"alice", "bob.smith", "carol-1"}
    assert channel is True and here is True


def test_mentions_none() -> None:
    assert render.mentions("no mentions here") == (set(), False, False)
    assert render.mentions("") == (set(), False, False)


def test_mentions_ignore_emails_double_at_and_bare_at() -> None:
    users, channel, here = render.mentions("mail bob@example.com or @@alice or @ alone or x@channel")
    assert users == set() and channel is False and here is False


def test_mentions_inside_code_blocks_do_not_count() -> None:
    users, channel, here = render.mentions("@dave look:\n```python\n@decorator\n@channel\n```\n")
    assert users == {"dave"} and channel is False and here is False


def test_mention_at_start_of_line_and_after_punctuation() -> None:
    users, _, _ = render.mentions("@alice\n(@bob) [@carol]")
    assert users == {"alice", "bob", "carol"}
