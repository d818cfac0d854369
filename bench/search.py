"""Message search at scale: generate a chat corpus through COPY, build the search indexes,
then run a query mix as two searchers (a member of 50 channels, a member of all 1,000) with
1 and with 8 concurrent readers, printing P50/P95/P99 per query kind and writing JSON.

    python -m bench.search                      # 10,000,000 messages (docs/search.md)
    python -m bench.search --messages 1000000 --queries 40
    python -m bench.search --dsn postgresql://... --messages 20000   # an existing server

The corpus: ``--channels`` channels (default 1,000) whose sizes follow Zipf (a few huge,
most small; one in ten private), ``--users`` users (default 5,000) whose activity follows
Zipf, messages spread over two years (ids in time order, as sends make them), words drawn
from a Zipf vocabulary of 50,000 invented words plus common English, with code snippets,
links, threads, reactions and pins. The searcher of 50 channels is a guest (guests read only
their channels: otherwise every public channel counts as readable); the other is a member
of every channel.

Queries go through the service layer (gateway/chat/search.py: parse, access, search, total,
highlighted snippets, reactions), as ``search.messages`` runs them, minus the transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Histogram, machine_info

KINDS = ("rare", "common", "phrase", "from_word", "in_word", "date", "prefix", "none")
VOCAB = 50_000
ENGLISH = ("the to and a of is in it for on that we this with be deploy build release "
           "fix test review meeting customer issue update server error incident team "
           "please thanks today tomorrow docs design plan data report").split()
PHRASES = ("incident review", "release train", "customer escalation", "design doc", "load test")
SPAN_DAYS = 730
PG_SETTINGS = {"shared_buffers": "2GB", "maintenance_work_mem": "512MB", "work_mem": "16MB",
               "max_wal_size": "8GB", "effective_cache_size": "8GB"}
TARGET_P95_MS = 200.0


def invented(i: int) -> str:
    """The i-th invented word: pronounceable, unique, stable across runs."""
    cons, vows = "bcdfghklmnprstvz", "aeiou"
    out = []
    n = i + 1
    while n:
        n, r = divmod(n, 80)
        out.append(cons[r % 16] + vows[r // 16])
    return "".join(out) + "x"


class Corpus:
    """Deterministic generator of the corpus and of the words queries look for."""

    def __init__(self, messages: int, channels: int, users: int, seed: int = 14) -> None:
        self.messages, self.channels, self.users = messages, channels, users
        self.rng = random.Random(seed)
        self.words = [invented(i) for i in range(VOCAB)]
        # Zipf weights: word rank r is drawn with weight 1/r.
        self.word_cum = _cumulative([1 / (r + 1) for r in range(VOCAB)])
        self.channel_cum = _cumulative([1 / (r + 1) for r in range(channels)])
        self.user_cum = _cumulative([1 / (r + 1) ** 0.8 for r in range(users)])
        self.start = datetime(2023, 1, 1, tzinfo=UTC)

    def channel_id(self, i: int) -> str:
        return f"c{i:04d}"

    def user_id(self, i: int) -> str:
        return f"u{i:05d}"

    def text(self, rng: random.Random) -> str:
        n = rng.randint(3, 25)
        parts = []
        for _ in range(n):
            if rng.random() < 0.35:
                parts.append(rng.choice(ENGLISH))
            else:
                parts.append(self.words[_pick(self.word_cum, rng)])
        roll = rng.random()
        if roll < 0.05:
            parts.append(f"`{rng.choice(self.words[:200])}.run({rng.randint(1, 99)})`")
        elif roll < 0.10:
            parts.append(f"https://git.example.com/{rng.choice(self.words[:500])}/{rng.randint(1, 9999)}")
        elif roll < 0.13:
            parts.insert(rng.randint(0, len(parts)), rng.choice(PHRASES))
        return " ".join(parts)

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """chat_messages rows in id order: (channel_id, author_id, text, thread_parent,
        created_at). Row k (1-based) gets id k from the table's identity."""
        rng = self.rng
        step = timedelta(days=SPAN_DAYS) / max(self.messages, 1)
        recent: dict[str, list[int]] = {}
        for k in range(1, self.messages + 1):
            ch = self.channel_id(_pick(self.channel_cum, rng))
            parent = None
            roots = recent.setdefault(ch, [])
            if roots and rng.random() < 0.10:
                parent = rng.choice(roots)
            elif len(roots) < 20:
                roots.append(k)
            else:
                roots[rng.randrange(20)] = k
            yield (ch, self.user_id(_pick(self.user_cum, rng)), self.text(rng), parent,
                   self.start + step * k)

    def query(self, kind: str, rng: random.Random, channels: list[str]) -> str:
        """One query of ``kind`` for a searcher reading ``channels``."""
        rare = self.words[rng.randrange(20_000, VOCAB)]
        medium = self.words[rng.randrange(50, 2_000)]
        common = self.words[rng.randrange(0, 5)]
        if kind == "rare":
            return f"{rare} "
        if kind == "common":
            return f"{common} "
        if kind == "phrase":
            return f'"{rng.choice(PHRASES)}"'
        if kind == "from_word":
            return f"from:@{self.user_id(rng.randrange(0, 200))} {medium} "
        if kind == "in_word":
            return f"in:{rng.choice(channels)} {medium} "
        if kind == "date":
            day = self.start + timedelta(days=rng.randrange(0, SPAN_DAYS - 31))
            return f"{medium} during:{day:%Y-%m}"
        if kind == "prefix":
            return medium[:4]
        return f"{rare}qqzz "  # no message has it


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return [c / total for c in out]


