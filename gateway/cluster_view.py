"""`/metrics` and `/health` for all workers of `sentchat serve --workers N`.

The workers share one port (SO_REUSEPORT), so the kernel picks which one answers a request.
To give totals, each worker also listens on a private loopback port and writes it to
``$SENTCHAT_WORKERS_DIR/worker-<index>.port`` (the supervisor makes the directory); the
worker that receives ``GET /metrics`` or ``GET /health`` asks its siblings for their own
view (``?scope=worker``) and answers with the sum. ``?scope=worker`` on the public port
still gives the answering worker's own figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.node import Node

# A sibling that does not answer within this long counts as down for this request.
FETCH_TIMEOUT = 2.0
WORKERS_DIR_ENV = "SENTCHAT_WORKERS_DIR"
WORKERS_COUNT_ENV = "SENTCHAT_WORKERS_COUNT"
WORKER_INDEX_ENV = "SENTCHAT_WORKER_INDEX"


class Siblings:
    """This worker's place among the supervisor's workers."""

    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.directory = directory
        self.index = index
        self.count = count

    def publish_port(self, port: int) -> None:
        """Announce this worker's private port (atomically: readers never see half a file)."""
        tmp = self.directory / f".worker-{self.index}.{os.getpid()}.tmp"
        tmp.write_text(str(port))
        os.replace(tmp, self.directory / f"worker-{self.index}.port")

    def sibling_ports(self) -> dict[int, int | None]:
        """index -> private port of every other worker (None: not announced yet)."""
        out: dict[int, int | None] = {}
        for i in range(self.count):
            if i == self.index:
                continue
            try:
                out[i] = int((self.directory / f"worker-{i}.port").read_text())
            except (OSError, ValueError):
                out[i] = None
        return out


_siblings: Siblings | None = None


def from_env() -> Siblings | None:
    """The supervisor's settings for this worker, or None outside `--workers N`."""
    directory = os.environ.get(WORKERS_DIR_ENV)
    if not directory:
        return None
    return Siblings(Path(directory), int(os.environ.get(WORKER_INDEX_ENV, "0")),
                    int(os.environ.get(WORKERS_COUNT_ENV, "1")))


def enable(siblings: Siblings) -> None:
    global _siblings
    _siblings = siblings


def enabled(query: dict[str, str]) -> bool:
    """Whether this request gets the all-workers answer."""
    return _siblings is not None and query.get("scope") != "worker"


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), FETCH_TIMEOUT)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(-1), FETCH_TIMEOUT)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head[9:12] or 0), body


async def _siblings_answer(path: str) -> dict[int, bytes | None]:
    assert _siblings is not None  # noqa: S101 - callers check enabled()
    ports = _siblings.sibling_ports()

    async def one(port: int | None) -> bytes | None:
        if port is None:
            return None
        try:
            status, body = await _get(port, path)
        except (OSError, TimeoutError, ValueError):
            return None
        return body if status == 200 else None

    answers = await asyncio.gather(*(one(p) for p in ports.values()))
    return dict(zip(ports, answers, strict=True))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def merge_metrics(texts: list[str]) -> bytes:
    """Prometheus text expositions summed sample by sample (same name and labels);
    ``*_created`` timestamps take the earliest."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, tuple[str, str]] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            families.setdefault(fam.name, (fam.type, fam.documentation))
            bucket = samples.setdefault(fam.name, {})
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key not in bucket:
                    bucket[key] = s.value
                elif s.name.endswith("_created"):
                    bucket[key] = min(bucket[key], s.value)
                else:
                    bucket[key] += s.value
    lines: list[str] = []
    for name, (kind, doc) in families.items():
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample, labels), value in samples[name].items():
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample}{{{lab}}} {value!r}" if lab else f"{sample} {value!r}")
    return ("\n".join(lines) + "\n").encode()


async def metrics(node: Node) -> bytes:
    """Every worker's metrics summed, plus how many workers answered."""
    assert _siblings is not None  # noqa: S101
    node.refresh_metrics()
    own = node.metrics.render().decode()
    others = await _siblings_answer("/metrics?scope=worker")
    texts = [own] + [b.decode() for b in others.values() if b is not None]
    answered = 1 + sum(b is not None for b in others.values())
    return merge_metrics(texts) + (
        "# HELP sentchat_workers Worker processes of this server, and how many answered for these totals\n"
        "# TYPE sentchat_workers gauge\n"
        f'sentchat_workers{{state="configured"}} {_siblings.count}\n'
        f'sentchat_workers{{state="answered"}} {answered}\n').encode()


async def health(node: Node) -> tuple[int, bytes]:
    """200 with every worker's node name when all answer, else 503 naming the missing."""
    assert _siblings is not None  # noqa: S101
    others = await _siblings_answer("/health?scope=worker")
    nodes = [node.name]
    missing = []
    for i, body in others.items():
        info: dict[str, Any] = {}
        if body is not None:
            with contextlib.suppress(orjson.JSONDecodeError):
                info = orjson.loads(body)
        if info.get("status") == "ok":
            nodes.append(info.get("node", ""))
        else:
            missing.append(i)
    ok = not missing
    return (200 if ok else 503), orjson.dumps({
        "status": "ok" if ok else "degraded", "node": node.name, "workers": _siblings.count,
        "workers_ok": _siblings.count - len(missing), "nodes": nodes, "missing_workers": missing})
