"""The relay leader's ASSIGN stays linear in its batch after the outbox was empty.

The leader's session plans its statements once and keeps the plans PLAN_LIFETIME_S. A plan
made while the table had no rows (and statistics that said so) joins every outbox row to
every row of the batch (seen as a relay using a whole core for a few hundred events a
second); kept for good, it would serve until the next ANALYZE. Once the lifetime has passed,
the statement is planned again for the table as it is.
"""

from __future__ import annotations

import asyncio

from db.pool import connect
from db.queries import relay as queries

BATCH = 200
NUMBERED_BEFORE = 5_000
CHANNELS = 997
IDLE_RUNS = 10  # an idle leader's runs on the empty table: the plan is made then
ADD = (
    "INSERT INTO outbox (channel, type, data) SELECT 'relay-plan:' || (g % $2::int), 'x',"
    " jsonb_build_object('n', g) FROM generate_series(1, $1::int) AS g"
)
# Rows this backend's statements read from a table, by scans and index fetches, since it
# last reported its statistics.
ROWS_READ = (
    "SELECT pg_stat_get_xact_tuples_returned($1::regclass)"
    " + pg_stat_get_xact_tuples_fetched($1::regclass)"
)


async def test_assign_planned_on_an_empty_outbox_reads_its_batch_once_the_table_has_grown(
    database_url: str,
) -> None:
    conn = await connect(database_url, {}, 10, statement_lifetime=queries.PLAN_LIFETIME_S)
    try:
        await conn.execute(queries.LEADER_SESSION)
        await conn.execute("TRUNCATE outbox, channel_heads")
        await conn.execute("VACUUM ANALYZE outbox")  # its statistics say: empty
        await conn.execute("VACUUM ANALYZE channel_heads")
        config = await queries.read_config(conn)
        slots = queries.partition_slots(config.partitions, 0)
        sql = queries.ASSIGN.format(commit_time=queries.COMMIT_TIME)
        arguments = (BATCH, 0, config.generation, slots, 0)
        for _ in range(IDLE_RUNS):  # a leader with nothing to do, the table empty
            assert await conn.fetch(sql, *arguments) == []
        await conn.execute(ADD, NUMBERED_BEFORE, CHANNELS)
        while len(await conn.fetch(sql, *arguments)) == BATCH:
            pass
        await asyncio.sleep(queries.PLAN_LIFETIME_S + 0.5)  # the plan's lifetime is over
        await conn.execute(ADD, BATCH, CHANNELS)

        async with conn.transaction():  # the counts include statements not yet reported
            outbox_before = await conn.fetchval(ROWS_READ, "outbox")
            heads_before = await conn.fetchval(ROWS_READ, "channel_heads")
            assert len(await conn.fetch(sql, *arguments)) == BATCH
            outbox_rows = await conn.fetchval(ROWS_READ, "outbox") - outbox_before
            heads_rows = await conn.fetchval(ROWS_READ, "channel_heads") - heads_before

        # The batch's rows, each looked up a few times, and each channel's head: not the
        # whole outbox (5,200 rows) nor every head (997) for each row of the batch.
        assert outbox_rows < 5 * BATCH
        assert heads_rows < 5 * BATCH
        left = "SELECT count(*) FROM outbox WHERE position IS NULL AND slot = ANY($1::smallint[])"
        assert await conn.fetchval(left, slots) == 0
    finally:
        await conn.execute("DELETE FROM outbox WHERE channel LIKE 'relay-plan:%'")
        await conn.execute("DELETE FROM channel_heads WHERE channel LIKE 'relay-plan:%'")
        await conn.close()


BACKLOG = 40_000
BACKLOG_BATCH = 100


async def test_assign_behind_a_backlog_reads_at_most_a_batch_per_slot(database_url: str) -> None:
    """Statistics taken while a few rows were pending, then a backlog arrives (a leader
    that fell behind): a batch reads at most the batch size of each slot's pending rows,
    never the whole backlog (which made a behind leader drain slower the further behind
    it was)."""
    conn = await connect(database_url, {}, 10, statement_lifetime=queries.PLAN_LIFETIME_S)
    try:
        await conn.execute(queries.LEADER_SESSION)
        await conn.execute("TRUNCATE outbox, channel_heads")
        config = await queries.read_config(conn)
        slots = queries.partition_slots(config.partitions, 0)
        sql = queries.ASSIGN.format(commit_time=queries.COMMIT_TIME)
        arguments = (BATCH, 0, config.generation, slots, 0)
        await conn.execute(ADD, NUMBERED_BEFORE, CHANNELS)
        while len(await conn.fetch(sql, *arguments)) == BATCH:
            pass
        await conn.execute(ADD, 50, CHANNELS)  # a few pending when the statistics are taken
        await conn.execute("VACUUM ANALYZE outbox")
        await conn.execute("VACUUM ANALYZE channel_heads")
        await conn.execute(ADD, BACKLOG, CHANNELS)
        await asyncio.sleep(queries.PLAN_LIFETIME_S + 0.5)  # planned on those statistics
        arguments = (BACKLOG_BATCH, 0, config.generation, slots, 0)

        async with conn.transaction():  # the counts include statements not yet reported
            before = await conn.fetchval(ROWS_READ, "outbox")
            assert len(await conn.fetch(sql, *arguments)) == BACKLOG_BATCH
            outbox_rows = await conn.fetchval(ROWS_READ, "outbox") - before

        # Each slot's oldest rows up to a batch, then the batch itself: far from the
        # 40,000 pending rows.
        assert outbox_rows <= len(slots) * BACKLOG_BATCH + 5 * BACKLOG_BATCH
    finally:
        await conn.execute("DELETE FROM outbox WHERE channel LIKE 'relay-plan:%'")
        await conn.execute("DELETE FROM channel_heads WHERE channel LIKE 'relay-plan:%'")
        await conn.close()
