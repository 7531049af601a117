"""The outbox relay against the real test PostgreSQL, publishing to an in-memory bus.

Each relay gets a bus of its own, so a test can tell which relay published what. Every
wait is on a condition (rows in the database, messages on a bus, leadership); TIMEOUT
only turns a hang into a failure. The relays poll rarely (POLL), so a test that passes
relies on the NOTIFY wake-up, as in production.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from realtime import relay as relay_module
from realtime.broker import decode_message
from realtime.log import PostgresEventLog
from tests.realtime.relay_support import (
    Relays,
    check_chain,
    insert,
    insert_many,
    outbox,
    relays_in_line,
    until,
    until_async,
)


async def test_positions_increase_and_prev_chains_per_channel(
    relays: Relays, db: asyncpg.Connection
) -> None:
    running = relays.start(batch_size=4)
    await until(lambda: running.relay.is_leader)
    channels = ["listing:1", "listing:2", "feed:seoul-mapo"]
    n = 0
    for batch in range(6):
        rows = []
        for _ in range(batch + 1):  # transactions of 1 to 6 rows
            rows.append((channels[n % len(channels) if n % 5 else 0], n))
            n += 1
        await insert_many(db, rows)
    await until(lambda: len(running.sent) >= n)
    messages = running.sent
    assert sorted(m.n for m in messages) == list(range(n))  # each once
    check_chain(messages)
    assert [m.offset for m in messages] == list(range(1, n + 1))  # one leader, no gaps here

    stored = {row["position"]: row for row in await outbox(db)}
    for message in messages:
        row = stored[message.offset]
        assert (row["channel"], row["prev"], int(row["n"])) == (
            message.channel,
            message.prev,
            message.n,
        )
        assert row["committed_at"] is not None and row["committed_at"] >= row["created_at"]
        assert message.event["ts"] == int(row["committed_at"].timestamp() * 1000)
        assert message.event["type"] == "listing.updated"
        assert message.event["data"] == {"n": message.n, "text": "é"}
    # One transaction, one commit time.
    by_txn = await db.fetch(
        "SELECT txid, count(DISTINCT committed_at) AS times FROM outbox GROUP BY txid"
    )
    assert len(by_txn) == 6 and all(row["times"] == 1 for row in by_txn)

    heads = {row["channel"]: row["position"] for row in await db.fetch("TABLE channel_heads")}
    expected_heads: dict[str, int] = {}
    for message in messages:
        expected_heads[message.channel] = message.offset
    assert heads == expected_heads
    assert await db.fetchval("SELECT relay_last_position()") == n
    assert running.metric("jangteo_relay_events_published_total") == n
    assert running.metric("jangteo_relay_leader") == 1
    await relays.stop(running)
    assert running.task.done() and not running.task.cancelled()
    assert running.metric("jangteo_relay_leader") == 0
    assert not running.relay.is_leader


async def test_a_row_committing_after_a_later_one_is_published_gets_a_larger_position(
    relays: Relays, db: asyncpg.Connection, database_url: str
) -> None:
    running = relays.start()
    slow = await asyncpg.connect(database_url)
    try:
        first = await insert(db, "listing:1", 0)
        await until(lambda: running.published_ns() == {0})
        txn = slow.transaction()
        await txn.start()
        late_id = await insert(slow, "listing:1", 1)  # a smaller id, committing late
        early_id = await insert(db, "listing:1", 2)
        assert first < late_id < early_id
        await until(lambda: running.published_ns() == {0, 2})
        await txn.commit()
        await until(lambda: running.published_ns() == {0, 1, 2})
    finally:
        await slow.close()
    messages = running.sent
    assert [m.n for m in messages] == [0, 2, 1]
    check_chain(messages)
    positions = {int(row["n"]): row["position"] for row in await outbox(db)}
    assert positions[1] > positions[2] > positions[0]


async def test_positions_follow_id_order_not_the_writing_transactions_start(
    relays: Relays, db: asyncpg.Connection, database_url: str
) -> None:
    """Purchases queued on one row lock: the buyer who began first may write last.

    Numbering by the transactions' start (``created_at``) would put the later write first
    and undo the earlier one on screen (stock back up, "sold" undone).
    """
    queued, ahead = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        queued_txn = queued.transaction()
        await queued_txn.start()
        queued_start = await queued.fetchval("SELECT now()")  # fixed for the transaction
        ahead_txn = ahead.transaction()
        await ahead_txn.start()
        ahead_start = await ahead.fetchval("SELECT now()")
        assert ahead_start > queued_start
        ahead_id = await insert(ahead, "listing:1", 0)
        await ahead_txn.commit()
        queued_id = await insert(queued, "listing:1", 1)
        await queued_txn.commit()
    finally:
        await queued.close()
        await ahead.close()
    rows = {int(row["n"]): row for row in await outbox(db)}
    assert (rows[0]["id"], rows[1]["id"]) == (ahead_id, queued_id)
    assert ahead_id < queued_id and rows[1]["created_at"] < rows[0]["created_at"]
    assert all(row["position"] is None for row in rows.values())  # both wait for the relay

    running = relays.start()
    await until(lambda: running.published_ns() == {0, 1})
    messages = running.sent
    assert [m.n for m in messages] == [0, 1], "published in id order"
    check_chain(messages)
    assert [(m.offset, m.prev) for m in messages] == [(1, 0), (2, 1)]
    stored = {int(row["n"]): (row["position"], row["prev"]) for row in await outbox(db)}
    assert stored == {0: (1, 0), 1: (2, 1)}
    head = await db.fetchval("SELECT position FROM channel_heads WHERE channel = 'listing:1'")
    assert head == 2


async def test_an_idle_transaction_holding_an_xid_does_not_hold_back_others(
    relays: Relays, db: asyncpg.Connection, database_url: str
) -> None:
    idle = await asyncpg.connect(database_url)
    try:
        txn = idle.transaction()
        await txn.start()
        await idle.fetchval("SELECT pg_current_xact_id()")  # an xid below everything after it
        await insert(idle, "listing:9", 99)  # and an uncommitted outbox row
        running = relays.start()
        for n in range(5):
            await insert(db, f"listing:{n % 2}", n)
        await until(lambda: running.published_ns() == set(range(5)))
        check_chain(running.sent)
        await txn.rollback()
    finally:
        await idle.close()
    await insert(db, "listing:0", 5)
    await until(lambda: 5 in running.published_ns())
    assert 99 not in running.published_ns()
    check_chain(running.sent)


def lock_waiters(db: asyncpg.Connection, count: int) -> Callable[[], Awaitable[bool]]:
    """A check: exactly ``count`` relays wait in line for the leader lock of this database."""

    async def check() -> bool:
        return await relays_in_line(db) == count

    return check


async def test_two_relays_one_leads_and_hands_over_without_double_positions(
    relays: Relays, db: asyncpg.Connection
) -> None:
    first = relays.start(batch_size=3)
    await until(lambda: first.relay.is_leader)
    second = relays.start(batch_size=3)

    await until_async(lock_waiters(db, 1))
    assert not second.relay.is_leader
    assert (first.metric("jangteo_relay_leader"), second.metric("jangteo_relay_leader")) == (1, 0)

    for n in range(7):
        await insert(db, f"listing:{n % 3}", n)
    await until(lambda: first.published_ns() == set(range(7)))
    assert second.sent == []

    await relays.stop(first)
    await until(lambda: second.relay.is_leader)
    assert (first.metric("jangteo_relay_leader"), second.metric("jangteo_relay_leader")) == (0, 1)
    assert not first.relay.is_leader
    for n in range(7, 14):
        await insert(db, f"listing:{n % 3}", n)
    await until(lambda: set(range(7, 14)) <= second.published_ns())
    assert first.published_ns() == set(range(7))

    everything = first.sent + second.sent
    offsets_of: dict[int, set[int]] = {}
    payload_of: dict[int, set[bytes]] = {}
    for message in everything:
        offsets_of.setdefault(message.n, set()).add(message.offset)
        payload_of.setdefault(message.offset, set()).add(message.payload)
    assert all(len(offsets) == 1 for offsets in offsets_of.values()), offsets_of
    assert all(len(payloads) == 1 for payloads in payload_of.values())
    assert sorted(offsets_of) == list(range(14))
    check_chain(first.sent)
    # The new leader may publish its predecessor's tail again (dropped downstream), then
    # continues the chain.
    fresh = [m for m in second.sent if m.n >= 7]
    repeated = [m for m in second.sent if m.n < 7]
    assert second.sent == repeated + fresh
    check_chain([m for m in first.sent if m.offset < fresh[0].offset] + fresh)
    stored = {int(row["n"]): row["position"] for row in await outbox(db)}
    assert stored == {n: next(iter(offsets)) for n, offsets in offsets_of.items()}


async def test_stopping_a_follower_leaves_the_leader_leading(
    relays: Relays, db: asyncpg.Connection
) -> None:
    leader = relays.start()
    await until(lambda: leader.relay.is_leader)
    follower = relays.start()

    await until_async(lock_waiters(db, 1))
    await relays.stop(follower)  # it only waited on the lock: it ends at once
    assert follower.task.done() and not follower.relay.is_leader
    await until_async(lock_waiters(db, 0))
    assert leader.relay.is_leader
    await insert(db, "listing:1", 0)
    await until(lambda: leader.published_ns() == {0})
    assert follower.sent == []


async def test_a_new_leader_republishes_the_tail_after_published_through(
    relays: Relays, db: asyncpg.Connection
) -> None:
    first = relays.start()
    for n in range(6):
        await insert(db, f"listing:{n % 2}", n)
    await until(lambda: first.published_ns() == set(range(6)))
    await relays.stop(first)
    original = {m.offset: m.payload for m in first.sent}
    assert sorted(original) == [1, 2, 3, 4, 5, 6]

    # As if the leader died after committing positions 3..6 but before publishing them.
    await db.execute("UPDATE relay_partitions SET published_through = 2")
    second = relays.start(batch_size=3)  # the tail takes two batches
    await until(lambda: len(second.sent) >= 4)
    assert [(m.offset, m.payload) for m in second.sent] == [
        (offset, original[offset]) for offset in (3, 4, 5, 6)
    ]
    assert second.metric("jangteo_relay_events_republished_total") == 4
    assert second.metric("jangteo_relay_events_published_total") == 0

    await insert(db, "listing:1", 6)
    await until(lambda: 6 in second.published_ns())
    last = second.sent[-1]
    assert (last.offset, last.prev) == (7, 6)  # listing:1 had 2, 4, 6
    assert len(second.sent) == 5


async def test_a_failing_broker_keeps_events_until_it_recovers(
    relays: Relays, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "RETRY_DELAY_S", 0.01)
    running = relays.start()
    await until(lambda: running.relay.is_leader)
    running.broker.fail_publish = True
    await insert_many(db, [(f"listing:{n % 2}", n) for n in range(3)])  # one batch

    async def assigned() -> bool:
        return all(row["position"] is not None for row in await outbox(db))

    await until_async(assigned)  # positions committed, but nothing reached the bus
    await insert(db, "listing:0", 3)  # waits in the outbox or gets a position: either is fine
    failures = running.metric("jangteo_relay_publish_failures_total")
    await until(lambda: running.metric("jangteo_relay_publish_failures_total") >= failures + 2)
    assert running.bus.published == []
    assert running.relay.leaders[0].published_through == 0
    running.broker.fail_publish = False
    await until(lambda: running.published_ns() == {0, 1, 2, 3})
    messages = running.sent
    assert [m.offset for m in messages] == [1, 2, 3, 4]  # each once, in order
    check_chain(messages)
    assert running.relay.leaders[0].published_through == 4
    await insert(db, "listing:1", 4)
    await until(lambda: 4 in running.published_ns())
    check_chain(running.sent)
    assert len(running.sent) == 5


async def test_stopping_while_the_broker_fails_hands_over_promptly(
    relays: Relays, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping cannot publish; it must still end by itself (the next leader republishes)."""
    monkeypatch.setattr(relay_module, "RETRY_DELAY_S", 0.01)
    running = relays.start()
    await until(lambda: running.relay.is_leader)
    running.broker.fail_publish = True
    await insert(db, "listing:1", 0)
    await until(lambda: running.metric("jangteo_relay_publish_failures_total") >= 1)
    await relays.stop(running)
    assert running.task.done() and not running.task.cancelled()  # not cut off by the timeout
    assert running.bus.published == []

    successor = relays.start()
    await until(lambda: successor.published_ns() == {0})
    assert [(m.offset, m.prev) for m in successor.sent] == [(1, 0)]


