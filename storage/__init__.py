"""Durable storage (PostgreSQL): migrations, time partitions, the group-commit writer and
the publication store. Never imports ``gateway`` or ``centrifugo_bridge``: it speaks its
own types (``storage.types``) and the gateway converts at its boundary."""

from storage.embedded import EmbeddedPostgres, EmbeddedPostgresError
from storage.migrate import MigrationError, migrate
from storage.partitions import PartitionManager
from storage.publications import PublicationStore
from storage.types import (
    BatchStats,
    StoreClosed,
    StoredPublication,
    StoreError,
    StoreOverloaded,
)

__all__ = [
    "BatchStats",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "MigrationError",
    "PartitionManager",
    "PublicationStore",
    "StoreClosed",
    "StoreError",
    "StoreOverloaded",
    "StoredPublication",
    "migrate",
]
