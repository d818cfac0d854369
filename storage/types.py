"""Storage's own value types: the gateway converts to and from them at its boundary."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec


class StoreError(Exception):
    """A publication could not be stored."""


class StoreOverloaded(StoreError):
    """The write queue is full: a temporary condition, retry later (nothing was stored)."""


class StoreClosed(StoreError):
    """The store is closing or closed and accepts no more publications."""


# gc=False: these are created at the publish rate and never take part in reference cycles,
# so keeping them out of the cyclic GC's generations shortens its pauses.
class StoredPublication(msgspec.Struct, frozen=True, gc=False):
    """A publication as committed: ``data`` is the payload bytes (JSON payloads come back
    from history as equivalent JSON in PostgreSQL's jsonb formatting); ``info`` is the
    publisher's ClientInfo encoded as JSON (user, client, conn_info, chan_info) or None."""

    channel: str
    offset: int
    epoch: str
    id: uuid.UUID
    data: bytes
    info: bytes | None
    tags: dict[str, str] | None
    created_at: datetime


class BatchStats(msgspec.Struct, gc=False):
    """Group-commit counters since the writer started."""

    batches: int = 0
    rows: int = 0
    max_rows: int = 0
    retries: int = 0
    failed_rows: int = 0
    commit_seconds: float = 0.0

    @property
    def avg_rows(self) -> float:
        """Mean rows per committed transaction."""
        return self.rows / self.batches if self.batches else 0.0
