"""Relay leadership follows the ability to publish, and a silent leader loses its lock.

Against the real test PostgreSQL, each relay publishing to a bus of its own (the helpers
of test_relay). A relay's broker that is disconnected stands for an instance cut off
from Redis; one that fails to publish, for a Redis that refuses or times out.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from db.queries.relay import RELAY_LOCK_CLASS
from realtime import relay as relay_module
from realtime.relay import RelaySettings
from tests.realtime.relay_support import (
    Relays,
    check_chain,
    insert,
    outbox,
    until,
    until_async,
)

STEP_DOWN = 0.3


async def lock_holder(db: asyncpg.Connection) -> int | None:
    """The server pid holding the leader lock, if any."""
    pid = await db.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = $1 AND objid = 0 AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        RELAY_LOCK_CLASS,
    )
    return pid if isinstance(pid, int) else None


async def test_a_leader_that_cannot_publish_steps_down_for_one_that_can(
    relays: Relays, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "RETRY_DELAY_S", 0.01)
    leader = relays.start(step_down=STEP_DOWN)
    await until(lambda: leader.relay.is_leader)
    follower = relays.start(step_down=STEP_DOWN)
    # The leader's host loses Redis: its publishes fail and its subscription is down.
    leader.broker.fail_publish = True
    leader.broker.disconnect()
    for n in range(3):
        await insert(db, "listing:1", n)
    await until(lambda: follower.published_ns() == {0, 1, 2})
    assert follower.relay.is_leader and not leader.relay.is_leader
    assert leader.metric("jangteo_relay_step_downs_total") >= 1
    assert leader.bus.published == []
    check_chain(follower.sent)  # the tail the leader numbered is republished in order
    # It does not compete again while it cannot reach Redis, and once it can, it waits.
    await insert(db, "listing:1", 3)
    await until(lambda: 3 in follower.published_ns())
    leader.broker.fail_publish = False
    leader.broker.reconnect()
    await relays.stop(follower)
    await until(lambda: leader.relay.is_leader)
    await insert(db, "listing:1", 4)
    await until(lambda: 4 in leader.published_ns())
    # After the republished tail, if any (from where the follower last recorded it).
    assert [(m.offset, m.prev) for m in leader.sent][-1] == (5, 4)
    assert [m.offset for m in leader.sent] == list(range(leader.sent[0].offset, 6))


async def test_a_relay_that_cannot_reach_redis_numbers_events_until_one_that_can_comes(
    relays: Relays, db: asyncpg.Connection
) -> None:
    """Nobody can publish (Redis is down): the relay that finds the lock free numbers the
    committed rows, so that instances reading the log still get them; it never waits in
    line, and hands over as soon as a relay that can publish waits for the lock."""

    async def lock_free() -> bool:
        return await lock_holder(db) is None

    await until_async(lock_free)  # a relay of an earlier test may still be exiting
    cut_off = relays.start(step_down=STEP_DOWN, poll_interval=0.1)
    cut_off.broker.disconnect()  # before its task first runs
    cut_off.broker.fail_publish = True
    await until(lambda: cut_off.relay.is_leader)
    for n in range(3):
        await insert(db, "listing:1", n)

    async def numbered() -> bool:
        return all(row["position"] is not None for row in await outbox(db))

    await until_async(numbered)
    assert cut_off.bus.published == []
    assert await db.fetchval("SELECT published_through FROM relay_partitions") == 0

    healthy = relays.start(step_down=STEP_DOWN)
    await until(lambda: healthy.published_ns() == {0, 1, 2})  # the tail, once, in order
    check_chain(healthy.sent)
    assert healthy.relay.is_leader and not cut_off.relay.is_leader
    assert cut_off.metric("jangteo_relay_step_downs_total") >= 1
    # It does not take the lock back while the healthy one holds it.
    for _ in range(5):
        await asyncio.sleep(0.1)
        connection = healthy.relay.leaders[0].connection
        assert connection is not None and await lock_holder(db) == connection.get_server_pid()


async def test_a_silent_leader_loses_the_lock_after_the_lock_timeout(
    relays: Relays, db: asyncpg.Connection, database_url: str
) -> None:
    """A leader frozen after taking the lock (a paused process) is idle on its session:
    the server ends the session after the lock timeout, and with it the lock."""
    settings = RelaySettings(database_url, lock_timeout=2.0)
    frozen = await asyncpg.connect(database_url, server_settings=settings.lock_session_settings())
    try:
        await frozen.execute("SELECT pg_advisory_lock($1, 0)", RELAY_LOCK_CLASS)
        assert await lock_holder(db) == frozen.get_server_pid()
        successor = relays.start()
        await insert(db, "listing:1", 0)
        await until(lambda: successor.published_ns() == {0})
        assert await lock_holder(db) != frozen.get_server_pid()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await frozen.fetchval("SELECT 1")  # its session was ended by the server
    finally:
        frozen.terminate()


async def test_the_lock_session_detects_a_dead_peer_on_both_sides(database_url: str) -> None:
    """Keepalives and tcp_user_timeout within the lock timeout, on the server's side."""
    settings = RelaySettings(database_url, lock_timeout=4.0)
    conn = await asyncpg.connect(database_url, server_settings=settings.lock_session_settings())
    try:
        shown = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in (
                "idle_session_timeout",
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
            )
        }
    finally:
        await conn.close()
    assert shown["idle_session_timeout"] == "4s"
    assert shown["tcp_user_timeout"] == "4000"  # milliseconds
    idle = int(shown["tcp_keepalives_idle"])
    interval = int(shown["tcp_keepalives_interval"])
    count = int(shown["tcp_keepalives_count"])
    assert 0 < idle + interval * count <= 4


