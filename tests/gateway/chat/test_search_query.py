"""The search query parser (gateway/chat/search_query.py), without a database: every
operator, every refusal, date resolution in time zones, and a hypothesis fuzz showing that
any text either parses or raises QueryError (never anything else), and that parsing what
``format_query`` writes gives the same query back."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chat.search_query import (
    MAX_QUERY_CHARS,
    MAX_TERMS,
    DateFilter,
    Query,
    QueryError,
    Term,
    format_query,
    parse,
    resolve_dates,
)

W = Term("word", "deploy")


def test_words_and_the_prefix_rule() -> None:
    assert parse("deploy fail") == Query(terms=(W, Term("word", "fail", prefix=True)))
    assert parse("deploy fail ") == Query(terms=(W, Term("word", "fail")))
    assert parse("deploy") == Query(terms=(Term("word", "deploy", prefix=True),))
    # Too short, or not only letters and digits: a whole word.
    assert parse("deploy a") == Query(terms=(W, Term("word", "a")))
    assert parse("deploy v1.2") == Query(terms=(W, Term("word", "v1.2")))
    # Words after the last operator or phrase are not at the end.
    assert parse("deploy in:#ops").terms == (W,)
    assert parse('deploy "x y"').terms == (W, Term("phrase", "x y"))
    assert parse("café").terms == (Term("word", "café", prefix=True),)


def test_phrases_exclusions_and_punctuation() -> None:
    q = parse('"exact   phrase" -bad -"not this" deploy ')
    assert q.terms == (Term("phrase", "exact phrase"), W)
    assert q.excluded == (Term("word", "bad"), Term("phrase", "not this"))
    assert parse('a"b c"d ').terms == (Term("word", "a"), Term("phrase", "b c"), Term("word", "d"))
    # Punctuation alone and empty phrases look for nothing and are dropped.
    assert parse('deploy !! "" - -- ').terms == (W,)
    assert parse("deploy - x").terms == (W, Term("word", "x", prefix=False))
    assert parse("10:30 https://example.org/a?b=c ").terms == (
        Term("word", "10:30"), Term("word", "https://example.org/a?b=c"))


def test_every_operator() -> None:
    q = parse("from:@alice from:bob from:me from:@alice in:#General in:c0ffee in:@carol "
              "before:2024-05-01 after:2024-04-01T10:00Z on:today during:2024-05 during:march "
              "has:link has:CODE has:pin has:reaction has:link is:thread x ")
    assert q.from_users == ("alice", "bob", "me")
    assert q.in_channels == ("general", "c0ffee")
    assert q.in_dms == ("carol",)
    assert q.dates == (DateFilter("before", "2024-05-01"), DateFilter("after", "2024-04-01t10:00z"),
                       DateFilter("on", "today"), DateFilter("during", "2024-05"),
                       DateFilter("during", "march"))
    assert q.has == ("code", "link", "pin", "reaction")
    assert q.is_ == ("thread",)
    assert q.terms == (Term("word", "x"),)
    # Operator names are case-insensitive; filters alone are a query.
    assert parse("FROM:@alice").from_users == ("alice",)
    assert parse("has:pin") == Query(has=("pin",))


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty"),
    ("   ", "empty"),
    ("!!! ??", "empty"),
    ('"open', "character 1 is never closed"),
    ('deploy "open', "character 8 is never closed"),
    ('-"open', "never closed"),
    ("foo:bar", "unknown operator foo:"),
    ("deploy TODO:fix", 'put "TODO:fix" in quotes'),
    ("from:", "from: needs a value"),
    ("in:", "in: needs a value"),
    ("has:", "has: needs a value"),
    ("from:@", "does not name a user"),
    ("from:@x!", "does not name a user"),
    ("in:#", "does not name a channel"),
    ("in:#Bad!", "does not name a channel"),
    ("in:@", "does not name a user"),
    ("before:yesterday-ish", "before:yesterday-ish is not a date"),
    ("before:2024-13-01", "not a date"),
    ("after:2024-02-30", "not a date"),
    ("on:2024-05", "on:2024-05 is not a date"),          # a month is during:'s
    ("on:2024-05-01T10:00", "not a date"),                # an instant is before/after's
    ("during:2024-13", "not a date"),
    ("during:marchish", "not a date"),
    ("before:20240501", "not a date"),
    ("has:kittens", "has:kittens is not known"),
    ("is:open", "is:open is not known"),
    ("-from:@alice x", "excludes words and phrases"),
    ("-x -y", "exclusions only"),
    ("nul\x00byte", "NUL byte"),
    ("x" * (MAX_QUERY_CHARS + 1), f"at most {MAX_QUERY_CHARS}"),
    ("a " * (MAX_TERMS + 1), f"more than {MAX_TERMS}"),
])
def test_refusals_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(QueryError) as err:
        parse(text)
    assert needle in str(err.value)


def test_limits_are_inclusive() -> None:
    assert parse("x" * MAX_QUERY_CHARS).terms[0].text == "x" * MAX_QUERY_CHARS
    assert len(parse("a " * MAX_TERMS).terms) == MAX_TERMS


NOW = datetime(2024, 5, 15, 22, 30, tzinfo=UTC)  # already May 16th in Paris
PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def dates(text: str, tz: ZoneInfo | None = None) -> tuple[datetime | None, datetime | None]:
    return resolve_dates(parse(text).dates, NOW, tz or ZoneInfo("UTC"))


def test_dates_resolve_in_the_users_time_zone() -> None:
    assert dates("on:2024-05-01") == (utc(2024, 5, 1), utc(2024, 5, 2))
    assert dates("on:2024-05-01", PARIS) == (utc(2024, 4, 30, 22), utc(2024, 5, 1, 22))
    assert dates("before:2024-05-01") == (None, utc(2024, 5, 1))
    assert dates("after:2024-05-01") == (utc(2024, 5, 2), None)  # Slack: after the day
    assert dates("on:today") == (utc(2024, 5, 15), utc(2024, 5, 16))
    assert dates("on:today", PARIS) == (utc(2024, 5, 15, 22), utc(2024, 5, 16, 22))
    assert dates("on:yesterday") == (utc(2024, 5, 14), utc(2024, 5, 15))
    assert dates("during:2024-02") == (utc(2024, 2, 1), utc(2024, 3, 1))
    assert dates("during:2024-12") == (utc(2024, 12, 1), utc(2025, 1, 1))
    assert dates("during:2023") == (utc(2023, 1, 1), utc(2024, 1, 1))
    assert dates("during:march") == (utc(2024, 3, 1), utc(2024, 4, 1))
    assert dates("during:may") == (utc(2024, 5, 1), utc(2024, 6, 1))
    assert dates("during:june") == (utc(2023, 6, 1), utc(2023, 7, 1))  # the latest June begun
    assert dates("before:2024-05-01T10:00Z") == (None, utc(2024, 5, 1, 10))
    assert dates("before:2024-05-01T10:00", PARIS) == (None, utc(2024, 5, 1, 8))
    assert dates("before:2024-05-01T10:00+05:00", PARIS) == (None, utc(2024, 5, 1, 5))
    start, end = dates("after:2024-05-01T10:00Z")
    assert start is not None and start > utc(2024, 5, 1, 10) and end is None
    # Several bounds intersect; contradictory ones leave an empty interval.
    assert dates("after:2024-01-01 before:2024-02-01 during:2024") == (utc(2024, 1, 2), utc(2024, 2, 1))
    start, end = dates("before:2020-01-01 after:2021-01-01")
    assert start is not None and end is not None and start >= end
    assert dates("x") == (None, None)


# ---- fuzzing ---------------------------------------------------------------------------

_PIECES = st.sampled_from([
    "deploy", "café", "x", '"', "-", ":", "from:", "from:@al", "in:#ops", "in:@bo", "before:",
    "2024-05-01", "today", "during:march", "has:link", "has:", "is:thread", "is:", "foo:",
    "http://x.y/z", " ", "  ", "\t", "\x00", "é", "中文", "!!", "--", "10:30", "*", "&", "|"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(_PIECES, max_size=12).map("".join)))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        q = parse(text)
    except QueryError as err:
        assert str(err)
        return
    assert q.terms or q.has_filters
    # What the parser accepted resolves to dates without raising.
    resolve_dates(q.dates, NOW, PARIS)


_WORD = st.text(alphabet=st.characters(categories=["Ll", "Lu", "Nd"]), min_size=1, max_size=8)
_TERM = st.one_of(
    _WORD.map(lambda w: Term("word", w)),
    st.lists(_WORD, min_size=1, max_size=3).map(lambda ws: Term("phrase", " ".join(ws))))


@settings(max_examples=300, deadline=None)
@given(terms=st.lists(_TERM, max_size=4), excluded=st.lists(_TERM, max_size=2),
       users=st.lists(st.sampled_from(["alice", "bob.b", "me"]), max_size=2, unique=True),
       channels=st.lists(st.sampled_from(["ops", "general", "c0ffee"]), max_size=2, unique=True),
       has=st.lists(st.sampled_from(["code", "link", "pin", "reaction"]), unique=True),
       dates=st.lists(st.sampled_from([DateFilter("before", "2024-05-01"),
                                       DateFilter("during", "march"),
                                       DateFilter("on", "today")]), max_size=2))
def test_format_then_parse_gives_the_query_back(terms: list[Term], excluded: list[Term],
                                                users: list[str], channels: list[str],
                                                has: list[str], dates: list[DateFilter]) -> None:
    q = Query(terms=tuple(terms), excluded=tuple(excluded), from_users=tuple(users),
              in_channels=tuple(channels), dates=tuple(dates), has=tuple(sorted(has)))
    if not q.terms and not q.has_filters:
        return
    assert parse(format_query(q)) == q
    # The same words typed last, without a trailing space, make the last one a prefix.
    if q.terms and q.terms[-1].kind == "word" and len(q.terms[-1].text) >= 2:
        typed = parse(format_query(q).rstrip())
        assert typed.terms[-1].prefix is (q.terms[-1].text.isalnum() and not q.has_filters
                                          and not q.excluded)
