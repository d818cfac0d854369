"""The durable publication store: offsets, group-committed writes, history reads.

Offsets of a channel are allocated in memory, from the stream's committed top loaded on
first use; allocation and queueing happen in one event-loop step, so queue order — and
therefore commit and delivery order — is offset order. This assumes one store writes a
given channel at a time (the gateway routes a channel's publications to one node); the
stream's epoch never changes once created, so client positions survive restarts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

from storage.partitions import PartitionManager
from storage.types import BatchStats, StoredPublication
from storage.writer import BatchWriter, Item, Notify, Record, WriteMethod

try:
    # asyncpg's own UUID (a uuid.UUID subclass): built from bytes ~10x faster than
    # uuid.UUID, and what asyncpg returns for uuid columns anyway.
    from asyncpg.pgproto.pgproto import UUID as _FastUUID
except ImportError:  # pragma: no cover - other asyncpg builds
    def _FastUUID(raw: bytes) -> uuid.UUID:
        return uuid.UUID(bytes=raw)

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW_S = 300.0
"""How long a (channel, idempotency key) returns the first result; Centrifugo's window."""

IDEMPOTENCY_MAX_KEYS = 200_000
"""Memory bound of the idempotency table (~100 MB worst case); beyond it the oldest keys
are forgotten early, so dedup holds for a shorter window under extreme keyed load."""

MAX_CACHED_STREAMS = 100_000
"""Channel streams kept in memory; idle ones beyond this are reloaded from the database."""

HISTORY_MAX_ITEMS = 10_000
"""Cap of a history read when the caller asks for "all" (limit < 0)."""

EPOCH_BYTES = 4
"""Epoch = 8 hex characters, like the in-memory broker's: only needs to differ per stream
instance, and it travels in every recovery request."""

_COLUMNS = 'channel, "offset", epoch, id, data, data_raw, info, tags, created_at'

_LOAD_STREAM = """
WITH created AS (
    INSERT INTO channel_streams (channel, epoch) VALUES ($1, $2)
    ON CONFLICT (channel) DO NOTHING
    RETURNING epoch, top
)
SELECT epoch, top FROM created
UNION ALL
SELECT epoch, top FROM channel_streams WHERE channel = $1
LIMIT 1
"""

# jsonb refuses NUL characters; msgspec already refuses lone surrogates and huge floats.
_NUL_ESCAPE = re.compile(rb"\\u0000")


def _history_sql(reverse: bool, since: bool, max_age: bool) -> str:
    conditions = ["channel = $1"]
    if since:
        conditions.append(f'"offset" {"<" if reverse else ">"} ${len(conditions) + 1}')
    if max_age:
        conditions.append(f"created_at >= ${len(conditions) + 1}")
    order = "DESC" if reverse else "ASC"
    # Every piece above is a constant chosen by the flags; values travel as parameters.
    return (f"SELECT {_COLUMNS} FROM publications WHERE {' AND '.join(conditions)} "  # noqa: S608
            f'ORDER BY "offset" {order} LIMIT ${len(conditions) + 1}')


_HISTORY = {(r, s, a): _history_sql(r, s, a)
            for r in (False, True) for s in (False, True) for a in (False, True)}


def jsonb_text(payload: bytes) -> str | None:
    """``payload`` as text PostgreSQL's jsonb accepts, or None if it is not such JSON."""
    try:
        msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return None
    if b"\\u" in payload and _NUL_ESCAPE.search(payload):
        return None
    return payload.decode()


_Columns = tuple[bytes, str | None, bytes | None, bytes | None, str | None,
                 dict[str, str] | None, str | None]
"""A validated publication: data, data as jsonb text (or None and data_raw), info and its
jsonb text, tags and their jsonb text."""


def _validate(channel: str, data: bytes, info: bytes | None, tags: dict[str, str] | None,
              offset: int | None, epoch: str | None) -> _Columns:
    """Check what PostgreSQL must accept and encode the JSON columns; ValueError if not."""
    if "\x00" in channel:
        raise ValueError("channel names cannot contain NUL")
    if (offset is None) != (epoch is None):
        raise ValueError("give both offset and epoch, or neither")
    data = bytes(data)
    data_json = jsonb_text(data)
    data_raw = None if data_json is not None else data
    info_json: str | None = None
    if info is not None:
        info = bytes(info)
        info_json = jsonb_text(info)
        if info_json is None:
            raise ValueError("info must be JSON without NUL characters")
    tags = tags or None
    tags_json: str | None = None
    if tags is not None:
        tags_json = msgspec.json.encode(tags).decode()
        if "\\u0000" in tags_json:
            raise ValueError("tags cannot contain NUL characters")
    return data, data_json, data_raw, info, info_json, tags, tags_json


