"""The redis_lock strategy's lock: per listing, across every instance, with a fencing token.

Inside one process, buyers of a listing queue on an asyncio lock first, so only one
coroutine per process polls Redis for the listing's lock. Each holder gets a fencing
token (a Redis counter) that the database write must find newer than the last one
applied; if Redis ever hands out an old token (its data was lost), the counter is
moved past the database's, and that one purchase answers 409 to be retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import LockError

from server.orders.errors import PurchaseConflict
from server.orders.purchase import StaleFence

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_TIMEOUT_S = 5.0  # a holder that dies frees the listing after this
WAIT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.002
_RAISE_TO = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return current
"""


class PurchaseLocks:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._local: dict[int, tuple[asyncio.Lock, int]] = {}
        self._raise_to = redis.register_script(_RAISE_TO)

    async def run(self, listing_id: int, work: Callable[[int], Awaitable[T]]) -> T:
        """Run ``work(fence)`` while holding the listing's lock."""
        local, users = self._local.get(listing_id, (asyncio.Lock(), 0))
        self._local[listing_id] = (local, users + 1)
        try:
            async with local:
                return await self._run_locked(listing_id, work)
        finally:
            local, users = self._local[listing_id]
            if users == 1:
                del self._local[listing_id]
            else:
                self._local[listing_id] = (local, users - 1)

    async def _run_locked(self, listing_id: int, work: Callable[[int], Awaitable[T]]) -> T:
        lock = self.redis.lock(
            f"lock:listing:{listing_id}",
            timeout=LOCK_TIMEOUT_S,
            sleep=POLL_INTERVAL_S,
            blocking_timeout=WAIT_TIMEOUT_S,
        )
        if not await lock.acquire():
            raise PurchaseConflict("the listing is busy; try again")
        try:
            fence = int(await self.redis.incr(f"fence:listing:{listing_id}"))
            try:
                return await work(fence)
            except StaleFence as stale:
                await self._raise_to(keys=[f"fence:listing:{listing_id}"], args=[stale.seen])
                raise
        finally:
            try:
                await lock.release()
            except LockError:
                log.warning("purchase lock expired before release", extra={"listing": listing_id})
