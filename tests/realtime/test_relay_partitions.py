"""Relay partitions against the real test PostgreSQL, each relay publishing to a bus of
its own (the helpers of test_relay).

Leadership spreads over relays, every committed row gets one position and is published,
and changing the partition count during traffic loses nothing.

What "reorders nothing" means here: after a takeover or a change of the count, a new
leader publishes its predecessors' tail again, so one offset may be sent twice, and a
late copy from an old leader may arrive after newer offsets (subscribers drop offsets at
or below the last they delivered). What must hold is that the *first* sending of each
offset, in the order messages were sent across every relay, follows the channel's chain:
a subscriber that saw nothing but the first copies would need no gap fill. Every memory
bus delivers synchronously, so recording each bus's deliveries in one list gives that
order across relays (``SendLog``). The DB side is checked as well: one position per row,
and each row's ``prev`` is its channel's previous position.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from db.queries.relay import RELAY_LOCK_CLASS, RelayConfig, set_partitions
from realtime import relay as relay_module
from realtime.broker_memory import MemoryBus
from tests.realtime.relay_support import (
    POLL,
    Relays,
    Running,
    Sent,
    check_chain,
    insert_many,
    outbox,
    relays_in_line,
    sent,
    until,
    until_async,
)

CHANNELS = [f"listing:{n}" for n in range(1, 41)]
TIMEOUT_S = 10.0
# Well under the poll (POLL): a switch this fast came from NOTIFY.
SWITCH_TIMEOUT = POLL / 4


class SendLog:
    """Every message any of the recorded relays sent, in the order it was sent."""

    def __init__(self, relays: Relays, monkeypatch: pytest.MonkeyPatch) -> None:
        self.relays = relays
        self.monkeypatch = monkeypatch
        self.bus = MemoryBus()
        self.senders: list[int] = []  # which relay (index in ``running``) sent each message
        self.running: list[Running] = []

    def start(self, **settings: float) -> Running:
        """A relay of ``relays``, its bus recorded here too (before its task first runs)."""
        running = self.relays.start(**settings)
        index = len(self.running)
        self.running.append(running)
        deliver = running.bus.deliver

        def recorded(channel: str, payload: bytes) -> None:
            deliver(channel, payload)
            self.bus.published.append((channel, payload))
            self.senders.append(index)

        self.monkeypatch.setattr(running.bus, "deliver", recorded)
        return running

    @property
    def messages(self) -> list[Sent]:
        return sent(self.bus)

    def offsets(self) -> set[int]:
        return {message.offset for message in self.messages}


class Writer:
    """Commits events on random channels every few milliseconds until stopped: one to
    three rows a transaction, numbered ``n`` from 0."""

    def __init__(self, database_url: str, channels: list[str]) -> None:
        self.database_url = database_url
        self.channels = channels
        self.count = 0
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        rng = random.Random(11)
        numbers = itertools.count()
        conn = await asyncpg.connect(self.database_url)
        try:
            while not self.stopping.is_set():
                rows = [
                    (rng.choice(self.channels), next(numbers)) for _ in range(rng.randint(1, 3))
                ]
                await insert_many(conn, rows)
                self.count += len(rows)
                await asyncio.sleep(0.003)
        finally:
            await conn.close()

    async def advanced(self, by: int) -> None:
        """Until ``by`` more rows committed than now."""
        target = self.count + by
        await until(lambda: self.count >= target)

    async def stop(self) -> None:
        self.stopping.set()
        await self.task


async def partition_of(db: asyncpg.Connection, channels: list[str], count: int) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT channel, relay_partition(channel, $2) AS partition FROM unnest($1::text[]) channel",
        channels,
        count,
    )
    return {row["channel"]: row["partition"] for row in rows}


async def lock_holders(db: asyncpg.Connection) -> dict[int, int]:
    """Per partition, how many sessions hold its leader lock on this database."""
    rows = await db.fetch(
        "SELECT objid::int AS partition, count(*) AS holders FROM pg_locks"
        " WHERE locktype = 'advisory' AND granted AND classid = $1 AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " GROUP BY objid",
        RELAY_LOCK_CLASS,
    )
    return {row["partition"]: row["holders"] for row in rows}


def led_once_each(running: list[Running], partitions: int, share: int | None = None) -> bool:
    """Every partition led by exactly one relay (and, with ``share``, each leads that many)."""
    leading = [r.relay.leading for r in running]
    if share is not None and any(len(ours) != share for ours in leading):
        return False
    return sorted(itertools.chain.from_iterable(leading)) == list(range(partitions))


def following(running: list[Running], config: RelayConfig) -> Callable[[], bool]:
    return lambda: all(r.relay.config == config for r in running)


async def check_stored_chains(db: asyncpg.Connection) -> dict[str, list[int]]:
    """Every row has a position, each position once, and each row's prev is its channel's
    previous position (0 first); returns each channel's positions in order."""
    rows = await outbox(db)
    assert all(row["position"] is not None for row in rows)
    assert len({row["position"] for row in rows}) == len(rows)
    chains: dict[str, list[int]] = {}
    for row in sorted(rows, key=lambda row: row["position"]):
        chain = chains.setdefault(row["channel"], [])
        assert row["prev"] == (chain[-1] if chain else 0), dict(row)
        chain.append(row["position"])
    heads = {row["channel"]: row["position"] for row in await db.fetch("TABLE channel_heads")}
    assert heads == {channel: chain[-1] for channel, chain in chains.items()}
    return chains


