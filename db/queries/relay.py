"""The relay's statements: positions for committed outbox rows, per partition of channels.

A partition's leader runs ``ASSIGN`` over and over. It checks (``FOR SHARE`` on
relay_config) that the partition count it works for is still the current one, so that
a change of the count waits for every statement in flight, and no statement of the old
count runs after it; ``set_partitions`` makes that change.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from db.queries.outbox import SLOTS

# Advisory lock keys (two int4 form): (RELAY_LOCK_CLASS, partition) is a partition's
# leadership. Advisory locks are per database.
RELAY_LOCK_CLASS = 0x6A746F72  # "jtor"
# (RELAY_LINE_CLASS, partition), held shared: a relay that can publish waits for the lock.
RELAY_LINE_CLASS = 0x6A746F6C  # "jtol"
CONFIG_NOTIFY_CHANNEL = "jangteo_relay_config"
MAX_PARTITIONS = SLOTS  # a partition is a set of whole slots: the count divides SLOTS

# One statement (one round trip, one commit): number the committed rows of the
# partition's slots ($4) that have no position yet, in id order, with positions drawn
# from the shared sequence; chain each to its channel's previous position (within the
# batch, else the channel's head); record all that with the partition's
# published_through; return the rows. The count is checked (``guard``) only when there is
# something to number: an idle leader's statement locks nothing and writes nothing.
# The batch is the oldest of each slot's oldest rows, each slot read through the
# (slot, id) index and stopped at the batch size: a batch then costs at most slots x
# batch index entries, however long the backlog. (Asked for the oldest rows of all its
# slots at once, the planner could not walk one index in id order; with statistics from
# when few rows were pending it read every pending row of the slots and sorted them, a
# cost that grew with the backlog: 50 ms a batch behind 100,000 rows against 16 ms now.)
ASSIGN = """
WITH pending AS (
    SELECT id, channel, type, data::text AS data, {commit_time} AS committed_at, trace_context
    FROM outbox
    WHERE id IN (
        SELECT oldest.id FROM unnest($4::smallint[]) AS wanted(slot)
        CROSS JOIN LATERAL (
            SELECT id FROM outbox
            WHERE position IS NULL AND slot = wanted.slot
            ORDER BY id LIMIT $1
        ) oldest
        ORDER BY oldest.id LIMIT $1
    )
    ORDER BY id
), guard AS (
    SELECT generation FROM relay_config
    WHERE generation = $3 AND EXISTS (SELECT FROM pending) FOR SHARE
), reserved AS (
    SELECT array_agg(position ORDER BY position) AS positions
    FROM (SELECT nextval('outbox_position_seq') AS position FROM pending
          WHERE EXISTS (SELECT FROM guard)) drawn
), numbered AS (
    SELECT pending.*, reserved.positions[row_number() OVER (ORDER BY id)] AS position
    FROM pending, reserved WHERE reserved.positions IS NOT NULL
), chained AS (
    SELECT numbered.*,
           coalesce(lag(numbered.position) OVER (PARTITION BY numbered.channel
                                                 ORDER BY numbered.position),
                    heads.position, 0) AS prev
    FROM numbered LEFT JOIN channel_heads heads ON heads.channel = numbered.channel
), assigned AS (
    UPDATE outbox SET position = chained.position, prev = chained.prev,
                      committed_at = chained.committed_at
    FROM chained WHERE outbox.id = chained.id
), new_heads AS (
    INSERT INTO channel_heads (channel, position)
    SELECT channel, max(position) FROM numbered GROUP BY channel
    ON CONFLICT (channel) DO UPDATE SET position = excluded.position
), state AS (
    UPDATE relay_partitions SET published_through = $2
    WHERE generation = $3 AND partition = $5 AND EXISTS (SELECT FROM numbered)
)
SELECT channel, type, data, committed_at, position, prev, trace_context
FROM chained ORDER BY position
"""
# The leader's own session. Planning ASSIGN takes longer than running it, so its statements
# are planned once (a generic plan) and kept PLAN_LIFETIME_S: then they are prepared and
# planned again, for the tables as they are now. A plan kept for good would be the one made
# when the leader started, perhaps on an outbox that was empty (a new or emptied database):
# such a plan joins every outbox row to every row of the batch, until the next ANALYZE.
LEADER_SESSION = "SET statement_timeout = '30s'; SET plan_cache_mode = force_generic_plan"
PLAN_LIFETIME_S = 1  # seconds (asyncpg counts them in whole seconds)
# The writing transaction's commit time needs track_commit_timestamp; without it the
# insert time is the best there is. (Read before the UPDATE above replaces xmin.)
COMMIT_TIME = "coalesce(pg_xact_commit_timestamp(xmin), created_at)"
INSERT_TIME = "created_at"

# The partition's events after ``published_through``: what its last leader may not have
# published.
TAIL = """
SELECT channel, position, prev, type, data::text AS data, committed_at, trace_context
FROM outbox
WHERE position > $1 AND slot = ANY($2::smallint[])
ORDER BY position LIMIT $3
"""
# A partition's row, made when missing (a new database, or one emptied by hand).
PUBLISHED_THROUGH = """
WITH made AS (
    INSERT INTO relay_partitions (generation, partition, published_through)
    VALUES ($1, $2, 0) ON CONFLICT DO NOTHING
)
SELECT coalesce((SELECT published_through FROM relay_partitions
                 WHERE generation = $1 AND partition = $2), 0)
