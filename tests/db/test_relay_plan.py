"""The relay leader's ASSIGN stays linear in its batch after the outbox was empty: a
plan cached while the table had no rows (and statistics that said so) would join every
outbox row to every row of the batch, until the next ANALYZE (seen as a relay using a
whole core for a few hundred events a second)."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from db.queries import relay as queries

BATCH = 200
NUMBERED_BEFORE = 1_000
IDLE_RUNS = 10  # more than the five custom plans after which PostgreSQL may keep a generic one


def cte_rows_read(plan: dict[str, Any]) -> int:
    """Rows read from CTEs over the whole plan: each scan's rows times its loops."""
    own = 0
    if plan.get("Node Type") == "CTE Scan":
        own = int(plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1))
    return own + sum(cte_rows_read(child) for child in plan.get("Plans", []))


async def test_assign_after_an_idle_empty_outbox_reads_its_batch_a_bounded_number_of_times(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(queries.LEADER_SESSION)
        await conn.execute("TRUNCATE outbox")
        await conn.execute("VACUUM ANALYZE outbox")  # its statistics say: empty
        config = await queries.read_config(conn)
        generation = config.generation
        slots = queries.partition_slots(config.partitions, 0)
        sql = queries.ASSIGN.format(commit_time=queries.COMMIT_TIME)
        await conn.execute(f"PREPARE assign (int, bigint, bigint, smallint[], int) AS {sql}")
        run = f"EXECUTE assign ({BATCH}, 0, {generation}, '{{{','.join(map(str, slots))}}}', 0)"
        for _ in range(IDLE_RUNS):  # a leader with nothing to do, the table empty
            assert await conn.fetch(run) == []
        add = (
            "INSERT INTO outbox (channel, type, data) SELECT 'listing:' || (g % 97), 'x',"
            " jsonb_build_object('n', g) FROM generate_series(1, $1::int) AS g"
        )
        await conn.execute(add, NUMBERED_BEFORE)
        while len(await conn.fetch(run)) == BATCH:
            pass
        await conn.execute(add, BATCH)

        explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {run}")
        plan = orjson.loads(explained)[0]["Plan"]

        # The batch's CTEs are read a few times each: linear, whatever the table holds.
        # The plan made on the empty table reads the batch once per outbox row (240,000).
        assert cte_rows_read(plan) < 20 * BATCH
        left = "SELECT count(*) FROM outbox WHERE position IS NULL AND slot = ANY($1::smallint[])"
        assert await conn.fetchval(left, slots) == 0
    finally:
        await conn.close()
