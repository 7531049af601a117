"""The redis_lock strategy's lock: per listing, across every instance, with fencing tokens.

Inside one process, buyers of a listing queue on an asyncio lock first, so only one
coroutine per process polls Redis for the listing's lock. The lock is taken together
with a run of fencing tokens (one script: ``SET NX`` and ``INCRBY`` on the listing's
counter), and while buyers of this process wait for it, the lock passes from one to the
next without a round trip to Redis, each purchase under a token of the run, up to
``TOKENS_PER_HOLD`` purchases or half the lock's timeout; then it is released, so the
other instances get their turn. The database write must find its token newer than the
last one applied: a holder whose lock expired meanwhile is refused, and if Redis ever
hands out an old token (its data was lost), the counter is moved past the database's and
that one purchase answers 409 to be retried.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio as aioredis

from server.errors import Problem
from server.orders.errors import PurchaseConflict
from server.orders.purchase import StaleFence

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_TIMEOUT_S = 5.0  # a holder that dies frees the listing after this
WAIT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.002
TOKENS_PER_HOLD = 8  # purchases of one process under one taking of the lock, at most

# KEYS: the lock, the fencing counter; ARGV: our token, the timeout in ms, tokens wanted.
# Returns the last fencing token of the run, or nil when the lock is someone else's.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return redis.call('INCRBY', KEYS[2], ARGV[3])
end
return false
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RAISE_TO = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return current
"""


# The lock and its counter share a hash tag: on a Redis Cluster one slot holds both, so
# one script takes the lock and its tokens.
def lock_key(listing_id: int) -> str:
    return f"lock:{{listing:{listing_id}}}"


def fence_key(listing_id: int) -> str:
    return f"fence:{{listing:{listing_id}}}"


@dataclass(slots=True)
class _Hold:
    """This process's hold of one listing's lock: its token and the fencing tokens left."""

    token: str
    next_fence: int
    last_fence: int
    release_by: float  # monotonic: pass it on no later than this

    def can_pass_on(self) -> bool:
        return self.next_fence <= self.last_fence and time.monotonic() < self.release_by


class PurchaseLocks:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._local: dict[int, tuple[asyncio.Lock, int]] = {}
        self._holds: dict[int, _Hold] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
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
                stranded = self._holds.pop(listing_id, None)
                if stranded is not None:  # kept for a buyer who gave up before his turn
                    self._release_later(listing_id, stranded)
            else:
                self._local[listing_id] = (local, users - 1)

    def _others_waiting(self, listing_id: int) -> bool:
        return self._local[listing_id][1] > 1

    async def _run_locked(self, listing_id: int, work: Callable[[int], Awaitable[T]]) -> T:
        hold = self._holds.pop(listing_id, None)
        if hold is not None and not hold.can_pass_on():
            await self._give_back(listing_id, hold)
            hold = None
        if hold is None:
            hold = await self._take(listing_id)
        fence = hold.next_fence
        hold.next_fence += 1
        # After a purchase or a refusal the lock may pass on; after a stale token (the
        # lock expired under us) or a failure (the database, Redis) it is given back.
        passable = False
        try:
            result = await work(fence)
            passable = True
            return result
        except StaleFence as stale:
            await self._raise_to(keys=[fence_key(listing_id)], args=[stale.seen])
            raise
        except Problem:
            passable = True
            raise
        finally:
            if passable and hold.can_pass_on() and self._others_waiting(listing_id):
                self._holds[listing_id] = hold  # the next buyer here goes on under it
            else:
                await self._give_back(listing_id, hold)

    async def _take(self, listing_id: int) -> _Hold:
        token = secrets.token_hex(16)
        keys = [lock_key(listing_id), fence_key(listing_id)]
        args: list[str | int] = [token, int(LOCK_TIMEOUT_S * 1000), TOKENS_PER_HOLD]
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while True:
            started = time.monotonic()
            last = await self._acquire(keys=keys, args=args)
            if last is not None:
                return _Hold(
                    token,
                    next_fence=int(last) - TOKENS_PER_HOLD + 1,
                    last_fence=int(last),
                    release_by=started + LOCK_TIMEOUT_S / 2,
                )
            if time.monotonic() >= deadline:
                raise PurchaseConflict("the listing is busy; try again")
            await asyncio.sleep(POLL_INTERVAL_S)

    def _release_later(self, listing_id: int, hold: _Hold) -> None:
        task = asyncio.create_task(self._give_back(listing_id, hold))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _give_back(self, listing_id: int, hold: _Hold) -> None:
        released = await asyncio.shield(
            self._release(keys=[lock_key(listing_id)], args=[hold.token])
        )
        if not released:
            log.warning("purchase lock expired before release", extra={"listing": listing_id})
