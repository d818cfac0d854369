"""Group commit: publications queue up and are written many per transaction.

One writer task takes up to ``max_batch`` queued rows at most every ``flush_interval``
(at once when ``max_batch`` are waiting) and writes them in ONE transaction
(COPY into the partitioned parent, plus the streams' new tops). Only after COMMIT returns
does it call ``on_committed`` (fan-out) and resolve the publishers' futures, in queue
order, which is per-channel offset order. Batches are written one at a time, so commit
order is queue order too. The publishers of a committed batch are told a chunk per
event-loop turn while the next batch is being written (each batch's are all told before
the next batch's fan-out), so replying overlaps writing.

Failures:

- transient (connection lost, server shutting down, serialization failure, deadlock,
  resources): the same batch is retried, on a fresh connection, with capped exponential
  backoff until it commits.
  A failure during COMMIT leaves us not knowing whether it committed, so every retry first
  checks for the batch's first row — after taking an advisory lock that the failed
  transaction held from its start, which makes the check wait for that transaction to be
  truly over (a backend can outlive its client's view of the connection).
- a missing partition: the partition is created and the batch retried.
- anything else is a property of some row: the batch is split until the offending row is
  alone; a JSON payload PostgreSQL's jsonb refuses (say, nesting too deep) is then stored
  as bytes instead, and only if that fails too is its publisher given the error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal, NamedTuple

import asyncpg
import msgspec

from storage.partitions import PartitionManager
from storage.types import BatchStats, StoreClosed, StoredPublication, StoreError, StoreOverloaded

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.05
"""First retry delay: long enough for a restarting server's port to come back."""

BACKOFF_MAX_S = 2.0
"""Retry delay cap: a recovered database is used again within 2 s."""

PARTITION_FIX_ATTEMPTS = 3
"""Creating a missing partition and retrying: more failures mean the rows are out of any
range we can create (e.g. a wrong clock), which is not transient."""

RESOLVE_CHUNK = 32
"""Committed rows whose publishers are told per event-loop turn: telling one may be a
reply written to a socket (a ``Notify`` callback, ~10 µs), and a batch holds hundreds.
Between chunks the loop serves the next transaction's round trips (see _tell)."""

WRITER_IDLE_TX_TIMEOUT = "60s"
"""The server ends a writer transaction left idle this long (a vanished client), so a retry
waiting on the batch lock is not stuck behind it for the TCP keepalive timeout."""

COLUMNS = ("channel", "offset", "epoch", "id", "data", "data_raw", "info", "tags", "created_at")

_INSERT_UNNEST = (
    'INSERT INTO publications (channel, "offset", epoch, id, data, data_raw, info, tags, '
    "created_at) SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::uuid[], "
    "$5::jsonb[], $6::bytea[], $7::jsonb[], $8::jsonb[], $9::timestamptz[])")

# Channels sorted: writers of different processes touching the same streams lock their rows
# in one order and cannot deadlock each other. The tops travel as one JSON array of
# [channel, epoch, top] (json_array_elements keeps its order): asyncpg encodes text[]
# parameters element by element with ABC isinstance checks, several µs per channel.
_UPSERT_TOPS = (
    "INSERT INTO channel_streams AS s (channel, epoch, top) "
    "SELECT t->>0, t->>1, (t->>2)::bigint FROM json_array_elements($1::json) AS t "
    "ON CONFLICT (channel) DO UPDATE SET top = GREATEST(s.top, EXCLUDED.top)")

# The same, its JSON inlined as a dollar-quoted literal so that it and COMMIT travel in one
# simple query: a round trip less per transaction (see _write_once).
_TOPS_TAG = "$sentchat_tops$"
_UPSERT_TOPS_AND_COMMIT = (  # the value goes in dollar-quoted; its tag is checked absent
    "INSERT INTO channel_streams AS s (channel, epoch, top) "  # noqa: S608
    f"SELECT t->>0, t->>1, (t->>2)::bigint FROM json_array_elements({_TOPS_TAG}%s{_TOPS_TAG}::json) "
    "AS t ON CONFLICT (channel) DO UPDATE SET top = GREATEST(s.top, EXCLUDED.top); COMMIT")

