"""Apply the numbered ``db/migrations/*.sql`` files in order, once each, under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every process running migrations.
ADVISORY_LOCK_ID = 0x6A616E67  # "jang"
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk disagree with what the database has applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; refuses bad names and duplicate versions."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_some_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        migrations[version] = Migration(version, path.name, path.read_text())
    return [migrations[version] for version in sorted(migrations)]


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied now (empty when up to date).

    A session-level advisory lock makes concurrent runners queue behind each other;
    each migration runs in its own transaction together with its ledger row.
    """
    migrations = load_migrations(directory)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
        try:
            return await _apply_pending(connection, migrations)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    finally:
        await connection.close()


async def _apply_pending(connection: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await connection.execute(_CREATE_LEDGER)
    rows = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
    applied = {row["version"]: row for row in rows}
    for migration in migrations:
        row = applied.get(migration.version)
        if row is not None and row["checksum"] != migration.checksum:
            raise MigrationError(
                f"{migration.name} was changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        done.append(migration.name)
    return done