class PublicationIds:
    """Unique publication ids, cheaper than ``uuid4()`` per publication (1.7 µs, mostly
    ``os.urandom``): UUIDv7 layout (RFC 9562) whose high 64 bits — the Unix time in ms when
    the generator was created, version 7, 12 random bits — are fixed per generator, and whose
    low 64 bits are the variant and a 62-bit counter from a random start.

    Two generators collide only if created in the same millisecond with the same 12 random
    bits and overlapping counter ranges out of 2**62: never in practice. Ids of one
    generator increase, so they land at the right edge of the ``id`` index instead of on
    random pages of it."""

    __slots__ = ("_high", "_next")

    def __init__(self) -> None:
        millis = time.time_ns() // 1_000_000
        self._high = ((millis & (2**48 - 1)) << 16 | 0x7000 | secrets.randbits(12)) << 64
        self._next = secrets.randbits(62)

    def new(self) -> uuid.UUID:
        """The next id."""
        n = self._next
        self._next = (n + 1) & (2**62 - 1)
        fast: uuid.UUID = _FastUUID((self._high | 1 << 63 | n).to_bytes(16, "big"))
        return fast


class _Stream:
    """A channel's epoch, last allocated offset and last committed offset."""

    __slots__ = ("allocated", "committed", "epoch")

    def __init__(self, epoch: str, top: int) -> None:
        self.epoch = epoch
        self.allocated = top
        self.committed = top


def _row_to_publication(row: asyncpg.Record) -> StoredPublication:
    data = row["data"]
    info = row["info"]
    tags = row["tags"]
    return StoredPublication(
        channel=row["channel"], offset=row["offset"], epoch=row["epoch"], id=row["id"],
        data=data.encode() if data is not None else row["data_raw"],
        info=info.encode() if info is not None else None,
        tags=msgspec.json.decode(tags) if tags is not None else None,
        created_at=row["created_at"])