async def test_pruning_deletes_events_older_than_the_retention(
    relays: Relays, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "PRUNE_EVERY_S", 0.0)
    running = relays.start(retention_seconds=3600)
    for n in range(4):
        await insert(db, "listing:1", n)
    await until(lambda: running.published_ns() == set(range(4)))
    assert running.metric("jangteo_relay_events_pruned_total") == 0
    await db.execute(
        "UPDATE outbox SET committed_at = now() - interval '2 hours' WHERE data->>'n' IN ('0', '1')"
    )
    await db.execute(
        "UPDATE outbox SET committed_at = now() - interval '59 minutes' WHERE data->>'n' = '2'"
    )
    await insert(db, "listing:1", 4)  # wakes the relay: publish, then prune

    async def pruned() -> bool:
        return [int(row["n"]) for row in await outbox(db)] == [2, 3, 4]

    await until_async(pruned)
    await until(lambda: running.metric("jangteo_relay_events_pruned_total") == 2)
    # The 1 s poll may prune before row 4 is relayed: the head moves once it is published.
    await until(lambda: 4 in running.published_ns())
    assert await db.fetchval("SELECT position FROM channel_heads WHERE channel = 'listing:1'") == 5
    await insert(db, "listing:1", 5)
    await until(lambda: 5 in running.published_ns())
    last = running.sent[-1]
    assert (last.offset, last.prev) == (6, 5)