async def test_pruning_removes_a_prefix_of_positions(
    relays: Relays, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commit times do not follow positions: a late commit is numbered late. Pruning by
    time alone would delete position 3 and keep 1 and 2 (a hole a resume cannot see)."""
    monkeypatch.setattr(relay_module, "PRUNE_EVERY_S", 0.0)
    running = relays.start(retention_seconds=3600)
    for n in range(5):
        await insert(db, "listing:1", n)
    await until(lambda: running.published_ns() == set(range(5)))
    await db.execute(
        "UPDATE outbox SET committed_at = now() - interval '2 hours' WHERE position = 3"
    )
    await insert(db, "listing:1", 5)  # wakes the relay: publish, then prune

    async def pruned() -> bool:
        return [row["position"] for row in await outbox(db)] == [4, 5, 6]

    await until_async(pruned)


async def test_a_relay_in_line_holds_back_no_cleanup(
    relays: Relays, db: asyncpg.Connection
) -> None:
    """While a relay waits for the lock, dead row versions anywhere in the database can be
    removed: it holds no snapshot (a statement waiting in pg_advisory_lock would keep one
    for as long as the leader lives, and with it every dead version of a hot row)."""
    leader = relays.start()
    await until(lambda: leader.relay.is_leader)
    follower = relays.start()
    await until(lambda: 0 in follower.relay.leaders)
    await until(lambda: follower.relay.leaders[0].connection is not None)
    await asyncio.sleep(0.5)  # in line, asking for the lock
    assert not follower.relay.is_leader
    # Not a temporary table: only its own session's snapshots hold those back.
    await db.execute("DROP TABLE IF EXISTS hot; CREATE TABLE hot (id int PRIMARY KEY, n int)")
    await db.execute("INSERT INTO hot VALUES (1, 0)")
    for _ in range(100):
        await db.execute("UPDATE hot SET n = n + 1")
    kept: list[str] = []
    db.add_log_listener(lambda _, message: kept.append(str(message)))
    deadline = asyncio.get_running_loop().time() + 5.0
    while True:  # other sessions of this database may hold a snapshot for a moment
        kept.clear()
        await db.execute("VACUUM (VERBOSE) hot")
        if any(" 0 are dead but not yet removable" in line for line in kept):
            break
        assert asyncio.get_running_loop().time() < deadline, kept
        await asyncio.sleep(0.2)
    assert not follower.relay.is_leader
    await db.execute("DROP TABLE hot")