_encode_json = msgspec.json.Encoder().encode

# Sequencing in the database (several processes write one channel): create missing streams,
# then lock the batch's stream rows in channel order until COMMIT. Concurrent writers of a
# channel queue on that row lock, so its offsets are contiguous and commit order is offset
# order across processes.
_ENSURE_STREAMS = (
    "INSERT INTO channel_streams (channel, epoch, top) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ON CONFLICT (channel) DO NOTHING")
_LOCK_STREAMS = (
    "SELECT channel, epoch, top FROM channel_streams WHERE channel = ANY($1::text[]) "
    "ORDER BY channel FOR UPDATE")
_SET_TOPS = (
    "UPDATE channel_streams AS s SET top = t.top FROM unnest($1::text[], $2::bigint[]) "
    "AS t(channel, top) WHERE s.channel = t.channel")
_BATCH_OFFSETS = (
    'SELECT id, "offset", epoch FROM publications WHERE channel = ANY($1::text[]) '
    "AND id = ANY($2::uuid[])")

_BATCH_PRESENT = (
    'SELECT EXISTS (SELECT 1 FROM publications WHERE created_at = $1 AND channel = $2 '
    'AND "offset" = $3 AND id = $4)')

# Connection, rollback (serialization, deadlock), insufficient resources, operator
# intervention (shutdown, cancel), system I/O: all can pass by themselves.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_STATES = frozenset({"55P03", "55006"})  # lock not available, object in use

Record = tuple[str, int, str, object, str | None, bytes | None, str | None, str | None, datetime]
"""A row in COLUMNS order."""

WriteMethod = Literal["copy", "insert"]


class Item(NamedTuple):
    """A queued publication: what is returned, the row written, who waits (a Future, or a
    ``Notify`` callback)."""

    pub: StoredPublication
    record: Record
    future: asyncio.Future[StoredPublication] | Notify