def _pick(cum: list[float], rng: random.Random) -> int:
    import bisect

    return min(bisect.bisect_left(cum, rng.random()), len(cum) - 1)


# ---- load ----------------------------------------------------------------------------

LOAD_DROPPED = ("chat_messages_channel_idx", "chat_messages_thread_idx", "chat_messages_client_id_idx")


async def load(conn: asyncpg.Connection, corpus: Corpus, searchers: dict[str, list[str]],
               say: Any) -> dict[str, Any]:
    """Schema, users, channels, memberships, then the messages by COPY (the trigger fills
    each row's vector as it does for a send), then every index: timings and sizes."""
    from storage.migrate import migrate
    from storage.search import SEARCH_INDEXES

    await migrate(conn)
    out: dict[str, Any] = {}
    index_defs = {r["indexname"]: r["indexdef"] for r in await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'chat_messages' "
        "AND indexname <> 'chat_messages_pkey'")}
    for name in index_defs:
        await conn.execute(f"DROP INDEX {name}")
    await conn.copy_records_to_table(
        "chat_users", columns=["id", "display_name", "role"],
        records=[(corpus.user_id(i), f"User {i}", "member") for i in range(corpus.users)]
        + [("searcher50", "Fifty", "guest"), ("searcher1000", "Thousand", "member")])
    await conn.copy_records_to_table(
        "chat_channels", columns=["id", "kind", "name", "created_by"],
        records=[(corpus.channel_id(i), "private" if i % 10 == 9 else "public", f"chan-{i}", "u00000")
                 for i in range(corpus.channels)])
    await conn.copy_records_to_table(
        "chat_members", columns=["channel_id", "user_id"],
        records=[(c, u) for u, chs in searchers.items() for c in chs])
    began = time.monotonic()
    batch: list[tuple[Any, ...]] = []
    done = 0
    for row in corpus.rows():
        batch.append(row)
        if len(batch) == 50_000:
            await conn.copy_records_to_table(
                "chat_messages", columns=["channel_id", "author_id", "text", "thread_parent", "created_at"],
                records=batch)
            done += len(batch)
            batch = []
            if done % 500_000 == 0:
                say(f"  loaded {done:,} messages ({time.monotonic() - began:.0f} s)")
    if batch:
        await conn.copy_records_to_table(
            "chat_messages", columns=["channel_id", "author_id", "text", "thread_parent", "created_at"],
            records=batch)
    out["load_s"] = round(time.monotonic() - began, 1)
    say(f"  COPY of {corpus.messages:,} messages (vectors by the trigger): {out['load_s']} s")
    rng = random.Random(7)
    reacted = rng.sample(range(1, corpus.messages + 1), corpus.messages // 20)
    await conn.copy_records_to_table(
        "chat_reactions", columns=["message_id", "user_id", "emoji"],
        records=[(m, corpus.user_id(rng.randrange(corpus.users)), ":+1:") for m in reacted])
    await conn.execute("""INSERT INTO chat_pins (channel_id, message_id, pinned_by)
                          SELECT channel_id, id, 'u00000' FROM chat_messages WHERE id % 997 = 0""")
    out["index_build_s"] = {}
    for name, definition in [*((n, f"CREATE INDEX {n} {d}") for n, d in SEARCH_INDEXES),
                             *((n, d) for n, d in index_defs.items()
                               if n not in dict(SEARCH_INDEXES))]:
        t = time.monotonic()
        await conn.execute(definition.replace("CREATE INDEX IF NOT EXISTS", "CREATE INDEX"))
        out["index_build_s"][name] = round(time.monotonic() - t, 1)
        say(f"  index {name}: {out['index_build_s'][name]} s")
    await conn.execute("VACUUM ANALYZE chat_messages")
    await conn.execute("ANALYZE")
    sizes = await conn.fetch(
        """SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_class c
           WHERE c.relname IN ('chat_messages', 'chat_messages_pkey')
              OR c.relname = ANY($1::text[]) OR c.relname = ANY($2::text[])""",
        [n for n, _ in SEARCH_INDEXES], list(index_defs))
    out["sizes_mb"] = {r["relname"]: round(r["bytes"] / 2**20, 1) for r in sizes}
    out["toast_mb"] = round(await conn.fetchval(
        "SELECT pg_total_relation_size('chat_messages') - pg_relation_size('chat_messages') "
        "- pg_indexes_size('chat_messages')") / 2**20, 1)
    out["vector_mb"] = round(await conn.fetchval(
        "SELECT sum(pg_column_size(search_tsv)) FROM chat_messages") / 2**20, 1)
    return out


# ---- queries -------------------------------------------------------------------------

async def run_queries(dsn: str, corpus: Corpus, searchers: dict[str, list[str]], readers: int,
                      per_kind: int, seed: int) -> dict[str, Any]:
    """Every kind ``per_kind`` times per searcher, shuffled, on ``readers`` concurrent
    tasks; latency per (searcher, kind) and how many hits the queries found."""
    from gateway.chat import schema as s
    from gateway.chat.search import SearchService
    from gateway.chat.service import Actor, ChatService
    from storage.search import SearchStore

    store = await SearchStore.open(dsn, max(2, readers))
    def no_channels(*_: Any) -> s.Channel:
        raise AssertionError("the bench searches messages only")

    service = SearchService(store, ChatService._to_message, no_channels)
    rng = random.Random(seed)
    work: list[tuple[str, str, str]] = []
    for who, chs in searchers.items():
        for kind in KINDS:
            work += [(who, kind, corpus.query(kind, rng, chs)) for _ in range(per_kind)]
    rng.shuffle(work)
    hist: dict[str, Histogram] = {}
    hits: dict[str, int] = {}
    queue = list(reversed(work))

    async def reader() -> None:
        while queue:
            who, kind, q = queue.pop()
            actor = Actor(who, "guest" if who == "searcher50" else "member")
            t = time.perf_counter()
            result = await service.messages(actor, s.SearchMessages(q=q, limit=20))
            us = int((time.perf_counter() - t) * 1e6)
            key = f"{who}/{kind}"
            hist.setdefault(key, Histogram()).record(us)
            hits[key] = hits.get(key, 0) + result.total

    try:
        # Warm-up: one query of each kind, not counted (the first statements plan and load).
        for kind in KINDS:
            await service.messages(Actor("searcher1000", "member"),
                                   s.SearchMessages(q=corpus.query(kind, random.Random(1), searchers["searcher1000"])))
        began = time.monotonic()
        await asyncio.gather(*(reader() for _ in range(readers)))
        wall = time.monotonic() - began
    finally:
        await store.close()
    out: dict[str, Any] = {"readers": readers, "queries": len(work), "wall_s": round(wall, 1),
                           "qps": round(len(work) / wall, 1), "kinds": {}}
    for key in sorted(hist):
        h = hist[key]
        out["kinds"][key] = {"p50_ms": h.percentile(50) / 1000, "p95_ms": h.percentile(95) / 1000,
                             "p99_ms": h.percentile(99) / 1000, "max_ms": h.percentile(100) / 1000,
                             "mean_total_hits": round(hits[key] / h.n, 1)}
    return out


async def write_overhead(conn: asyncpg.Connection, n: int) -> dict[str, Any]:
    """Insert ``n`` messages one transaction each (as a send's INSERT) with the search
    trigger, then without it: the trigger's cost per send (index upkeep included)."""
    out: dict[str, Any] = {}
    for label in ("with_search", "without_search_trigger"):
        if label != "with_search":
            await conn.execute("ALTER TABLE chat_messages DISABLE TRIGGER chat_messages_search_tsv")
        h = Histogram()
        for i in range(n):
            text = f"write overhead probe {i} deploy the release train to https://example.org `x`"
            t = time.perf_counter()
            async with conn.transaction():
                await conn.execute("INSERT INTO chat_messages (channel_id, author_id, text) "
                                   "VALUES ('c0000', 'u00001', $1)", text)
            h.record(int((time.perf_counter() - t) * 1e6))
        out[label] = {"p50_ms": h.percentile(50) / 1000, "p95_ms": h.percentile(95) / 1000}
    await conn.execute("ALTER TABLE chat_messages ENABLE TRIGGER chat_messages_search_tsv")
    await conn.execute("DELETE FROM chat_messages WHERE text LIKE 'write overhead probe %'")
    return out


# ---- main ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=10_000_000)
    ap.add_argument("--channels", type=int, default=1000)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=30, help="queries per kind, searcher and reader setting")
    ap.add_argument("--readers", default="1,8", help="comma-separated reader counts")
    ap.add_argument("--dsn", help="an existing PostgreSQL (a database is created and dropped); "
                                  "default: an embedded one in a temporary directory")
    ap.add_argument("--data-dir", help="embedded PostgreSQL data directory kept after the run; a corpus "
                                       "already loaded there (same --messages) is reused, not reloaded")
    ap.add_argument("--load-only", action="store_true", help="stop after loading and indexing")
    ap.add_argument("--json-out", help="result file (default bench/results/search-<timestamp>.json)")
    ap.add_argument("--quiet", action="store_true")
    return ap


