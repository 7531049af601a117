"""The migration runner: once each, in order, concurrently safe, refusing edited files."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from db.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (directory / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    return directory


async def _ledger(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        return [(row["version"], row["name"]) for row in rows]
    finally:
        await conn.close()


async def test_applies_in_order_then_nothing(empty_database: str, migrations: Path) -> None:
    assert await migrate(empty_database, migrations) == ["0001_things.sql", "0002_more.sql"]
    assert await migrate(empty_database, migrations) == []
    assert await _ledger(empty_database) == [(1, "0001_things.sql"), (2, "0002_more.sql")]
    (migrations / "0003_index.sql").write_text("CREATE INDEX things_name ON things (name);")
    assert await migrate(empty_database, migrations) == ["0003_index.sql"]


async def test_concurrent_runners_apply_each_migration_once(
    empty_database: str, migrations: Path
) -> None:
    results = await asyncio.gather(*(migrate(empty_database, migrations) for _ in range(6)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == ["0001_things.sql", "0002_more.sql"]
    assert len(await _ledger(empty_database)) == 2


async def test_edited_applied_migration_is_refused(empty_database: str, migrations: Path) -> None:
    await migrate(empty_database, migrations)
    (migrations / "0001_things.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY);")
    (migrations / "0003_new.sql").write_text("CREATE TABLE newer (id int);")
    with pytest.raises(MigrationError, match=r"0001_things\.sql was changed"):
        await migrate(empty_database, migrations)
    assert len(await _ledger(empty_database)) == 2  # 0003 was not applied either


async def test_failing_migration_leaves_nothing_behind(
    empty_database: str, migrations: Path
) -> None:
    (migrations / "0003_broken.sql").write_text(
        "CREATE TABLE half (id int); INSERT INTO no_such_table VALUES (1);"
    )
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(empty_database, migrations)
    assert [version for version, _ in await _ledger(empty_database)] == [1, 2]
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('half')") is None
    finally:
        await conn.close()


def test_bad_file_names_and_duplicate_versions_are_refused(migrations: Path) -> None:
    (migrations / "3_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"named NNNN_some_name\.sql"):
        load_migrations(migrations)
    (migrations / "3_bad.sql").unlink()
    (migrations / "0002_again.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="used twice"):
        load_migrations(migrations)


async def test_project_migrations_apply_cleanly(empty_database: str, tmp_path: Path) -> None:
    copy = tmp_path / "project"
    shutil.copytree(MIGRATIONS_DIR, copy)
    names = [migration.name for migration in load_migrations(copy)]
    assert await migrate(empty_database, copy) == names
    assert await migrate(empty_database) == []
