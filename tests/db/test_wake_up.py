"""The relay's wake-up after commits: from a connection of its own, in rounds, and a lost
one never stops the next."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from db.queries.outbox import Event, channel_slot, insert_events, notify_channel
from db.wake_up import RelayWaker
from tests.realtime.relay_support import until
from tests.support import small_pool

CHANNEL = "listing:7"


class HeldConnection:
    """Stands in for a connection whose statements wait for ``gate`` (to hold a round open)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    def is_closed(self) -> bool:
        return False

    async def close(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    async def execute(self, sql: str) -> str:
        self.statements.append(sql)
        self.started.set()
        await self.gate.wait()
        return "NOTIFY"


async def test_slots_handed_in_during_a_wake_up_share_the_next_one() -> None:
    connection = HeldConnection()

    async def connect() -> Any:
        return connection

    waker = RelayWaker(connect)
    waker.wake({1})
    await connection.started.wait()
    for slot in (5, 3, 5, 9):  # while the first is out
        waker.wake({slot})
    connection.gate.set()
    await until(lambda: len(connection.statements) == 2)
    first, second = connection.statements
    assert first.endswith(f"NOTIFY {notify_channel(1)}")
    assert second.endswith(
        f"NOTIFY {notify_channel(3)}; NOTIFY {notify_channel(5)}; NOTIFY {notify_channel(9)}"
    )
    await asyncio.sleep(0.05)
    assert len(connection.statements) == 2  # nothing left over, nothing sent twice
    await waker.close()


async def listener(database_url: str, received: list[str]) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url)
    await conn.add_listener(
        notify_channel(channel_slot(CHANNEL)), lambda *args: received.append(args[2])
    )
    return conn


async def write_event(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, [Event(CHANNEL, "listing.updated", {})])


async def test_the_pool_wakes_the_relay_after_commit_and_survives_a_lost_connection(
    database_url: str,
) -> None:
    received: list[str] = []
    listening = await listener(database_url, received)
    pool = await small_pool(database_url)
    admin = await asyncpg.connect(database_url)
    try:
        await write_event(pool)
        await until(lambda: len(received) == 1, timeout=10)
        pooled = {
            conn["pid"]
            for conn in await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'jangteo'"
                " AND datname = current_database()"
            )
        }
        assert len(pooled) == 2  # the pool's one connection and the waker's own

        # The waker's connection dies: the next wake-ups go out on a new one (one lost
        # meanwhile would be logged, and the relay's poll would find its rows).
        async with pool.acquire() as conn:
            pool_pid = conn.get_server_pid()
        (waker_pid,) = pooled - {pool_pid}
        await admin.execute("SELECT pg_terminate_backend($1)", waker_pid)
        for _ in range(50):
            await write_event(pool)
            await asyncio.sleep(0.1)
            if len(received) >= 2:
                break
        assert len(received) >= 2
    finally:
        await pool.close()
        await listening.close()
    left = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jangteo'"
        " AND datname = current_database()"
    )
    await admin.close()
    assert left == 0  # closing the pool closed the waker's connection too
