"""Durable namespaces: publications are committed to PostgreSQL before anyone sees them.

The node hands a durable publication to the store's group-commit writer; the writer calls
back after the commit, in offset order, and only then is the publication fanned out and
the publisher answered. History and recovery of durable channels are read from
PostgreSQL, so a client recovers any gap within the namespace's retention, across
restarts of every gateway (the channel's epoch lives in the database too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Literal

import asyncpg
import msgspec

from centrifugo_bridge import codes
from centrifugo_bridge.codes import ClientError
from centrifugo_bridge.effects import StreamState
from centrifugo_bridge.protocol import ClientInfo, Publication, Raw, StreamPosition
from gateway.config import StorageSettings
from storage.audit import audit_partitions
from storage.migrate import migrate
from storage.partitions import PartitionManager
from storage.publications import PublicationStore
from storage.types import StoredPublication, StoreError, StoreOverloaded

log = logging.getLogger("sentchat.durable")

# How often partitions are created ahead and expired ones dropped.
MAINTENANCE_INTERVAL = 3600.0

_info_decoder = msgspec.json.Decoder(ClientInfo)
_encode = msgspec.json.Encoder().encode


def to_wire(pub: StoredPublication) -> Publication:
    """A committed row as a protocol Publication."""
    info = _info_decoder.decode(pub.info) if pub.info else None
    return Publication(data=Raw(pub.data), info=info, offset=pub.offset, tags=pub.tags or {})


def _refusal(channel: str, exc: ValueError | StoreError) -> ClientError:
    """A publish the store refused, as the client is answered: 111 (temporary) when the
    write queue is full — backpressure, nothing was stored —, 107 for input PostgreSQL
    cannot take, 100 for anything else (logged)."""
    if isinstance(exc, StoreOverloaded):
        return ClientError(111, "too many requests", temporary=True)
    if isinstance(exc, ValueError):
        return codes.error(codes.BAD_REQUEST)
    log.error("durable publish to %s failed", channel, exc_info=exc)
    return codes.error(codes.INTERNAL)


class DurableStreams:
    """The PostgreSQL side of a node."""

    def __init__(self, settings: StorageSettings, deliver: Callable[[str, Publication, str], None],
                 max_retention: float = 0.0, shared: bool = False,
                 listening: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        # deliver(channel, publication, epoch): called after each commit, in offset order.
        self._deliver = deliver
        # listening(channel): whether deliver wants the channel's publications at all; a
        # channel nobody hears skips building the wire Publication (info decoded) per row.
        self._listening = listening
        # Several processes write the same channels: the database sequences them.
        self._shared = shared
        self._max_retention = max_retention
        self.pool: asyncpg.Pool | None = None
        self.store: PublicationStore | None = None
        self.partitions: PartitionManager | None = None
        # audit_log (storage/audit.py): monthly, kept forever — ensured, never dropped.
        self.audit_partitions: PartitionManager | None = None
        self._maintenance: asyncio.Task[None] | None = None

    async def start(self, dsn: str) -> None:
        """Connect, migrate (safe with several nodes starting at once), create partitions."""
        s = self.settings
        self.pool = await asyncpg.create_pool(dsn, min_size=2, max_size=s.pool_size)
        await migrate(self.pool)
        # The config check allows only these two values.
        interval: Literal["daily", "monthly"] = "monthly" if s.partition_interval == "monthly" else "daily"
        self.partitions = PartitionManager(self.pool, interval, ahead=s.partitions_ahead)
        await self.partitions.ensure()
        self.audit_partitions = audit_partitions(self.pool)
        await self.audit_partitions.ensure()
        self.store = PublicationStore(
            self.pool, max_batch=s.max_batch, flush_interval=s.flush_interval,
            queue_limit=s.queue_limit, on_committed=self._committed, partitions=self.partitions,
            sequence_in_db=self._shared)
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def close(self) -> None:
        """Commit what is queued, then disconnect."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        if self.store is not None:
            await self.store.close()
        if self.pool is not None:
            await self.pool.close()

    async def _maintain(self) -> None:
        assert self.partitions is not None  # noqa: S101 - set before the task starts
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            try:
                await self.partitions.ensure()
                if self.audit_partitions is not None:
                    await self.audit_partitions.ensure()
                if self._max_retention > 0:
                    await self.partitions.drop_older_than(self._max_retention)
            except Exception:
                log.exception("partition maintenance failed; retrying in %.0f s", MAINTENANCE_INTERVAL)

    def _committed(self, pubs: list[StoredPublication]) -> None:
        deliver = self._deliver
        listening = self._listening
        for pub in pubs:
            if listening is None or listening(pub.channel):
                deliver(pub.channel, to_wire(pub), pub.epoch)

    def _need_store(self) -> PublicationStore:
        if self.store is None:
            raise codes.error(codes.INTERNAL)
        return self.store

    async def publish(self, channel: str, data: bytes, *, info: ClientInfo | None,
                      tags: dict[str, str] | None, idempotency_key: str | None) -> StreamPosition:
        """Commit, fan out (from the commit callback), then return the position."""
        store = self._need_store()
        try:
            stored = await store.publish(channel, data, info=_encode(info) if info else None,
                                         tags=tags or None, idempotency_key=idempotency_key or None)
        except (ValueError, StoreError) as exc:
            raise _refusal(channel, exc) from None
        return StreamPosition(offset=stored.offset, epoch=stored.epoch)

    def publish_nowait(self, channel: str, data: bytes, info: ClientInfo | None,
                       done: Callable[[StreamPosition | None, ClientError | None], None]) -> bool:
        """``publish`` without a coroutine: queue for the group commit and return. After
        the commit (and the fan-out) ``done(position, None)`` is called from the writer, or
        ``done(None, error)`` when it could not be stored — errors as ``publish`` raises
        them. Refusals known at once (queue full: 111, bad input) are raised here.

        Returns False, queueing nothing, when the store has to load the channel's stream
        first: ``publish`` does that (once per channel)."""
        store = self.store
        if store is None:
            return False

        def committed(pub: StoredPublication | None, exc: BaseException | None) -> None:
            if pub is not None:
                done(StreamPosition(offset=pub.offset, epoch=pub.epoch), None)
            else:
                log.error("durable publish to %s failed", channel, exc_info=exc)
                done(None, codes.error(codes.INTERNAL))

        try:
            return store.publish_nowait(channel, data, info=_encode(info) if info else None,
                                        on_done=committed)
        except (ValueError, StoreError) as exc:
            raise _refusal(channel, exc) from None

    async def history(self, channel: str, limit: int, since: StreamPosition | None,
                      reverse: bool, retention: float) -> StreamState:
        """Same contract as Broker.history, answered from PostgreSQL."""
        store = self._need_store()
        epoch, top = await store.position(channel)
        if since is not None and since.epoch and since.epoch != epoch:
            raise codes.error(codes.UNRECOVERABLE_POSITION)
        if limit == 0:
            return StreamState(epoch=epoch, offset=top, publications=[])
        since_offset = since.offset if since is not None else None
        if reverse:
            # Newest first: start below the top in the query itself, so rows committed
            # after the top was read do not take the limit's places (then dropped below).
            since_offset = top + 1 if since_offset is None else min(since_offset, top + 1)
        rows = await store.history(channel, since_offset=since_offset,
                                   limit=limit, reverse=reverse, max_age=retention or None)
        # One consistent cut: the top and the rows are two reads, and publications keep
        # committing between them. Rows past the top read first are left out — they are
        # newer than the position this answer describes, and a subscriber gets them as
        # live pushes (held during the subscribe, sent after the reply). Answering them
        # together with the older top would make the recovery look inexact (last row !=
        # top) and be refused although the history covers the gap.
        return StreamState(epoch=epoch, offset=top,
                           publications=[to_wire(p) for p in rows if p.offset <= top])

    async def remove_history(self, channel: str) -> None:
        await self._need_store().remove_history(channel)
