"""The pool: connections go to waiters first come, first served, and acquires time out."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from db.pool import FifoGate, TimedPool, create_pool
from server.settings import Settings

POOL_SIZE = 2
CLIENTS = 4 * POOL_SIZE
ROUNDS = 25


async def sized_pool(settings: Settings, size: int) -> TimedPool:
    assert settings.database_url is not None
    return await create_pool(
        settings.database_url,
        min_size=size,
        max_size=size,
        connect_timeout=settings.pg_connect_timeout,
        acquire_timeout=settings.pg_acquire_timeout,
        statement_timeout=settings.pg_statement_timeout,
    )


async def test_waiters_get_connections_in_arrival_order(settings: Settings) -> None:
    """4x as many clients as connections, each asking again right after it gave back.

    A client returning its connection and asking at once must queue behind those already
    waiting: grants follow the order of the requests (asyncpg's own free-connection queue
    lets such a newcomer take the connection, and sends the woken waiter to the back).
    """
    pool = await sized_pool(settings, POOL_SIZE)
    tickets = itertools.count()
    granted: list[int] = []

    async def client(awaited: bool) -> None:
        for _ in range(ROUNDS):
            ticket = next(tickets)  # then at once in line: nothing is awaited in between
            if awaited:
                conn = await pool.acquire()
                granted.append(ticket)
                await conn.fetchval("SELECT 1")
                await pool.release(conn)
                continue
            async with pool.acquire() as conn:
                granted.append(ticket)
                await conn.fetchval("SELECT 1")

    try:
        await asyncio.gather(*(client(awaited=n % 2 == 1) for n in range(CLIENTS)))
    finally:
        await pool.close()
    assert len(granted) == CLIENTS * ROUNDS
    # Grants follow the queue. What a test can see is when each client *resumes*: a waiter
    # that was granted a permit resumes a loop turn later, and a newcomer finding a permit
    # free in that turn records first, one place early. asyncpg's own queue sends a woken
    # waiter to the back: clients overtaken by several places (as (13, 9) with 2 connections).
    overtaking = [(a, b) for a, b in itertools.pairwise(granted) if b < a]
    assert [(a, b) for a, b in overtaking if a - b >= POOL_SIZE] == []


async def test_timeout_still_applies_and_leaks_no_permit(settings: Settings) -> None:
    pool = await sized_pool(settings, 1)
    try:
        async with pool.acquire():
            with pytest.raises(TimeoutError):
                await pool.acquire(timeout=0.05)
            waiting = asyncio.ensure_future(pool.fetchval("SELECT 1"))
            await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        # Neither the timed-out nor the cancelled waiter kept the connection's permit.
        assert await pool.fetchval("SELECT 2", timeout=1) == 2
        conn = await pool.acquire()
        await pool.release(conn)
        await pool.release(conn)  # twice: a no-op, not a second permit
        async with pool.acquire() as first:
            with pytest.raises(TimeoutError):
                await pool.acquire(timeout=0.05)
            assert await first.fetchval("SELECT 3") == 3
    finally:
        await pool.close()


async def test_gate_hands_permits_over_in_order() -> None:
    gate = FifoGate(1)
    await gate.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await gate.acquire()
        order.append(n)
        gate.release()

    tasks = [asyncio.ensure_future(waiter(n)) for n in range(5)]
    await asyncio.sleep(0)
    tasks[2].cancel()
    gate.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4]
    await gate.acquire()  # the permit came back


async def test_waiting_counts_the_acquires_queued_for_a_connection(settings: Settings) -> None:
    pool = await sized_pool(settings, 1)
    try:
        assert pool.get_waiting() == 0
        async with pool.acquire():
            queued = [asyncio.ensure_future(pool.fetchval("SELECT 1")) for _ in range(3)]
            await asyncio.sleep(0)  # each is now in line
            assert pool.get_waiting() == 3
            queued[0].cancel()
            await asyncio.gather(queued[0], return_exceptions=True)
            assert pool.get_waiting() == 2
        assert await asyncio.gather(*queued[1:]) == [1, 1]
        assert pool.get_waiting() == 0
    finally:
        await pool.close()