"""
# An idle leader has published everything of its partition it numbered, and any later row
# of the partition gets a larger position: it records that, so that a change of the count
# does not publish again everything since this partition last had work.
CAUGHT_UP = """
UPDATE relay_partitions SET published_through = relay_last_position()
WHERE generation = $1 AND partition = $2 AND published_through < relay_last_position()
RETURNING published_through
"""
# Instances with a relay connected to this database (each names its lock sessions).
RELAY_INSTANCES = """
SELECT count(DISTINCT application_name) FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'jangteo-relay:%'
"""
# Pruning removes a prefix of positions: everything up to the newest position committed
# before the cutoff. Commit times do not follow positions (a row that commits late is
# numbered late), so deleting by time alone could drop an offset and keep an earlier one,
# and a resume at the edge would see a hole instead of resync.
PRUNE = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE position <= (SELECT max(position) FROM outbox
                       WHERE position IS NOT NULL
                         AND committed_at < now() - make_interval(secs => $1))
    ORDER BY position
    LIMIT $2)
"""


# Where every partition of a new count starts: the lowest published_through of the old
# partitions that have numbered something after it (their newest channel head says so;
# the others hold nothing back), else the last position there is. ($1: the old
# generation, $2: the old count.)
_FLOOR = """
SELECT coalesce(min(coalesce(old.published_through, 0)), relay_last_position())
FROM generate_series(0, $2 - 1) AS k(partition)
LEFT JOIN relay_partitions old ON old.generation = $1 AND old.partition = k.partition
WHERE EXISTS (SELECT FROM channel_heads heads
              WHERE heads.position > coalesce(old.published_through, 0)
                AND relay_partition(heads.channel, $2) = k.partition)
"""


def partition_slots(partitions: int, partition: int) -> list[int]:
    """The slots of one partition (relay_partition() in SQL: slot % partitions)."""
    return list(range(partition, SLOTS, partitions))


def slot_partition(slot: int, partitions: int) -> int:
    """The partition a slot belongs to (the inverse of ``partition_slots``)."""
    return slot % partitions


def valid_count(partitions: int) -> bool:
    return 1 <= partitions <= MAX_PARTITIONS and SLOTS % partitions == 0


@dataclass(frozen=True, slots=True)
class RelayConfig:
    partitions: int
    generation: int


async def read_config(
    conn: asyncpg.Connection,
    timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's per-call timeout
) -> RelayConfig:
    query = "SELECT partitions, generation FROM relay_config"
    row = await conn.fetchrow(query, timeout=timeout)
    if row is None:  # a database emptied by hand: start over with one partition
        await conn.execute(
            "INSERT INTO relay_config DEFAULT VALUES ON CONFLICT DO NOTHING", timeout=timeout
        )
        row = await conn.fetchrow(query, timeout=timeout)
        assert row is not None
    return RelayConfig(row["partitions"], row["generation"])


async def set_partitions(conn: asyncpg.Connection, partitions: int) -> RelayConfig:
    """Change the partition count (a no-op when it is already ``partitions``).

    The UPDATE waits for every ASSIGN in flight (they hold relay_config FOR SHARE), and
    every later one of the old count finds the generation moved on and assigns nothing.
    Each new partition starts from the lowest published_through of the old ones that
    numbered something after it, so its first leader publishes again whatever the old
    leaders may not have published, and no more.
    """
    if not valid_count(partitions):
        raise ValueError(f"the partition count must divide {SLOTS}: 1, 2, 4, 8, 16, 32 or 64")
    async with conn.transaction():
        await read_config(conn)  # a database emptied by hand starts over, as relays do
        current = await conn.fetchrow("SELECT partitions, generation FROM relay_config FOR UPDATE")
        assert current is not None
        if current["partitions"] == partitions:
            return RelayConfig(partitions, current["generation"])
        generation = current["generation"] + 1
        await conn.execute(
            "UPDATE relay_config SET partitions = $1, generation = $2", partitions, generation
        )
        floor = await conn.fetchval(_FLOOR, generation - 1, current["partitions"])
        await conn.execute(
            "INSERT INTO relay_partitions (generation, partition, published_through)"
            " SELECT $1, partition, $3 FROM generate_series(0, $2 - 1) AS partition",
            generation,
            partitions,
            floor,
        )
        await conn.execute("DELETE FROM relay_partitions WHERE generation < $1 - 1", generation)
        await conn.execute(f"NOTIFY {CONFIG_NOTIFY_CHANNEL}")
    return RelayConfig(partitions, generation)
