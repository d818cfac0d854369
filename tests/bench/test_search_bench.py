"""`python -m bench.search` on a small corpus against the session's PostgreSQL, so the bench
itself stays tested (no timing is asserted: the 10M figures are in docs/search.md)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bench.search import KINDS

ROOT = Path(__file__).resolve().parents[2]


async def test_small_search_bench_runs_every_query_kind(pg_dsn: str, tmp_path: Path) -> None:
    out_json = tmp_path / "search.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.search", "--messages", "20000", "--queries", "3",
        "--dsn", pg_dsn, "--json-out", str(out_json), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    result = json.loads(out_json.read_text())
    load = result["load"]
    assert load["load_s"] >= 0 and "chat_messages_search_idx" in load["index_build_s"]
    assert load["sizes_mb"]["chat_messages_search_idx"] > 0
    assert [r["readers"] for r in result["runs"]] == [1, 8]
    for run in result["runs"]:
        assert set(run["kinds"]) == {f"{who}/{kind}" for who in ("searcher50", "searcher1000")
                                     for kind in KINDS}
        for v in run["kinds"].values():
            assert 0 < v["p50_ms"] <= v["p95_ms"] <= v["p99_ms"]
        # The generated vocabulary is there to be found; the no-hit kind finds nothing.
        assert run["kinds"]["searcher1000/common"]["mean_total_hits"] > 0
        assert run["kinds"]["searcher1000/phrase"]["mean_total_hits"] > 0
        assert run["kinds"]["searcher1000/none"]["mean_total_hits"] == 0
    assert "target" in result and set(result["write_overhead"]) == {"with_search", "without_search_trigger"}
    assert "worst P95, one reader" in text