async def run(args: argparse.Namespace) -> dict[str, Any]:
    say = (lambda _line: None) if args.quiet else (lambda line: print(line, flush=True))
    corpus = Corpus(args.messages, args.channels, args.users)
    sample = random.Random(50).sample(range(args.channels), min(50, args.channels))
    searchers = {"searcher50": [corpus.channel_id(i) for i in sorted(sample)],
                 "searcher1000": [corpus.channel_id(i) for i in range(args.channels)]}
    result: dict[str, Any] = {"bench": "search", "messages": args.messages, "channels": args.channels,
                              "users": args.users, "machine": machine_info(),
                              "started": datetime.now(UTC).isoformat()}
    embedded = None
    tmp = None
    if args.dsn:
        admin = await asyncpg.connect(args.dsn)
        name = f"bench_search_{os.getpid()}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(args.dsn)
        dsn = urlunsplit(parts._replace(path=f"/{name}"))
    else:
        from storage.embedded import EmbeddedPostgres

        tmp = args.data_dir or tempfile.mkdtemp(prefix="bench-search-")
        embedded = EmbeddedPostgres(Path(tmp), settings=PG_SETTINGS)
        dsn = await embedded.start()
        result["postgres_settings"] = PG_SETTINGS
    try:
        conn = await asyncpg.connect(dsn)
        try:
            loaded = await conn.fetchval("SELECT to_regclass('bench_search_loaded') IS NOT NULL")
            if loaded:
                result["load"] = json.loads(await conn.fetchval("SELECT facts FROM bench_search_loaded"))
                if result["load"].get("messages") != args.messages:
                    raise SystemExit(f"{tmp} holds another corpus; use another --data-dir")
                say(f"reusing the {args.messages:,} messages loaded in {tmp}")
            else:
                say(f"loading {args.messages:,} messages")
                result["load"] = await load(conn, corpus, searchers, say)
                result["load"]["messages"] = args.messages
                await conn.execute("CREATE TABLE bench_search_loaded (facts text)")
                await conn.execute("INSERT INTO bench_search_loaded VALUES ($1)", json.dumps(result["load"]))
            say(f"load: {json.dumps(result['load'])}")
            result["pg_version"] = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        if args.load_only:
            return result
        result["runs"] = []
        for readers in [int(r) for r in args.readers.split(",")]:
            say(f"queries with {readers} reader(s)")
            r = await run_queries(dsn, corpus, searchers, readers, args.queries, seed=readers)
            result["runs"].append(r)
            for key, v in r["kinds"].items():
                say(f"  {key:26s} P50 {v['p50_ms']:8.1f}  P95 {v['p95_ms']:8.1f}  "
                    f"P99 {v['p99_ms']:8.1f} ms   hits~{v['mean_total_hits']}")
        single = next((r for r in result["runs"] if r["readers"] == 1), None)
        if single is not None:
            worst = max(v["p95_ms"] for v in single["kinds"].values())
            result["target"] = {"p95_ms_max_single_reader": worst, "target_ms": TARGET_P95_MS,
                                "met": worst < TARGET_P95_MS}
            say(f"worst P95, one reader: {worst:.1f} ms (target < {TARGET_P95_MS:.0f} ms: "
                f"{'met' if worst < TARGET_P95_MS else 'NOT met'})")
        conn = await asyncpg.connect(dsn)
        try:
            result["write_overhead"] = await write_overhead(conn, 200)
        finally:
            await conn.close()
        say(f"send INSERT with/without the search trigger: {result['write_overhead']}")
    finally:
        if embedded is not None:
            await embedded.stop()
            import shutil

            if not args.data_dir:
                shutil.rmtree(tmp or "", ignore_errors=True)
        elif args.dsn:
            admin = await asyncpg.connect(args.dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "bench_search_{os.getpid()}" WITH (FORCE)')
            await admin.close()
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when it completed (the target verdict is in the output)."""
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args))
    out = Path(args.json_out) if args.json_out else (
        Path(__file__).parent / "results" / f"search-{datetime.now(UTC):%Y%m%dT%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if not args.quiet:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
