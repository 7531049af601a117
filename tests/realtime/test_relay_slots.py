"""Slots: every channel hashes to one of 64 slots, a partition is a set of whole slots,
and a partition's leader is woken by writes to its own slots only."""

from __future__ import annotations

import asyncio
import functools
import shutil
from pathlib import Path

import asyncpg
import pytest

from db.migrate import MIGRATIONS_DIR, migrate
from db.pool import create_pool
from db.queries.outbox import SLOTS, Event, channel_slot, insert_events
from db.queries.relay import partition_slots, read_config, set_partitions
from server.settings import Settings, SettingsError
from tests.realtime.relay_support import Relays, Running, until


def published(running: Running, count: int) -> bool:
    return len(running.sent) == count


CHANNELS = [f"listing:{n}" for n in range(1, 200)] + ["chat:방-7", "user:ü", "feed:0:0", ""]


async def test_python_and_the_database_agree_on_every_channels_slot_and_partition(
    db: asyncpg.Connection,
) -> None:
    rows = await db.fetch(
        "SELECT channel, relay_slot(channel) AS slot,"
        " array_agg(relay_partition(channel, n) ORDER BY n) AS partitions"
        " FROM unnest($1::text[]) channel, unnest('{1,2,4,8,16,32,64}'::int[]) n"
        " GROUP BY channel",
        CHANNELS,
    )
    assert len(rows) == len(CHANNELS)
    for row in rows:
        assert row["slot"] == channel_slot(row["channel"])
        assert row["partitions"] == [row["slot"] % n for n in (1, 2, 4, 8, 16, 32, 64)]
        for n in (1, 2, 4, 8, 16, 32, 64):
            assert row["slot"] in partition_slots(n, row["slot"] % n)
    assert len({channel_slot(channel) for channel in CHANNELS}) > SLOTS / 2  # spread
    # Written rows carry their slot.
    await db.execute("INSERT INTO outbox (channel, type, data) VALUES ('chat:방-7', 't', '{}')")
    stored = await db.fetchval("SELECT slot FROM outbox WHERE channel = 'chat:방-7'")
    assert stored == channel_slot("chat:방-7")


def test_the_slots_of_a_count_are_shared_out_whole_and_once() -> None:
    for count in (1, 2, 4, 8, 16, 32, 64):
        shares = [partition_slots(count, partition) for partition in range(count)]
        assert sorted(slot for share in shares for slot in share) == list(range(SLOTS))
        assert {len(share) for share in shares} == {SLOTS // count}


async def test_a_count_that_does_not_divide_64_is_refused_and_changes_nothing(
    db: asyncpg.Connection,
) -> None:
    before = await read_config(db)
    for count in (0, 3, 12, 65, 128):
        with pytest.raises(ValueError, match="divide 64"):
            await set_partitions(db, count)
    assert await read_config(db) == before
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE relay_config SET partitions = 6")
    with pytest.raises(SettingsError, match="JANGTEO_RELAY_PARTITIONS must be 0"):
        Settings.from_env({"JANGTEO_RELAY_PARTITIONS": "3"})
    assert Settings.from_env({"JANGTEO_RELAY_PARTITIONS": "8"}).relay_partitions == 8


async def test_the_slot_migration_refuses_a_database_whose_count_does_not_divide_64(
    empty_database: str,
    tmp_path: Path,
) -> None:
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0007":
            shutil.copy(path, before)
    await migrate(empty_database, before)
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute("UPDATE relay_config SET partitions = 3")
        with pytest.raises(asyncpg.RaiseError, match="must divide 64"):
            await migrate(empty_database)
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 6
        await conn.execute("UPDATE relay_config SET partitions = 4")
        assert await migrate(empty_database) == [
            path.name for path in sorted(MIGRATIONS_DIR.glob("*.sql")) if path.name >= "0007"
        ]
        assert await conn.fetchval("SELECT partitions FROM relay_config") == 4
    finally:
        await conn.close()


async def test_each_leader_is_woken_by_writes_to_its_own_slots(
    relays: Relays, db: asyncpg.Connection, database_url: str
) -> None:
    """Four partitions under one relay whose poll never fires within the test: events of
    every partition arrive, written by the app's own path (the wake-up after the commit,
    per slot) and by a plain connection (the outbox's trigger, per slot), and a leader
    woken for another partition's slots assigns nothing of theirs."""
    await set_partitions(db, 4)
    running = relays.start()
    await until(lambda: len(running.relay.leading) == 4)
    by_partition = {channel_slot(channel) % 4: channel for channel in CHANNELS}
    assert sorted(by_partition) == [0, 1, 2, 3]

    pool = await create_pool(
        database_url,
        min_size=1,
        max_size=1,
        connect_timeout=10,
        acquire_timeout=10,
        statement_timeout=10,
    )
    try:
        for partition, channel in sorted(by_partition.items()):
            async with pool.acquire() as conn, conn.transaction():
                await insert_events(conn, [Event(channel, "listing.updated", {"n": partition})])
            await until(functools.partial(published, running, partition + 1), timeout=10)
            assert running.sent[-1].channel == channel
    finally:
        await pool.close()
    for partition, channel in sorted(by_partition.items()):
        await db.execute(
            "INSERT INTO outbox (channel, type, data) VALUES ($1, 'listing.updated', $2::jsonb)",
            channel,
            f'{{"n": {4 + partition}}}',
        )
        await until(functools.partial(published, running, partition + 5), timeout=10)
        assert running.sent[-1].channel == channel
    await asyncio.sleep(0.2)
    assert sorted(message.n for message in running.sent) == list(range(8))
