"""Versioned SQL migrations: ``storage/migrations/NNNN_name.sql`` applied in order, once.

Each file runs in its own transaction together with its row in ``schema_migrations``, so a
failing file leaves nothing behind. Every transaction first takes a transaction-level
advisory lock: nodes starting at the same moment queue up, and each re-checks what is
already applied once it holds the lock, so the schema ends up the same whoever wins.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

MIGRATION_LOCK_KEY = 0x53454E545F4D4947
"""Advisory lock key ("SENT_MIG"), shared by every process migrating the same database."""

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migration files or the database's migration record are inconsistent."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: ``version`` orders it, ``checksum`` detects later edits."""

    version: str
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        """``NNNN_name``, as reported by ``migrate``."""
        return f"{self.version}_{self.name}"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files of ``directory`` (default: the package's), in version order.

    Raises MigrationError for a misnamed ``.sql`` file or a duplicated version."""
    directory = directory or MIGRATIONS_DIR
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name must look like 0001_name.sql: {path.name}")
        version = match["version"]
        if version in found:
            raise MigrationError(f"two migrations with version {version}")
        sql = path.read_text(encoding="utf-8")
        found[version] = Migration(version, match["name"], sql,
                                   hashlib.sha256(sql.encode()).hexdigest())
    return [found[v] for v in sorted(found)]


async def migrate(target: asyncpg.Connection | asyncpg.Pool,
                  directory: Path | None = None) -> list[str]:
    """Apply the pending migrations; returns the labels (``0001_publications``...) that
    this call applied, in order — empty when the schema was already current.

    Safe to run from several processes at once. Raises MigrationError when an applied
    migration's file changed since (edit a new file instead)."""
    migrations = load_migrations(directory)
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            return await _migrate(conn, migrations)
    return await _migrate(target, migrations)


async def _migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(_BOOTSTRAP)
    applied_now: list[str] = []
    for migration in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            recorded = await conn.fetchval(
                "SELECT checksum FROM schema_migrations WHERE version = $1", migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.label} was changed after it was applied")
                continue
            log.info("applying migration %s", migration.label)
            # No arguments: the simple query protocol runs every statement of the file.
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version, migration.name, migration.checksum)
            applied_now.append(migration.label)
    return applied_now
