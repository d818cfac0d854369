"""The message-search query language (Slack's), parsed without any I/O.

``parse(text)`` turns what a user typed into a typed :class:`Query` or raises
:class:`QueryError` naming what is wrong; ``resolve_dates`` turns the query's date
operators into one UTC interval given the clock and the user's time zone. Nothing here
touches the database, so every rule is tested exhaustively (and fuzzed) on its own, and the
SQL built from a :class:`Query` (storage/search.py) only ever sees validated pieces passed as
parameters, never the user's text spliced into SQL or tsquery syntax.

The language::

    deploy failed            words (stemmed, accent-insensitive), all must match
    "exact phrase"           words in this order
    -flaky  -"known issue"   exclude a word / a phrase
    from:@alice  from:me     author (several: any of them)
    in:#general  in:@bob     a channel by name, or the DM with a person (several: any)
    before:2024-05-01  after:2024-04-30  on:yesterday  during:2024-05  during:march
    has:link has:code has:pin has:reaction   is:thread
    deplo                    the last word, when the query does not end with a space,
                             also matches as a prefix (search as you type)
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal

import msgspec

MAX_QUERY_CHARS = 1000
"""Longer queries are refused: nobody types more, and each term costs an index probe."""
MAX_TERMS = 32
"""Words, phrases and operators together."""
MIN_PREFIX_CHARS = 2
"""A one-letter prefix would expand to a large part of the vocabulary."""

OPERATORS = ("from", "in", "before", "after", "on", "during", "has", "is")
HAS_VALUES = ("link", "code", "pin", "reaction")
IS_VALUES = ("thread",)
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")

_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
_OPERATOR = re.compile(r"^([A-Za-z]+):(.*)$", re.DOTALL)
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^\d{4}$")


class QueryError(ValueError):
    """The query cannot be understood; the message says what is wrong, for the user."""


class Term(msgspec.Struct, frozen=True):
    """A word or an exact phrase. ``prefix``: the word also matches longer words."""

    kind: Literal["word", "phrase"]
    text: str
    prefix: bool = False


class DateFilter(msgspec.Struct, frozen=True):
    """``op:value``; ``value`` is a day (``2024-05-01``), a month (``2024-05``), a year,
    a month name, ``today``/``yesterday``, or (before/after) an ISO date-time."""

    op: Literal["before", "after", "on", "during"]
    value: str


class Query(msgspec.Struct, frozen=True):
    """A parsed query. Empty tuples mean "no condition"."""

    terms: tuple[Term, ...] = ()
    excluded: tuple[Term, ...] = ()
    from_users: tuple[str, ...] = ()        # user ids; "me" is the searcher
    in_channels: tuple[str, ...] = ()       # channel names (lower case) or ids
    in_dms: tuple[str, ...] = ()            # user ids: the DM with that person
    dates: tuple[DateFilter, ...] = ()
    has: tuple[str, ...] = ()               # subset of HAS_VALUES, sorted, unique
    is_: tuple[str, ...] = ()               # subset of IS_VALUES

    @property
    def has_filters(self) -> bool:
        """Whether anything besides words narrows the search."""
        return bool(self.from_users or self.in_channels or self.in_dms or self.dates
                    or self.has or self.is_)


def parse(text: str) -> Query:
    """Parse a search query; raises QueryError with a message fit for the user."""
    if not isinstance(text, str):
        raise QueryError("the query must be a string")
    if "\x00" in text:
        raise QueryError("the query contains a NUL byte")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(text)} characters long; at most {MAX_QUERY_CHARS}")
    terms: list[Term] = []
    excluded: list[Term] = []
    from_users: list[str] = []
    in_channels: list[str] = []
    in_dms: list[str] = []
    dates: list[DateFilter] = []
    has: set[str] = set()
    is_: set[str] = set()
    count = 0
    last_word: int | None = None  # index in `terms` of a word ending the query
    for raw, negated, quoted, end in _tokens(text):
        count += 1
        if count > MAX_TERMS:
            raise QueryError(f"the query has more than {MAX_TERMS} words and operators")
        last_word = None
        if quoted:
            phrase = " ".join(raw.split())
            if not _has_alnum(phrase):
                continue  # "" or "!!": nothing to look for
            (excluded if negated else terms).append(Term("phrase", phrase))
            continue
        op = _operator(raw)
        if op is None:
            if not _has_alnum(raw):
                continue  # punctuation alone matches nothing; ignored like Slack does
            if negated:
                excluded.append(Term("word", raw))
            else:
                terms.append(Term("word", raw))
                if end == len(text):
                    last_word = len(terms) - 1
            continue
        name, value = op
        if negated:
            raise QueryError(f"'-' excludes words and phrases, not the operator {name}:")
        if name == "from":
            from_users.append(_user(value, name))
        elif name == "in":
            if value.startswith("@"):
                in_dms.append(_user(value, name))
            else:
                in_channels.append(_channel(value))
        elif name in ("before", "after", "on", "during"):
            check_date(name, value)
            dates.append(DateFilter(name, value.lower()))  # type: ignore[arg-type]
        elif name == "has":
            if value.lower() not in HAS_VALUES:
                raise QueryError(f"has:{value} is not known; use one of "
                                 + ", ".join(f"has:{v}" for v in HAS_VALUES))
            has.add(value.lower())
        else:  # "is"
            if value.lower() not in IS_VALUES:
                raise QueryError(f"is:{value} is not known; use is:thread")
            is_.add(value.lower())
    if last_word is not None:
        word = terms[last_word]
        if len(word.text) >= MIN_PREFIX_CHARS and word.text.isalnum():
            terms[last_word] = Term("word", word.text, prefix=True)
    query = Query(tuple(terms), tuple(excluded), tuple(_unique(from_users)),
                  tuple(_unique(in_channels)), tuple(_unique(in_dms)), tuple(dates),
                  tuple(sorted(has)), tuple(sorted(is_)))
    if not query.terms and not query.has_filters:
        if query.excluded:
            raise QueryError("a query of exclusions only matches almost everything; "
                             "add a word or a filter such as in:#channel")
        raise QueryError("the query is empty; type a word to search for")
    return query


def _tokens(text: str) -> list[tuple[str, bool, bool, int]]:
    """(text, negated, quoted, end offset) per token. A ``"`` opens a phrase anywhere."""
    out: list[tuple[str, bool, bool, int]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        negated = text[i] == "-" and i + 1 < n and not text[i + 1].isspace()
        start = i + 1 if negated else i
        if start < n and text[start] == '"':
            close = text.find('"', start + 1)
            if close < 0:
                raise QueryError(f'the quote at character {start + 1} is never closed; '
                                 'close it or remove it')
            out.append((text[start + 1:close], negated, True, close + 1))
            i = close + 1
            continue
        j = start
        while j < n and not text[j].isspace() and text[j] != '"':
            j += 1
        out.append((text[start:j], negated, False, j))
        i = j
    return out


def _operator(token: str) -> tuple[str, str] | None:
    """(name, value) for ``name:value``; None for a plain word (``10:30``, a URL)."""
    m = _OPERATOR.match(token)
    if m is None or m[2].startswith("//"):
        return None
    name, value = m[1].lower(), m[2]
    if name not in OPERATORS:
        raise QueryError(f"unknown operator {m[1]}: (known: "
                         + ", ".join(f"{o}:" for o in OPERATORS)
                         + f'); put "{token}" in quotes to search for it as text')
    if not value:
        raise QueryError(f"{name}: needs a value, e.g. {_EXAMPLES[name]}")
    return name, value


_EXAMPLES = {"from": "from:@alice", "in": "in:#general or in:@bob", "before": "before:2024-05-01",
             "after": "after:2024-05-01", "on": "on:yesterday", "during": "during:2024-05",
             "has": "has:link", "is": "is:thread"}


def _has_alnum(text: str) -> bool:
    return any(c.isalnum() for c in text)


def _user(value: str, op: str) -> str:
    user = value[1:] if value.startswith("@") else value
    if not _USER.match(user):
        raise QueryError(f"{op}:{value} does not name a user (expected {op}:@user-id)")
    return user


def _channel(value: str) -> str:
    name = (value[1:] if value.startswith("#") else value).lower()
    if not _CHANNEL.match(name):
        raise QueryError(f"in:{value} does not name a channel (expected in:#channel-name "
                         "or in:@user for a direct message)")
    return name


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


# ---- dates ----------------------------------------------------------------------------

def check_date(op: str, value: str) -> None:
    """Raise QueryError unless ``value`` is a date ``op`` accepts."""
    v = value.lower()
    if v in ("today", "yesterday") or _valid_day(v):
        return
    if op == "during" and (_YEAR.match(v) or v in MONTHS or _valid_month(v)):
        return
    if op in ("before", "after") and _valid_datetime(value):
        return
    allowed = {"during": "2024-05-31, 2024-05, 2024, may, today or yesterday",
               "on": "2024-05-31, today or yesterday"}.get(
        op, "2024-05-31, 2024-05-31T14:30, 2024-05-31T14:30+02:00, today or yesterday")
    raise QueryError(f"{op}:{value} is not a date {op}: understands (use {allowed})")


def _valid_day(v: str) -> bool:
    if not _DAY.match(v):
        return False
    try:
        date.fromisoformat(v)
    except ValueError:
        return False
    return True


def _valid_month(v: str) -> bool:
    m = _MONTH.match(v)
    return m is not None and 1 <= int(m[2]) <= 12


def _valid_datetime(v: str) -> bool:
    if "t" not in v.lower() or not _DAY.match(v[:10]):
        return False
    try:
        datetime.fromisoformat(v.upper() if v.endswith("z") else v)
    except ValueError:
        return False
    return True


def _interval(op: str, value: str, now: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """The [start, end) a date value covers, in UTC; a date-time covers one instant."""
    today = now.astimezone(tz).date()

    def day_start(d: date) -> datetime:
        return datetime.combine(d, time(), tz).astimezone(UTC)

    v = value.lower()
    if v == "today":
        return day_start(today), day_start(today + timedelta(days=1))
    if v == "yesterday":
        return day_start(today - timedelta(days=1)), day_start(today)
    if _valid_day(v):
        d = date.fromisoformat(v)
        return day_start(d), day_start(d + timedelta(days=1))
    if _YEAR.match(v):
        year = int(v)
        return day_start(date(year, 1, 1)), day_start(date(year + 1, 1, 1))
    if v in MONTHS or _valid_month(v):
        if v in MONTHS:
            # A month name is the latest such month that has begun.
            month = MONTHS.index(v) + 1
            year = today.year if month <= today.month else today.year - 1
        else:
            year, month = int(v[:4]), int(v[5:7])
        first = date(year, month, 1)
        nxt = date(year + month // 12, month % 12 + 1, 1)
        return day_start(first), day_start(nxt)
    instant = datetime.fromisoformat(value.upper() if value.endswith(("z", "Z")) else value)
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=tz)
    instant = instant.astimezone(UTC)
    return instant, instant


def resolve_dates(dates: tuple[DateFilter, ...], now: datetime,
                  tz: tzinfo) -> tuple[datetime | None, datetime | None]:
    """The UTC interval [start, end) every date operator allows (None: unbounded).

    ``before:D`` ends where D starts, ``after:D`` starts where D ends (Slack's meaning:
    neither includes D itself), ``on:``/``during:`` cover their day, month or year. An
    empty interval (``start >= end``) means no message can match."""
    start: datetime | None = None
    end: datetime | None = None
    for f in dates:
        lo, hi = _interval(f.op, f.value, now, tz)
        if f.op == "before":
            end = lo if end is None else min(end, lo)
        elif f.op == "after":
            if lo == hi:  # an instant: strictly after it
                hi = hi + timedelta(microseconds=1)
            start = hi if start is None else max(start, hi)
        else:
            start = lo if start is None else max(start, lo)
            end = hi if end is None else min(end, hi)
    return start, end


def format_query(query: Query) -> str:
    """The query written back in the language; ``parse(format_query(q)) == q``."""
    parts: list[str] = []

    def term(t: Term) -> str:
        return f'"{t.text}"' if t.kind == "phrase" else t.text

    parts += [f"from:@{u}" for u in query.from_users]
    parts += [f"in:#{c}" for c in query.in_channels]
    parts += [f"in:@{u}" for u in query.in_dms]
    parts += [f"{d.op}:{d.value}" for d in query.dates]
    parts += [f"has:{h}" for h in query.has]
    parts += [f"is:{i}" for i in query.is_]
    parts += ["-" + term(t) for t in query.excluded]
    words = [term(t) for t in query.terms]
    # A prefix word must come last with nothing after it; a full word must not end the text.
    prefix = [w for w, t in zip(words, query.terms, strict=True) if t.prefix]
    others = [w for w, t in zip(words, query.terms, strict=True) if not t.prefix]
    text = " ".join(others + parts + prefix)
    if not prefix and query.terms and query.terms[-1].kind == "word":
        text += " "
    return text
