"""The redis_lock strategy's lock: per listing, across every instance, with a fencing token.

A process takes a listing's lock together with a fencing token (one script: ``SET NX``
and ``INCR`` of the listing's counter) and holds it as a lease: while it holds it, up
to ``LEASE_PURCHASES`` purchases of that process run under the one token, at once
(PostgreSQL queues them on the listing's row, with no round trip back here between
them), and buyers that come within ``LEASE_JOIN_S`` of the taking join; the lease is
given back when its last purchase ends, so the other instances get their turn. Only one
coroutine per process polls Redis for the lock; the others wait for the lease it takes.

The database write must find its token no older than the last one written: a holder
whose lock expired and whose successor has written is refused, and if Redis ever hands
out an old token (its data was lost), the counter is moved past the database's and that
purchase answers 409 to be retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.errors import Problem
from server.orders.errors import PurchaseConflict
from server.orders.purchase import StaleFence

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_TIMEOUT_S = 5.0  # a holder that dies frees the listing after this
WAIT_TIMEOUT_S = 10.0
# Polls for a lock another instance holds back off (full jitter): with hundreds of
# listings wanted at once, a fixed short interval floods Redis and the event loop.
POLL_FIRST_S = 0.002
POLL_MOST_S = 0.010
LEASE_PURCHASES = 32  # purchases of one process under one taking of the lock, at most
LEASE_JOIN_S = 0.05  # purchases join a lease this long after it was taken, no longer

# KEYS: the lock, the fencing counter; ARGV: our token, the timeout in ms.
# Returns the new fencing token, or nil when the lock is someone else's.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return redis.call('INCR', KEYS[2])
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


def _cancel_pending() -> bool:
    """Whether this task was asked to stop. A cancellation that lands in the middle of a
    redis-py command is sometimes not raised from it (redis-py 8): the poll loop asks."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# The lock and its counter share a hash tag: on a Redis Cluster one slot holds both, so
# one script takes the lock and its token.
def lock_key(listing_id: int) -> str:
    return f"lock:{{listing:{listing_id}}}"


def fence_key(listing_id: int) -> str:
    return f"fence:{{listing:{listing_id}}}"


@dataclass(slots=True)
class _Lease:
    """This process's hold of one listing's lock."""

    token: str  # the lock's value: ours
    fence: int
    release_by: float  # monotonic: no new purchase under it after this
    uses_left: int = LEASE_PURCHASES
    in_flight: int = 0
    ended: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def usable(self) -> bool:
        return self.uses_left > 0 and time.monotonic() < self.release_by


class PurchaseLocks:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._leases: dict[int, _Lease] = {}
        self._taking: dict[int, asyncio.Future[None]] = {}  # one taker per listing here
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._raise_to = redis.register_script(_RAISE_TO)

    async def run(self, listing_id: int, work: Callable[[int], Awaitable[T]]) -> T:
        """Run ``work(fence)`` while this process holds the listing's lock."""
        lease = await self._lease(listing_id)
        lease.uses_left -= 1
        lease.in_flight += 1
        # After a purchase or a refusal the lease goes on; after a stale token (the lock
        # expired under us) or a failure (the database, Redis), it takes no new purchase.
        healthy = False
        try:
            result = await work(lease.fence)
            healthy = True
            return result
        except StaleFence as stale:
            await self._raise_to(keys=[fence_key(listing_id)], args=[stale.seen])
            raise
        except Problem:
            healthy = True
            raise
        finally:
            lease.in_flight -= 1
            if not healthy:
                lease.uses_left = 0
            if lease.in_flight == 0 and self._leases.get(listing_id) is lease:
                del self._leases[listing_id]
                await self._give_back(listing_id, lease)

    async def _lease(self, listing_id: int) -> _Lease:
        """The process's usable lease of the listing, taken if there is none."""
        while True:
            lease = self._leases.get(listing_id)
            if lease is not None:
                if lease.usable():
                    return lease
                await asyncio.shield(lease.ended)  # used up: wait for it to be given back
                continue
            taking = self._taking.get(listing_id)
            if taking is not None:
                await asyncio.shield(taking)  # raises what the taker met
                continue
            taking = self._taking[listing_id] = asyncio.get_running_loop().create_future()
            try:
                lease = self._leases[listing_id] = await self._take(listing_id)
            except Exception as error:
                taking.set_exception(error)
                taking.exception()  # retrieved, whether anybody waits or not
                raise
            finally:
                del self._taking[listing_id]
                if not taking.done():  # taken, or the taker was cancelled
                    taking.set_result(None)
            return lease

    async def _take(self, listing_id: int) -> _Lease:
        token = secrets.token_hex(16)
        keys = [lock_key(listing_id), fence_key(listing_id)]
        args: list[str | int] = [token, int(LOCK_TIMEOUT_S * 1000)]
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        backoff = POLL_FIRST_S
        while True:
            started = time.monotonic()
            fence = await self._acquire(keys=keys, args=args)
            if _cancel_pending():  # the wait was given up: a lock taken meanwhile goes back
                if fence is not None:
                    await self._release(keys=[keys[0]], args=[token])
                raise asyncio.CancelledError
            if fence is not None:
                return _Lease(token, int(fence), release_by=started + LEASE_JOIN_S)
            if time.monotonic() >= deadline:
                raise PurchaseConflict("the listing is busy; try again")
            await asyncio.sleep(random.uniform(0, backoff))  # noqa: S311 - jitter, not a secret
            backoff = min(POLL_MOST_S, backoff * 2)

    async def _give_back(self, listing_id: int, lease: _Lease) -> None:
        """Release the lock (the purchases' outcomes stand whatever happens here)."""
        try:
            released = await asyncio.shield(
                self._release(keys=[lock_key(listing_id)], args=[lease.token])
            )
            if not released:
                log.warning("purchase lock expired before release", extra={"listing": listing_id})
        except (RedisError, OSError) as error:  # it expires by itself
            log.warning("purchase lock not released", extra={"error": str(error)})
        finally:
            lease.ended.set_result(None)
