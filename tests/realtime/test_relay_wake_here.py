"""A commit wakes the relay leader of its own process directly; PostgreSQL's NOTIFY carries
only the slots led elsewhere. The relays poll rarely (relay_support.POLL), so an event
published within a test was published on a wake-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from db.pool import TimedPool
from db.queries.outbox import Event, channel_slot, insert_events, notify_channel
from tests.realtime.relay_support import Relays, Running, until
from tests.support import small_pool

CHANNEL = "listing:70"
QUIET_S = 0.3  # how long a NOTIFY already sent would take at most to arrive


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[TimedPool]:
    pool = await small_pool(database_url)
    yield pool
    await pool.close()


@pytest.fixture
async def notified(database_url: str) -> AsyncIterator[list[str]]:
    """The NOTIFYs that would wake CHANNEL's leader, as a listener of its own hears them."""
    received: list[str] = []
    conn = await asyncpg.connect(database_url)
    await conn.add_listener(
        notify_channel(channel_slot(CHANNEL)), lambda *args: received.append(args[2])
    )
    yield received
    await conn.close()


def writer(pool: TimedPool) -> Callable[[int], Awaitable[None]]:
    async def write(n: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await insert_events(conn, [Event(CHANNEL, "listing.updated", {"n": n})])

    return write


def published(running: Running) -> list[int]:
    return [message.n for message in running.sent if message.channel == CHANNEL]


async def test_a_commit_wakes_the_leader_of_its_process_without_a_notify(
    relays: Relays, pool: TimedPool, notified: list[str], db: asyncpg.Connection
) -> None:
    leader = relays.start()
    await until(lambda: leader.relay.is_leader)
    pool.waker.wake_here = leader.relay.wake_here
    write = writer(pool)
    for n in range(3):
        await write(n)
        await until(lambda n=n: published(leader) == list(range(n + 1)))  # type: ignore[misc]
    await asyncio.sleep(QUIET_S)
    assert notified == []
    waker_connections = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jangteo'"
        " AND datname = current_database()"
    )
    assert waker_connections == 1  # the pool's own: the waker never needed one


async def test_slots_led_in_another_process_are_notified(
    relays: Relays, pool: TimedPool, notified: list[str]
) -> None:
    leader = relays.start()
    await until(lambda: leader.relay.is_leader)
    follower = relays.start()  # the relay of the process that writes: it leads nothing
    await until(lambda: follower.relay.config is not None)
    assert not follower.relay.is_leader
    pool.waker.wake_here = follower.relay.wake_here
    await writer(pool)(1)
    await until(lambda: published(leader) == [1])
    await until(lambda: len(notified) == 1)
    assert published(follower) == []


async def test_a_relay_that_has_not_read_its_configuration_wakes_nothing_here(
    relays: Relays,
) -> None:
    starting = relays.start()
    slots = {channel_slot(CHANNEL)}
    if starting.relay.config is None:
        assert starting.relay.wake_here(slots) == slots
    await until(lambda: starting.relay.is_leader)
    assert starting.relay.wake_here(slots) == set()
