"""The cleanup between tests leaves what ``TRUNCATE ... RESTART IDENTITY CASCADE`` would:
every table empty, the tables' own sequences at their start, everything else as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from db.migrate import migrate
from tests.cleanup import Schema, empty_tables

# Parents, children, a grandchild that refers to both, a self-reference, an identity, a
# serial, and a sequence no table owns (RESTART IDENTITY leaves it alone).
TREE = """
CREATE TABLE schema_migrations (version int PRIMARY KEY);
CREATE TABLE people (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
CREATE TABLE things (
    id serial PRIMARY KEY,
    owner bigint NOT NULL REFERENCES people (id),
    parent int REFERENCES things (id)
);
CREATE TABLE notes (
    id serial PRIMARY KEY,
    thing int NOT NULL REFERENCES things (id),
    author bigint NOT NULL REFERENCES people (id)
);
CREATE TABLE quiet (id serial PRIMARY KEY);
CREATE SEQUENCE tickets;
"""


@pytest.fixture
async def conn(empty_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_database)
    yield connection
    await connection.close()


async def fill(conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO people (name) VALUES ('a'), ('b')")
    await conn.execute("INSERT INTO things (owner) VALUES (1), (2)")
    await conn.execute("INSERT INTO things (owner, parent) VALUES (1, 1)")
    await conn.execute("INSERT INTO notes (thing, author) VALUES (3, 2)")


async def counts(conn: asyncpg.Connection, *tables: str) -> dict[str, int]:
    """Rows per table; the names are this file's own."""
    query = "SELECT count(*) FROM {}"
    return {table: await conn.fetchval(query.format(table)) for table in tables}


async def test_rows_go_and_the_tables_own_sequences_start_again(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(TREE)
    await conn.execute("INSERT INTO schema_migrations VALUES (1), (2)")
    await fill(conn)
    await conn.fetchval("SELECT nextval('tickets')")
    await conn.fetchval("SELECT nextval('tickets')")

    await empty_tables(conn, await Schema.read(conn))

    assert await counts(conn, "people", "things", "notes", "quiet") == dict.fromkeys(
        ["people", "things", "notes", "quiet"], 0
    )
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 2
    await fill(conn)  # the same ids again: the references in it hold only if they restarted
    assert await conn.fetchval("SELECT max(id) FROM notes") == 1
    assert await conn.fetchval("SELECT nextval('quiet_id_seq')") == 1
    assert await conn.fetchval("SELECT nextval('tickets')") == 3


async def test_children_are_emptied_before_the_tables_they_refer_to(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(TREE)
    order = (await Schema.read(conn)).order
    assert order is not None
    assert "schema_migrations" not in order
    assert order.index("notes") < order.index("things") < order.index("people")


async def test_tables_that_refer_to_each_other_are_truncated_instead(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        "CREATE TABLE eggs (id serial PRIMARY KEY, hen int);"
        "CREATE TABLE hens (id serial PRIMARY KEY, egg int REFERENCES eggs (id));"
        "ALTER TABLE eggs ADD FOREIGN KEY (hen) REFERENCES hens (id);"
        "INSERT INTO eggs (hen) VALUES (NULL);"
        "INSERT INTO hens (egg) VALUES (1);"
        "UPDATE eggs SET hen = 1;"
    )
    schema = await Schema.read(conn)
    assert schema.order is None

    await empty_tables(conn, schema)

    assert await counts(conn, "eggs", "hens") == {"eggs": 0, "hens": 0}
    assert await conn.fetchval("SELECT nextval('eggs_id_seq')") == 1


async def test_the_projects_schema_is_emptied_by_deleting(empty_database: str) -> None:
    """No cycle among the project's tables, so the quick path is the one taken."""
    await migrate(empty_database)
    connection = await asyncpg.connect(empty_database)
    try:
        schema = await Schema.read(connection)
        assert schema.order is not None
        assert sorted(schema.order) == sorted(schema.tables)
        assert "users" in schema.tables and "schema_migrations" not in schema.tables
        await empty_tables(connection, schema)
        tables = await counts(connection, *schema.tables)
        assert set(tables.values()) == {0}
    finally:
        await connection.close()