class PublicationStore:
    """Durable channel streams in PostgreSQL (see the module docstring).

    ``on_committed(batch)`` is called synchronously after each transaction commits, with
    the batch in offset order, before any publisher of the batch gets its result: the
    place to fan out, so subscribers never see a publication that is not stored.
    """

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 1000, flush_interval: float = 0.002,
                 queue_limit: int = 50_000,
                 on_committed: Callable[[list[StoredPublication]], None] | None = None,
                 partitions: PartitionManager | None = None,
                 idempotency_window: float = IDEMPOTENCY_WINDOW_S,
                 method: WriteMethod = "copy", sequence_in_db: bool = False) -> None:
        self.pool = pool
        self._on_committed = on_committed
        # Without a manager from the node, one is kept to create a missing partition on
        # demand (the node's own manager should keep partitions ahead of time).
        self.partitions = partitions or PartitionManager(pool, "daily", ahead=1)
        self._writer = BatchWriter(pool, max_batch=max_batch, flush_interval=flush_interval,
                                   queue_limit=queue_limit, on_committed=self._committed,
                                   partitions=self.partitions, method=method,
                                   sequence_in_db=sequence_in_db)
        # Several processes write the same channels: offsets come from the commit
        # transaction and the position is always read from the database.
        self._sequence_in_db = sequence_in_db
        self._streams: dict[str, _Stream] = {}
        self._ids = PublicationIds()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._idempotency_window = idempotency_window
        self._idempotent: collections.OrderedDict[
            tuple[str, str], tuple[float, asyncio.Future[StoredPublication]]
        ] = collections.OrderedDict()

    @property
    def stats(self) -> BatchStats:
        """Group-commit statistics: batches, rows, max/avg rows per transaction, retries."""
        return self._writer.stats

    @property
    def queued(self) -> int:
        """Publications waiting for their transaction."""
        return self._writer.queued

    @property
    def writer_backend_pid(self) -> int | None:
        """Server pid of the writer's connection (diagnostics and fault-injection tests)."""
        return self._writer.backend_pid

    async def close(self, drain_seconds: float | None = None) -> None:
        """Refuse new publications and wait for the queued ones to commit (see
        ``BatchWriter.close`` for ``drain_seconds``)."""
        await self._writer.close(drain_seconds)

    # -- writing -------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, *, info: bytes | None = None,
                      tags: dict[str, str] | None = None, offset: int | None = None,
                      epoch: str | None = None,
                      idempotency_key: str | None = None) -> StoredPublication:
        """Store a publication; returns it once its transaction committed.

        Offset and epoch are allocated here unless both are given (a caller that already
        sequenced the stream). ``info`` is the publisher's ClientInfo as JSON. With an
        ``idempotency_key``, a repeat within the window returns the first result (also while
        the first is still in flight) and stores nothing.

        Raises StoreOverloaded when the write queue is full (temporary; nothing stored),
        StoreClosed after ``close()``, ValueError for input PostgreSQL cannot hold, and
        StoreError if the row could not be stored for good."""
        loop = asyncio.get_running_loop()
        key: tuple[str, str] | None = None
        if idempotency_key is not None:
            key = (channel, idempotency_key)
            earlier = self._idempotency_lookup(key)
            if earlier is not None:
                return await asyncio.shield(earlier)
        future: asyncio.Future[StoredPublication] = loop.create_future()
        if key is not None:
            self._idempotency_remember(key, future)
        try:
            # Refuse bad input before the stream is loaded (created) for it.
            columns = _validate(channel, data, info, tags, offset, epoch)
            if (offset is None or epoch is None) and not self._sequence_in_db:
                while channel not in self._streams:
                    await self._load(channel)
            # From here to the submit no await: allocation and queueing in one step.
            item = self._prepare(channel, columns, offset, epoch, future)
            self._writer.submit(item)
        except BaseException as exc:
            if key is not None and self._idempotent.get(key, (0.0, None))[1] is future:
                del self._idempotent[key]
            if not future.done():
                # Concurrent callers with the same key wait on this future.
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                    future.exception()
                else:
                    future.cancel()
            raise
        if key is not None:
            return await asyncio.shield(future)
        return await future

    def publish_nowait(self, channel: str, data: bytes, *, info: bytes | None = None,
                       tags: dict[str, str] | None = None,
                       on_done: Callable[[StoredPublication | None, BaseException | None], None],
                       ) -> bool:
        """Queue a publication without a coroutine or a Future: ``on_done(pub, None)`` is
        called from the writer once its transaction committed (after ``on_committed``, in
        offset order, like ``publish`` returning), or ``on_done(None, error)`` if it could
        not be stored.

        Returns False, queueing nothing, when the channel's stream is not in memory yet
        (``publish`` loads it). Raises at once what ``publish`` raises before queueing:
        StoreOverloaded, StoreClosed, ValueError."""
        if not self._sequence_in_db and channel not in self._streams:
            return False
        columns = _validate(channel, data, info, tags, None, None)
        self._writer.submit(self._prepare(channel, columns, None, None, Notify(on_done)))
        return True

    def _prepare(self, channel: str, columns: _Columns, offset: int | None, epoch: str | None,
                 future: asyncio.Future[StoredPublication] | Notify) -> Item:
        """Allocate the offset and build the queued item. Synchronous: the allocation and
        the caller's submit happen in one event-loop step. The stream must be loaded unless
        the offset is given or the database sequences it."""
        data, data_json, data_raw, info, info_json, tags, tags_json = columns
        self._writer.check_capacity()
        if (offset is None or epoch is None) and self._sequence_in_db:
            offset, epoch = 0, ""  # given by the transaction (see BatchWriter)
        elif offset is None or epoch is None:
            stream = self._streams[channel]
            stream.allocated += 1
            offset = stream.allocated
            epoch = stream.epoch
        else:
            known = self._streams.get(channel)
            if known is not None and known.epoch == epoch and offset > known.allocated:
                known.allocated = offset
        created_at = datetime.now(UTC)
        pub_id = self._ids.new()
        pub = StoredPublication(channel=channel, offset=offset, epoch=epoch, id=pub_id, data=data,
                                info=info, tags=tags, created_at=created_at)
        record: Record = (channel, offset, epoch, pub_id, data_json, data_raw, info_json,
                          tags_json, created_at)
        return Item(pub, record, future)

    def _committed(self, pubs: list[StoredPublication]) -> None:
        streams = self._streams
        for pub in pubs:
            stream = streams.get(pub.channel)
            if stream is not None and stream.epoch == pub.epoch and pub.offset > stream.committed:
                stream.committed = pub.offset
        if self._on_committed is not None:
            self._on_committed(pubs)

    # -- idempotency -----------------------------------------------------------------------

    def _idempotency_lookup(self, key: tuple[str, str]) -> asyncio.Future[StoredPublication] | None:
        now = time.monotonic()
        table = self._idempotent
        while table:  # insertion order = deadline order: expired keys are at the front
            oldest_key, (deadline, _) = next(iter(table.items()))
            if deadline > now:
                break
            del table[oldest_key]
        entry = table.get(key)
        return entry[1] if entry is not None else None

    def _idempotency_remember(self, key: tuple[str, str],
                              future: asyncio.Future[StoredPublication]) -> None:
        table = self._idempotent
        table[key] = (time.monotonic() + self._idempotency_window, future)
        while len(table) > IDEMPOTENCY_MAX_KEYS:
            table.popitem(last=False)

        def forget_failure(done: asyncio.Future[StoredPublication]) -> None:
            # A failed publication stored nothing: a retry with the same key must run.
            if (done.cancelled() or done.exception() is not None) and \
                    table.get(key, (0.0, None))[1] is done:
                del table[key]

        future.add_done_callback(forget_failure)

    # -- streams ---------------------------------------------------------------------------

    async def _load(self, channel: str) -> None:
        """Load (creating if absent) the channel's stream row into memory; concurrent
        callers for one channel share one query."""
        waiter = self._loading.get(channel)
        if waiter is None:
            waiter = asyncio.ensure_future(self._fetch_stream(channel))
            self._loading[channel] = waiter
            waiter.add_done_callback(lambda _: self._loading.pop(channel, None))
        await asyncio.shield(waiter)

    async def _fetch_stream(self, channel: str) -> None:
        while True:
            row = await self.pool.fetchrow(_LOAD_STREAM, channel, secrets.token_hex(EPOCH_BYTES))
            # None only when a concurrent creator committed after our snapshot was taken.
            if row is not None:
                break
        if channel not in self._streams:
            self._evict_idle_streams()
            self._streams[channel] = _Stream(row["epoch"], row["top"])

    def _evict_idle_streams(self) -> None:
        if len(self._streams) < MAX_CACHED_STREAMS:
            return
        target = MAX_CACHED_STREAMS * 9 // 10
        for channel in [c for c, s in self._streams.items() if s.allocated == s.committed]:
            del self._streams[channel]
            if len(self._streams) <= target:
                break

    async def position(self, channel: str) -> tuple[str, int]:
        """(epoch, last committed offset) of the channel, creating its stream if absent."""
        if self._sequence_in_db:
            row = await self.pool.fetchrow(_LOAD_STREAM, channel, secrets.token_hex(EPOCH_BYTES))
            while row is None:  # a concurrent creator committed after our snapshot
                row = await self.pool.fetchrow(_LOAD_STREAM, channel, secrets.token_hex(EPOCH_BYTES))
            return row["epoch"], row["top"]
        stream = self._streams.get(channel)
        while stream is None:
            await self._load(channel)
            stream = self._streams.get(channel)
        return stream.epoch, stream.committed

    # -- reading ---------------------------------------------------------------------------

    async def history(self, channel: str, *, since_offset: int | None = None, limit: int = -1,
                      reverse: bool = False, max_age: float | None = None,
                      max_items: int = HISTORY_MAX_ITEMS) -> list[StoredPublication]:
        """Committed publications of ``channel``.

        Forward: offsets after ``since_offset`` (exclusive), oldest first. ``reverse``:
        newest first, and with ``since_offset`` only offsets before it (as Centrifugo).
        ``limit`` < 0 means all, 0 none; either way at most ``max_items``. ``max_age``
        (seconds) leaves out older publications."""
        if limit == 0:
            return []
        count = max_items if limit < 0 else min(limit, max_items)
        args: list[object] = [channel]
        if since_offset is not None:
            args.append(since_offset)
        if max_age is not None:
            args.append(datetime.now(UTC) - timedelta(seconds=max_age))
        args.append(count)
        sql = _HISTORY[(reverse, since_offset is not None, max_age is not None)]
        rows = await self.pool.fetch(sql, *args)
        return [_row_to_publication(row) for row in rows]

    async def remove_history(self, channel: str) -> None:
        """Delete the channel's stored publications; its epoch and top offset stay."""
        await self.pool.execute("DELETE FROM publications WHERE channel = $1", channel)

    async def count_rows(self, channel: str) -> int:
        """Stored rows of ``channel`` (tests and diagnostics)."""
        return int(await self.pool.fetchval(
            "SELECT count(*) FROM publications WHERE channel = $1", channel))
