"""The redis_lock strategy's lock, through a real Redis: passed on between a process's own
buyers under one taking, with fencing tokens that only grow, and never kept for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.embedded.redis import EmbeddedRedis
from server.orders.errors import InsufficientStock
from server.orders.locks import TOKENS_PER_HOLD, PurchaseLocks, fence_key, lock_key

LISTING = 41


@pytest.fixture
async def redis(own_redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def test_buyers_of_two_processes_are_serialised_with_growing_fences(
    redis: aioredis.Redis,
) -> None:
    """40 buyers in each of two processes: never two inside at once, every fence newer
    than the one before, and the lock taken far fewer times than there were buyers."""
    processes = [PurchaseLocks(redis), PurchaseLocks(redis)]
    inside = 0
    fences: list[int] = []

    async def work(fence: int) -> int:
        nonlocal inside
        inside += 1
        assert inside == 1
        assert await redis.exists(lock_key(LISTING))
        await asyncio.sleep(0.001)
        fences.append(fence)
        inside -= 1
        return fence

    await asyncio.gather(*(locks.run(LISTING, work) for locks in processes for _ in range(40)))
    assert fences == sorted(fences) and len(set(fences)) == 80
    takings = int(await redis.get(fence_key(LISTING)) or 0) // TOKENS_PER_HOLD
    assert 80 / TOKENS_PER_HOLD <= takings < 80
    assert not await redis.exists(lock_key(LISTING))  # given back at the end


async def test_a_refusal_passes_the_lock_on_and_a_failure_gives_it_back(
    redis: aioredis.Redis,
) -> None:
    locks = PurchaseLocks(redis)
    seen: list[int] = []

    async def refused(fence: int) -> None:
        seen.append(fence)
        raise InsufficientStock("0 left")

    async def broken(fence: int) -> None:
        raise ConnectionError("the database went away")

    results = await asyncio.gather(
        *(locks.run(LISTING, refused) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, InsufficientStock) for result in results)
    assert seen == [seen[0], seen[0] + 1, seen[0] + 2]  # one taking served all three
    with pytest.raises(ConnectionError):
        await locks.run(LISTING, broken)
    assert not await redis.exists(lock_key(LISTING))


async def test_a_hold_kept_for_a_buyer_who_gave_up_is_released(redis: aioredis.Redis) -> None:
    locks = PurchaseLocks(redis)
    second_waits = asyncio.Event()
    second: asyncio.Task[int] | None = None

    async def first_work(fence: int) -> int:
        await second_waits.wait()
        assert second is not None
        # The second buyer gives up just as this one hands the lock on to him.
        asyncio.get_running_loop().call_soon(second.cancel)
        return fence

    async def never(fence: int) -> int:
        raise AssertionError("the buyer who gave up never runs")

    first = asyncio.create_task(locks.run(LISTING, first_work))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(locks.run(LISTING, never))
    await asyncio.sleep(0.01)
    second_waits.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    for _ in range(100):  # well within the lock's own timeout
        if not await redis.exists(lock_key(LISTING)):
            break
        await asyncio.sleep(0.01)
    assert not await redis.exists(lock_key(LISTING))