async def test_the_event_log_reads_back_the_published_bytes(
    relays: Relays, db: asyncpg.Connection, database_url: str
) -> None:
    """A gap fill or a replay sends exactly the frame that went out live."""
    running = relays.start()
    for n in range(8):
        await insert(db, f"listing:{n % 2}", n)
    await until(lambda: running.published_ns() == set(range(8)))
    live = {m.offset: m for m in running.sent}
    ours = [m for m in running.sent if m.channel == "listing:1"]
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        log = PostgresEventLog(pool)
        assert await log.head("listing:1") == ours[-1].offset
        assert await log.head("listing:404") == 0
        for event in await log.after("listing:0", 0, 100):
            assert decode_message(live[event.offset].payload) == (
                event.offset,
                event.prev,
                event.json,
            )
        offsets = [m.offset for m in ours]
        replayed = await log.read_back("listing:1", offsets[0], offsets[-1], 0, 100)
        assert [(e.offset, e.prev, e.json) for e in replayed] == [
            decode_message(m.payload) for m in ours[1:]
        ]
        assert [e.offset for e in await log.after("listing:1", ours[1].offset, 2)] == [
            m.offset for m in ours[2:4]
        ]

        async def offsets_read(since: int, upto: int, keep: int, limit: int = 100) -> list[int]:
            events = await log.read_back("listing:1", since, upto, keep, limit)
            return [event.offset for event in events]

        assert await offsets_read(offsets[-1], offsets[-1], 0) == []
        assert await offsets_read(offsets[1], offsets[-2], 0) == offsets[2:-1]
        # Also the newest `keep` up to `upto`, when they reach further back than `since`.
        assert await offsets_read(offsets[2], offsets[-1], 3) == offsets[-3:]
        assert await offsets_read(offsets[2], offsets[-1], 2) == offsets[2:]
        assert await offsets_read(offsets[2], offsets[-2], 3) == offsets[:-1]
        assert await offsets_read(0, offsets[-1], 1) == offsets
        assert await offsets_read(0, offsets[-1], 0, limit=2) == offsets[:2]
        assert await log.last_published() == max(live)
        await db.execute("DELETE FROM outbox WHERE position <= $1", ours[1].offset)
        assert await offsets_read(0, offsets[-1], 0) == offsets[2:]  # pruned
    finally:
        await pool.close()
