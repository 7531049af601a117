"""Emptying the test database between tests, as ``TRUNCATE ... RESTART IDENTITY`` would,
at a fraction of its cost.

TRUNCATE gives every table a new file and waits for the disk at commit: a few hundred
milliseconds for the schema's tables, after each of more than a thousand tests. Most
tests leave a handful of rows in a few tables, so deleting the rows that are there and
restarting the tables' own sequences leaves the same empty tables in a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter

import asyncpg

# Left alone: it records which migrations ran, and the database stays migrated.
KEPT = "schema_migrations"

_TABLES = """
SELECT c.oid::regclass::text AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> $1
"""

# Which table refers to which (a self-reference orders nothing).
_REFERENCES = """
SELECT conrelid::regclass::text AS referring, confrelid::regclass::text AS referred
FROM pg_constraint
WHERE contype = 'f' AND connamespace = 'public'::regnamespace AND conrelid <> confrelid
"""

# The sequences RESTART IDENTITY restarts: those owned by a column of a table emptied.
_OWNED_SEQUENCES = """
SELECT s.oid::regclass::text AS name
FROM pg_class s
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                 AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
WHERE s.relkind = 'S' AND d.refobjid::regclass::text = ANY($1::text[])
"""

# Only those used since their last restart: the others are at their start already.
_RESTART = """
SELECT setval(s.seqrelid, s.seqstart, false)
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_sequences v ON v.schemaname = c.relnamespace::regnamespace::text
                    AND v.sequencename = c.relname
WHERE s.seqrelid = ANY($1::text[]::regclass[]) AND v.last_value IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class Schema:
    """The tables to empty, each after every table that refers to it, and their sequences.

    ``order`` is None when references go round in a cycle: no delete order exists then.
    """

    tables: list[str]
    order: list[str] | None
    sequences: list[str]

    @classmethod
    async def read(cls, conn: asyncpg.Connection) -> Schema:
        tables = [row["name"] for row in await conn.fetch(_TABLES, KEPT)]
        # A table must wait for every table that refers to it.
        graph: dict[str, set[str]] = {table: set() for table in tables}
        for row in await conn.fetch(_REFERENCES):
            if row["referred"] in graph and row["referring"] in graph:
                graph[row["referred"]].add(row["referring"])
        try:
            order: list[str] | None = list(TopologicalSorter(graph).static_order())
        except CycleError:
            order = None
        sequences = [row["name"] for row in await conn.fetch(_OWNED_SEQUENCES, tables)]
        return cls(tables, order, sequences)


async def empty_tables(conn: asyncpg.Connection, schema: Schema) -> None:
    """Leave every table of ``schema`` empty and its sequences at their start, in one
    transaction; tables with no rows are not touched."""
    if not schema.tables:
        return
    async with conn.transaction():
        if schema.order is None:
            await conn.execute(f"TRUNCATE {', '.join(schema.tables)} RESTART IDENTITY CASCADE")
            return
        # Names as PostgreSQL printed them (regclass quotes where it must), not input.
        probe = " UNION ALL ".join(
            f"SELECT {index} AS at WHERE EXISTS (SELECT FROM {table})"  # noqa: S608
            for index, table in enumerate(schema.order)
        )
        for at in sorted(row["at"] for row in await conn.fetch(probe)):
            await conn.execute(f"DELETE FROM {schema.order[at]}")  # noqa: S608
        if schema.sequences:
            await conn.execute(_RESTART, schema.sequences)