class Notify:
    """Completion of one queued publication as a plain callback: the part of the Future
    interface the writer uses (``done``, ``set_result``, ``set_exception``, ``exception``).
    A caller that is not a coroutine (the gateway's publish fast path) is told of its commit
    by one call from the writer, instead of a Future whose waiter is a task woken up
    through the event loop. ``fn(pub, None)`` after the commit, ``fn(None, error)`` when the
    row will never be stored."""

    __slots__ = ("_fn", "_done")

    def __init__(self, fn: Callable[[StoredPublication | None, BaseException | None], None]) -> None:
        self._fn = fn
        self._done = False

    def done(self) -> bool:
        """Whether the outcome was already delivered."""
        return self._done

    def set_result(self, pub: StoredPublication) -> None:
        """The row committed."""
        self._call(pub, None)

    def set_exception(self, error: BaseException) -> None:
        """The row will not be stored."""
        self._call(None, error)

    def exception(self) -> None:
        """Nothing to mark as retrieved (Future compatibility)."""
        return None

    def _call(self, pub: StoredPublication | None, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._fn(pub, error)
        except Exception:
            # The writer's loop must go on: one broken waiter cannot fail the others.
            log.exception("commit callback failed")


class _Permanent(Exception):
    """A batch failed for a reason retrying will not fix."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same transaction later can succeed."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InvalidCachedStatementError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    # The client-side protocol state is broken ("connection is closed", "another operation
    # is in progress" after the server's FATAL arrived between two statements...): the
    # connection is dropped and a fresh one retries. DataError (a ValueError) is bad input.
    return _broken_client_state(exc)


def _broken_client_state(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError) and \
        not isinstance(exc, ValueError)


def _closed(conn: asyncpg.Connection | None) -> bool:
    """Whether ``conn`` is unusable; a pool proxy whose connection was lost (and taken
    back by the pool) raises instead of answering."""
    if conn is None:
        return True
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def _missing_partition(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition" in str(exc)


def _sequenced(item: Item, offset: int, epoch: str) -> Item:
    """``item`` with the offset and epoch its transaction gave it."""
    pub = msgspec.structs.replace(item.pub, offset=offset, epoch=epoch)
    record = (item.record[0], offset, epoch, *item.record[3:])
    return Item(pub, record, item.future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class BatchWriter:
    """The queue and the task that commits it; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int, flush_interval: float,
                 queue_limit: int, on_committed: Callable[[list[StoredPublication]], None],
                 partitions: PartitionManager, method: WriteMethod = "copy",
                 sequence_in_db: bool = False) -> None:
        if max_batch < 1 or queue_limit < 1 or flush_interval < 0:
            raise ValueError("max_batch and queue_limit must be >= 1, flush_interval >= 0")
        self._pool = pool
        self._max_batch = max_batch
        self._flush_interval = flush_interval
        self._queue_limit = queue_limit
        self._on_committed = on_committed
        self._partitions = partitions
        self._method: WriteMethod = method
        # Offsets allocated by the transaction instead of by the caller (several processes).
        self._sequence_in_db = sequence_in_db
        self._queue: collections.deque[Item] = collections.deque()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._linger: asyncio.Future[None] | None = None
        self._closing = False
        # Committed and fanned out, publishers not yet told (queue order); see _tell.
        self._committed: collections.deque[Item] = collections.deque()
        self._telling: asyncio.Handle | None = None
        # Unique per writer: the in-doubt check must wait for OUR previous transaction only.
        self._lock_key = secrets.randbits(62)
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        """Rows waiting for a transaction (not counting the one being written)."""
        return len(self._queue)

    @property
    def backend_pid(self) -> int | None:
        """Server pid of the writer's current connection (diagnostics, tests)."""
        conn = self._conn
        if conn is None or _closed(conn):
            return None
        pid: int = conn.get_server_pid()
        return pid

    def check_capacity(self) -> None:
        """Raise StoreClosed / StoreOverloaded if ``submit`` would be refused now."""
        if self._closing:
            raise StoreClosed("the publication store is closed")
        if self._task is not None and self._task.done():
            raise StoreClosed("the batch writer stopped")
        if len(self._queue) >= self._queue_limit:
            raise StoreOverloaded(
                f"write queue full ({self._queue_limit} publications waiting); retry later")

    def submit(self, item: Item) -> None:
        """Queue a publication; its future resolves after its transaction committed."""
        self.check_capacity()
        self._queue.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-writer")
        if self._wakeup is not None:
            _resolve(self._wakeup)
        elif self._linger is not None and len(self._queue) >= self._max_batch:
            _resolve(self._linger)

    async def close(self, drain_seconds: float | None = None) -> None:
        """Stop accepting rows and wait until every queued row is committed. After
        ``drain_seconds`` the rest fail with StoreClosed (they were never acknowledged)."""
        self._closing = True
        task = self._task
        if task is not None:
            if self._wakeup is not None:
                _resolve(self._wakeup)
            if self._linger is not None:
                _resolve(self._linger)
            try:
                await asyncio.wait_for(asyncio.shield(task), drain_seconds)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_queued(StoreClosed("the publication store closed before this was stored"))
        await self._release_connection()

    # -- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        batch: list[Item] = []
        last_flush = -self._flush_interval
        try:
            while True:
                if not queue:
                    if self._closing:
                        self._tell_all()
                        return
                    self._wakeup = loop.create_future()
                    try:
                        await self._wakeup
                    finally:
                        self._wakeup = None
                    continue
                # At most one transaction per flush_interval: lingering until then lets more
                # publishers join this one (the group in group commit), while a writer
                # that is busy anyway (commits slower than the interval), or idle for a
                # while, never adds delay. Cut short when a full batch is waiting.
                wait = last_flush + self._flush_interval - loop.time()
                if wait > 0 and len(queue) < self._max_batch and not self._closing:
                    self._linger = loop.create_future()
                    timer = loop.call_later(wait, _resolve, self._linger)
                    try:
                        await self._linger
                    finally:
                        timer.cancel()
                        self._linger = None
                last_flush = loop.time()
                batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
                await self._commit(batch)
                batch = []
        except BaseException as exc:
            # Committed rows are acknowledged whatever happens next.
            self._tell_all()
            # Cancelled (close timed out) or a bug: nobody may wait forever.
            error = StoreClosed("the publication store stopped") if isinstance(
                exc, asyncio.CancelledError) else StoreError(f"batch writer failed: {exc!r}")
            for item in batch:
                _fail(item, error)
            self._fail_queued(error)
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("batch writer failed")
            raise

    def _fail_queued(self, error: StoreError) -> None:
        while self._queue:
            _fail(self._queue.popleft(), error)

    async def _commit(self, batch: list[Item]) -> None:
        """Commit ``batch`` (retrying transient failures), then publish it."""
        try:
            batch = await self._write_with_retry(batch)
        except _Permanent as exc:
            cause = exc.__cause__ or exc
            if len(batch) > 1:
                middle = len(batch) // 2
                await self._commit(batch[:middle])
                await self._commit(batch[middle:])
                return
            item = batch[0]
            if item.record[4] is not None:
                log.warning("jsonb refused a payload of %s (%s); storing it as bytes",
                            item.pub.channel, cause)
                record = item.record[:4] + (None, item.pub.data) + item.record[6:]
                await self._commit([Item(item.pub, record, item.future)])
                return
            log.error("publication %s@%d failed permanently: %s", item.pub.channel,
                      item.pub.offset, cause)
            self.stats.failed_rows += 1
            _fail(item, StoreError(f"publication could not be stored: {cause}"))
            return
        pubs = [item.pub for item in batch]
        # The previous batch's publishers first: results go out in commit order.
        self._tell_all()
        try:
            self._on_committed(pubs)
        except Exception:
            # Committed is committed: a failing subscriber hook must not un-acknowledge it.
            log.exception("on_committed hook failed")
        self._committed.extend(batch)
        self._tell()

    def _tell(self) -> None:
        """Resolve up to RESOLVE_CHUNK committed rows, and come back on the next loop turn
        for the rest. The writer meanwhile starts the next transaction: its round trips
        are served between chunks, so replying to one batch overlaps writing the next
        instead of delaying it by the whole batch's reply work."""
        self._telling = None
        committed = self._committed
        for _ in range(min(RESOLVE_CHUNK, len(committed))):
            item = committed.popleft()
            if not item.future.done():
                item.future.set_result(item.pub)
        if committed:
            self._telling = asyncio.get_running_loop().call_soon(self._tell)

    def _tell_all(self) -> None:
        """Resolve every committed row now (before the next batch's, at close, on failure)."""
        if self._telling is not None:
            self._telling.cancel()
            self._telling = None
        committed = self._committed
        while committed:
            item = committed.popleft()
            if not item.future.done():
                item.future.set_result(item.pub)

    async def _write_with_retry(self, batch: list[Item]) -> list[Item]:
        attempt = 0
        in_doubt = False
        fix_partitions = 0
        while True:
            try:
                if fix_partitions:
                    await self._partitions.ensure_for(item.pub.created_at for item in batch)
                conn = await self._connection()
                started = time.perf_counter()
                written = await self._write_once(conn, batch, in_doubt)
                self.stats.commit_seconds += time.perf_counter() - started
                self.stats.batches += 1
                self.stats.rows += len(batch)
                self.stats.max_rows = max(self.stats.max_rows, len(batch))
                return written
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _missing_partition(exc):
                    if fix_partitions >= PARTITION_FIX_ATTEMPTS:
                        raise _Permanent() from exc
                    fix_partitions += 1
                    continue
                if not is_transient(exc):
                    raise _Permanent() from exc
                # From here on the batch may have committed without us hearing of it.
                in_doubt = True
                delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempt)
                attempt += 1
                self.stats.retries += 1
                log.warning("batch of %d publications failed (%r); retry %d in %.2fs",
                            len(batch), exc, attempt, delay)
                # Every retry runs on a fresh connection: after a failure the old one's
                # client-side state cannot be trusted (reconnecting costs milliseconds).
                await self._release_connection(terminate=True)
                await asyncio.sleep(delay)

    async def _write_once(self, conn: asyncpg.Connection, batch: list[Item],
                          in_doubt: bool) -> list[Item]:
        """One transaction; returns the batch as written (with offsets when the database
        sequenced it)."""
        if self._sequence_in_db:
            return await self._write_sequenced(conn, batch, in_doubt)
        # Four round trips: BEGIN with the lock, COPY (two), the tops with COMMIT. Each one
        # waits for a turn of the event loop, which under load is busy with the publishers'
        # sockets: round trips, more than PostgreSQL, set the length of a commit cycle.
        await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({int(self._lock_key)})")
        try:
            if in_doubt:
                first = batch[0].pub
                if await conn.fetchval(_BATCH_PRESENT, first.created_at, first.channel,
                                       first.offset, first.id):
                    log.info("batch of %d publications had committed before the error",
                             len(batch))
                    await conn.execute("COMMIT")
                    return batch
            await self._copy(conn, [item.record for item in batch])
            tops: dict[str, tuple[str, int]] = {}
            for item in batch:
                pub = item.pub
                known = tops.get(pub.channel)
                if known is None or pub.offset > known[1]:
                    tops[pub.channel] = (pub.epoch, pub.offset)
            rows = _encode_json([(c, *tops[c]) for c in sorted(tops)]).decode()
            if _TOPS_TAG not in rows:
                await conn.execute(_UPSERT_TOPS_AND_COMMIT % rows)
            else:  # a channel name holding the quote tag: as a parameter, then COMMIT
                await conn.execute(_UPSERT_TOPS, rows)
                await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        return batch

    async def _copy(self, conn: asyncpg.Connection, records: list[Record]) -> None:
        if self._method == "copy":
            await conn.copy_records_to_table("publications", records=records, columns=COLUMNS)
        else:
            await conn.execute(_INSERT_UNNEST, *map(list, zip(*records, strict=True)))

    async def _write_sequenced(self, conn: asyncpg.Connection, batch: list[Item],
                               in_doubt: bool) -> list[Item]:
        channels = sorted({item.pub.channel for item in batch})
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
            if in_doubt:
                rows = await conn.fetch(_BATCH_OFFSETS, channels, [item.pub.id for item in batch])
                if rows:
                    log.info("batch of %d publications had committed before the error",
                             len(batch))
                    found = {row["id"]: (row["offset"], row["epoch"]) for row in rows}
                    return [_sequenced(item, *found[item.pub.id]) for item in batch]
            await conn.execute(_ENSURE_STREAMS, channels,
                               [secrets.token_hex(4) for _ in channels], [0] * len(channels))
            tops = {row["channel"]: [row["epoch"], row["top"]]
                    for row in await conn.fetch(_LOCK_STREAMS, channels)}
            written = []
            for item in batch:
                top = tops[item.pub.channel]
                top[1] += 1
                written.append(_sequenced(item, top[1], top[0]))
            await self._copy(conn, [item.record for item in written])
            await conn.execute(_SET_TOPS, channels, [tops[c][1] for c in channels])
        return written

    async def _connection(self) -> asyncpg.Connection:
        if _closed(self._conn):
            await self._release_connection()
            conn = await self._pool.acquire()
            try:
                await conn.execute(
                    f"SET idle_in_transaction_session_timeout = '{WRITER_IDLE_TX_TIMEOUT}'")
            except BaseException:
                await self._pool.release(conn)
                raise
            self._conn = conn
        return self._conn

    async def _release_connection(self, terminate: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if terminate and not _closed(conn):
                    conn.terminate()  # hands the holder back to the pool, which reconnects
                await self._pool.release(conn)
            except Exception:  # a broken connection: the pool replaces it anyway
                log.debug("releasing the writer connection failed", exc_info=True)


async def _rollback(conn: asyncpg.Connection) -> None:
    """End a failed transaction begun with a plain BEGIN, if the connection still works (a
    broken one is dropped by the retry path anyway)."""
    if _closed(conn) or not conn.is_in_transaction():
        return
    try:
        await conn.execute("ROLLBACK")
    except Exception:
        log.debug("rollback of a failed batch failed", exc_info=True)


def _fail(item: Item, error: BaseException) -> None:
    future = item.future
    if not future.done():
        future.set_exception(error)
        # Mark it retrieved: a publisher that gave up waiting must not cause a log line.
        future.exception()