async def check_messages_match_rows(db: asyncpg.Connection, messages: list[Sent]) -> None:
    """Each message, first copy or republished, is the row at its offset."""
    stored = {
        row["position"]: (row["channel"], row["prev"], int(row["n"])) for row in await outbox(db)
    }
    wrong = [m for m in messages if stored[m.offset] != (m.channel, m.prev, m.n)]
    assert not wrong, wrong[:5]


def first_sendings(messages: list[Sent]) -> dict[str, list[int]]:
    """Per channel, its offsets in the order each was first sent."""
    seen: set[int] = set()
    firsts: dict[str, list[int]] = {}
    for message in messages:
        if message.offset not in seen:
            seen.add(message.offset)
            firsts.setdefault(message.channel, []).append(message.offset)
    return firsts


async def test_two_relays_lead_two_of_four_partitions_each_and_publish_every_position_once(
    relays: Relays, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await set_partitions(db, 4)
    log = SendLog(relays, monkeypatch)
    # A poll of a second: each relay counts the relays there are at each poll.
    both = [log.start(poll_interval=1.0), log.start(poll_interval=1.0)]
    await until(lambda: led_once_each(both, 4, share=2))
    assert await lock_holders(db) == {0: 1, 1: 1, 2: 1, 3: 1}
    leading = [r.relay.leading for r in both]
    leader_of = {partition: index for index, ours in enumerate(leading) for partition in ours}
    assert all(r.metric("jangteo_relay_leader") == 2 for r in both)

    partitions = await partition_of(db, CHANNELS, 4)
    assert set(partitions.values()) == {0, 1, 2, 3}
    rows = [(channel, n) for n, channel in enumerate(CHANNELS * 5)]
    for start in range(0, len(rows), 10):  # transactions of ten rows over ten channels
        await insert_many(db, rows[start : start + 10])
    await until(lambda: len(log.messages) >= len(rows))

    messages = log.messages
    assert sorted(m.n for m in messages) == list(range(len(rows)))  # each once
    for channel in CHANNELS:
        ours = [m for m in messages if m.channel == channel]
        check_chain(ours)
        assert [m.n for m in ours] == [n for n, c in enumerate(CHANNELS * 5) if c == channel]
        # Published by the relay that leads the channel's partition, and by it alone.
        senders = {log.senders[i] for i, m in enumerate(messages) if m.channel == channel}
        assert senders == {leader_of[partitions[channel]]}
    chains = await check_stored_chains(db)
    assert sum(len(chain) for chain in chains.values()) == len(rows)
    await check_messages_match_rows(db, messages)
    assert [r.relay.leading for r in both] == leading  # nobody lost a partition meanwhile


async def listening_channels(leader: relay_module.PartitionLeader) -> list[str] | None:
    """What the leader's own session LISTENs to, asked on it while the leader waits; None
    when it stopped leading meanwhile."""
    while leader.is_leader and (conn := leader.connection) is not None:
        try:
            return [row[0] for row in await conn.fetch("SELECT pg_listening_channels()")]
        except asyncpg.InterfaceError:  # the leader is using it, or just closed it
            await asyncio.sleep(0.01)
    return None


async def test_leaders_listen_on_no_session_of_their_own(
    relays: Relays, db: asyncpg.Connection
) -> None:
    """PostgreSQL signals every listening session of the database at each NOTIFY, whatever
    its channel, so a session per leader would multiply the sessions woken per commit by
    the partitions: each relay hears every slot on its configuration session instead, and
    wakes its own leaders (every relay test here is woken that way: they never poll)."""
    await set_partitions(db, 4)
    both = [relays.start(), relays.start()]
    asked: dict[int, list[str]] = {}  # partition: what its leader's session listens to
    async with asyncio.timeout(TIMEOUT_S):
        while len(asked) < 4:
            for leader in [leader for r in both for leader in r.relay.leaders.values()]:
                if leader.partition not in asked and leader.is_leader:
                    channels = await listening_channels(leader)
                    if channels is not None:
                        asked[leader.partition] = channels
            await asyncio.sleep(0.01)
    assert asked == {0: [], 1: [], 2: [], 3: []}
    partitions = await partition_of(db, CHANNELS, 4)
    one_each = [next(c for c in CHANNELS if partitions[c] == p) for p in range(4)]
    await insert_many(db, [(channel, n) for n, channel in enumerate(one_each)])  # the trigger
    await until(lambda: sorted(m.n for r in both for m in sent(r.bus)) == [0, 1, 2, 3])


async def test_changing_the_count_during_traffic_loses_nothing_and_reorders_nothing(
    relays: Relays, db: asyncpg.Connection, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SendLog(relays, monkeypatch)
    both = [log.start(poll_interval=1.0, batch_size=7) for _ in range(2)]
    writer = Writer(database_url, CHANNELS[:30])
    try:
        await writer.advanced(30)
        for count in (4, 2, 1):
            config = await set_partitions(db, count)
            await until(following(both, config))
            await writer.advanced(40)  # the new partitions at work, leaders moving or not
    finally:
        await writer.stop()

    async def numbered() -> bool:
        return not await db.fetchval("SELECT count(*) FROM outbox WHERE position IS NULL")

    await until_async(numbered)
    chains = await check_stored_chains(db)
    positions = set(itertools.chain.from_iterable(chains.values()))
    assert len(positions) == writer.count
    await until(lambda: positions <= log.offsets())
    messages = log.messages
    assert log.offsets() == positions
    await check_messages_match_rows(db, messages)
    assert first_sendings(messages) == chains
    assert any(r.metric("jangteo_relay_events_republished_total") for r in both)


async def test_relays_follow_a_change_of_the_count_on_notify_not_only_on_their_poll(
    relays: Relays, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SendLog(relays, monkeypatch)
    # Leaders that are silent for a whole poll keep their lock sessions meanwhile.
    both = [log.start(poll_interval=POLL, lock_timeout=3 * POLL) for _ in range(2)]
    await until(lambda: led_once_each(both, 1) and all(r.relay.config for r in both))
    rows = [(channel, n) for n, channel in enumerate(CHANNELS[:8])]
    await insert_many(db, rows[:4])
    await until(lambda: {m.n for m in log.messages} == set(range(4)))

    changed = time.monotonic()
    config = await set_partitions(db, 4)
    await until(following(both, config), timeout=SWITCH_TIMEOUT)
    await until(lambda: led_once_each(both, 4), timeout=SWITCH_TIMEOUT)
    switched = time.monotonic() - changed

    async def held_once_each() -> bool:
        # A leader over its share may be handing a partition over right now: the next
        # in line asks for the lock every IN_LINE_POLL_S, so it is free that long at most.
        return await lock_holders(db) == {0: 1, 1: 1, 2: 1, 3: 1}

    await until_async(held_once_each, timeout=SWITCH_TIMEOUT)
    await insert_many(db, rows[4:])
    await until(lambda: {m.n for m in log.messages} == set(range(8)), timeout=SWITCH_TIMEOUT)
    assert first_sendings(log.messages) == await check_stored_chains(db)
    print(f"relays switched to 4 partitions {switched:.2f}s after the change (poll {POLL:.0f}s)")


async def test_the_count_can_be_changed_on_a_database_emptied_by_hand(
    relays: Relays, db: asyncpg.Connection
) -> None:
    """Like the relays (read_config), the change starts over from one partition."""
    await db.execute("TRUNCATE relay_config, relay_partitions")
    assert await set_partitions(db, 2) == RelayConfig(2, 2)
    running = relays.start()
    await until(lambda: led_once_each([running], 2))
    await insert_many(db, [(channel, n) for n, channel in enumerate(CHANNELS[:6])])
    await until(lambda: running.published_ns() == set(range(6)))


async def test_a_change_of_the_count_publishes_again_only_what_may_not_have_been_published(
    relays: Relays, db: asyncpg.Connection
) -> None:
    """Every old partition's events up to its published_through reached the broker; one
    that has nothing after it (an idle partition) holds nothing back. A change should
    publish again only what follows the busy partitions' published_through."""
    await set_partitions(db, 4)
    running = relays.start()
    await until(lambda: led_once_each([running], 4))
    partitions = await partition_of(db, CHANNELS, 4)
    busy = [channel for channel in CHANNELS if partitions[channel] == 0]
    rows = [(busy[n % len(busy)], n) for n in range(300)]  # only partition 0 has events
    for end in (100, 200, 300):  # each hundred published before the next: batches recorded
        for start in range(end - 100, end, 10):
            await insert_many(db, rows[start : start + 10])
        await until(lambda: running.published_ns() == set(range(end)))  # noqa: B023
    unrecorded = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE position > (SELECT published_through"
        " FROM relay_partitions JOIN relay_config USING (generation) WHERE partition = 0)"
    )
    assert unrecorded < 300

    config = await set_partitions(db, 2)
    await until(following([running], config))
    after = await partition_of(db, CHANNELS, 2)
    marks = [next(channel for channel in CHANNELS if after[channel] == k) for k in (0, 1)]
    await insert_many(db, [(marks[0], 300), (marks[1], 301)])
    # Each new leader publishes its tail before anything new: both tails are out.
    await until(lambda: {300, 301} <= running.published_ns())
    assert running.metric("jangteo_relay_events_republished_total") <= unrecorded


async def test_a_relay_that_lost_redis_while_in_line_is_not_handed_a_partition(
    relays: Relays, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a relay that can publish waits in line, so spreading leadership never gives a
    partition to one that cannot publish (its events would wait for its step-down)."""
    await set_partitions(db, 2)
    monkeypatch.setattr(relay_module, "HAND_OVER_EVERY_S", math.inf)  # not yet
    healthy = relays.start(poll_interval=0.2, step_down=0.5)
    await until(lambda: healthy.relay.leading == [0, 1])
    cut_off = relays.start(poll_interval=0.2, step_down=0.5)
    await until_async(waiting_in_line(db, 2))  # it queued for both locks while healthy
    cut_off.broker.disconnect()  # then lost Redis
    cut_off.broker.fail_publish = True
    await asyncio.sleep(1.0)  # time enough to notice
    monkeypatch.setattr(relay_module, "HAND_OVER_EVERY_S", 0.0)  # spreading may begin

    partitions = await partition_of(db, CHANNELS, 2)
    rows = [(channel, n) for n, channel in enumerate(CHANNELS[:10])]
    assert {partitions[channel] for channel, _ in rows} == {0, 1}
    await insert_many(db, rows)
    led: list[list[int]] = []
    deadline = time.monotonic() + 3.0  # several chances to hand a partition over
    while time.monotonic() < deadline:
        led.append(cut_off.relay.leading)
        await asyncio.sleep(0.005)
    assert not any(led), "the relay cut off from Redis led a partition"
    assert healthy.published_ns() == set(range(10))
    assert cut_off.metric("jangteo_relay_publish_failures_total") == 0


def waiting_in_line(db: asyncpg.Connection, count: int) -> Callable[[], Awaitable[bool]]:
    """A check: ``count`` sessions wait in line for a relay partition lock of this database."""

    async def check() -> bool:
        return await relays_in_line(db) == count

    return check
