"""The redis_lock strategy's lock, through a real Redis: a process holds it as a lease under
one fencing token, its purchases run under it at once, never beside another process's,
and it is given back as soon as its last purchase ends."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.embedded.redis import EmbeddedRedis
from server.orders import locks as locks_module
from server.orders.errors import InsufficientStock
from server.orders.locks import LEASE_PURCHASES, PurchaseLocks, fence_key, lock_key

LISTING = 41


@pytest.fixture
async def redis(own_redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def test_two_processes_never_hold_the_listing_at_once(redis: aioredis.Redis) -> None:
    """60 buyers in each of two processes: while a process has purchases inside, the other
    has none; the fences grow from one holder to the next; purchases share takings."""
    processes = [PurchaseLocks(redis), PurchaseLocks(redis)]
    inside: Counter[int] = Counter()
    fences_seen: list[int] = []

    async def buyer(number: int) -> None:
        async def work(fence: int) -> None:
            inside[number] += 1
            assert inside[1 - number] == 0, "both processes inside at once"
            assert await redis.get(lock_key(LISTING)) is not None
            if not fences_seen or fences_seen[-1] != fence:
                fences_seen.append(fence)
            await asyncio.sleep(0.002)
            inside[number] -= 1

        await processes[number].run(LISTING, work)

    await asyncio.gather(*(buyer(number) for number in (0, 1) for _ in range(60)))
    assert fences_seen == sorted(set(fences_seen))  # a new holder, a newer token
    takings = int(await redis.get(fence_key(LISTING)) or 0)
    assert 120 / LEASE_PURCHASES <= takings < 120
    assert not await redis.exists(lock_key(LISTING))  # given back at the end


async def test_a_lease_takes_at_most_its_purchases_then_the_next_one_is_newer(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The count is under test, not the join window: a loaded machine may take longer than
    # the window to answer the taking, and then nobody joins.
    monkeypatch.setattr(locks_module, "LEASE_JOIN_S", 30.0)
    locks = PurchaseLocks(redis)
    release = asyncio.Event()
    fences: list[int] = []

    async def held(fence: int) -> None:
        fences.append(fence)
        await release.wait()
        await asyncio.sleep(0.01)  # a purchase's round trip

    buyers = [asyncio.create_task(locks.run(LISTING, held)) for _ in range(LEASE_PURCHASES + 5)]
    for _ in range(200):
        if len(fences) == LEASE_PURCHASES:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(fences) == LEASE_PURCHASES and len(set(fences)) == 1  # the rest wait
    release.set()
    await asyncio.gather(*buyers)
    assert len(fences) == LEASE_PURCHASES + 5
    assert set(fences[LEASE_PURCHASES:]) == {fences[0] + 1}
    assert not await redis.exists(lock_key(LISTING))


async def test_a_refusal_keeps_the_lease_and_a_failure_ends_it(redis: aioredis.Redis) -> None:
    locks = PurchaseLocks(redis)
    started = asyncio.Event()
    go_on = asyncio.Event()
    seen: list[tuple[str, int]] = []

    async def slow(fence: int) -> None:
        seen.append(("slow", fence))
        started.set()
        await go_on.wait()

    async def refused(fence: int) -> None:
        seen.append(("refused", fence))
        raise InsufficientStock("0 left")

    async def broken(fence: int) -> None:
        seen.append(("broken", fence))
        raise ConnectionError("the database went away")

    holding = asyncio.create_task(locks.run(LISTING, slow))
    await started.wait()
    with pytest.raises(InsufficientStock):
        await locks.run(LISTING, refused)
    with pytest.raises(ConnectionError):
        await locks.run(LISTING, broken)
    after_failure = asyncio.create_task(locks.run(LISTING, refused))
    await asyncio.sleep(0.05)
    assert [name for name, _ in seen] == ["slow", "refused", "broken"]  # the last one waits
    go_on.set()
    await holding
    with pytest.raises(InsufficientStock):
        await after_failure
    first = seen[0][1]
    assert [fence for _, fence in seen] == [first, first, first, first + 1]
    assert not await redis.exists(lock_key(LISTING))


async def test_buyers_waiting_for_a_taker_that_gave_up_take_the_lock_themselves(
    redis: aioredis.Redis,
) -> None:
    other_process = PurchaseLocks(redis)
    locks = PurchaseLocks(redis)
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def hold(fence: int) -> None:
        inside.set()
        await leave.wait()

    holder = asyncio.create_task(other_process.run(LISTING, hold))
    await inside.wait()
    taker = asyncio.create_task(locks.run(LISTING, lambda fence: asyncio.sleep(0)))
    await asyncio.sleep(0.01)  # polling for the other process's lock
    waiter = asyncio.create_task(locks.run(LISTING, lambda fence: asyncio.sleep(0, fence)))
    await asyncio.sleep(0.01)
    taker.cancel()
    leave.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await taker
    async with asyncio.timeout(5):
        assert await waiter == int(await redis.get(fence_key(LISTING)) or 0)
