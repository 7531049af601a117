"""Cache-aside in Redis for listing detail and a region's first feed page.

Entries are keyed by a generation number that every committed change increments
(after commit). A reader looks up the generation and the entry in one round trip; if
it then builds the entry from PostgreSQL, it stores it under the generation it read
*before* building. A change that commits meanwhile has already moved the generation
on, so a stale entry can be written but never read: a client always sees its own
write. Rebuilding a missing entry is done by one request at a time (a short Redis
lock); the others wait for it briefly. When Redis is unreachable the cache is bypassed.

In front of Redis, each process keeps a near cache (``near_cache.py``) that the same
change empties everywhere through Redis pub/sub (``invalidation.py``); the writer
answers only once every subscribed process has confirmed, so the hottest reads cost no
network round trip at all and still never show a client something older than its write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.listings.invalidation import (
    channel_name,
    new_ack_key,
    publish_invalidation,
    wait_for_acks,
)
from server.listings.near_cache import NearCache
from server.metrics import Metrics
from server.rounds import Rounds

log = logging.getLogger(__name__)

DETAIL_TTL_MS = 60_000
FEED_TTL_MS = 30_000
GENERATION_TTL_S = 24 * 3600  # longer than any entry, so a generation never restarts under one
REBUILD_LOCK_MS = 2_000
WAIT_STEP_S = 0.005
ACK_TIMEOUT_S = 0.5  # then silent processes are disconnected and their leases waited out

_LOOKUP = """
local generation = redis.call('GET', KEYS[1]) or '0'
return {generation, redis.call('GET', ARGV[1] .. generation)}
"""

Builder = Callable[[], Awaitable[bytes]]


# An entry's keys (its generation, its variants, their rebuild locks) share the hash tag
# of its base: on a Redis Cluster they live in one slot, so the lookup script may read
# the entry named by the generation it just read.
def detail_base(listing_id: int) -> str:
    return f"cache:{{listing:{listing_id}}}"


def feed_base(region: str) -> str:
    return f"cache:{{feed:{region}}}"


class ListingCache:
    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: Metrics,
        *,
        enabled: bool = True,
        near: NearCache | None = None,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        database: str = "0",
        deployment: str = "jangteo",
        sharded: bool = False,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.near = near or NearCache()
        self._outcomes: dict[tuple[str, str], Any] = {}
        self.enabled = enabled  # off: every read goes to PostgreSQL (benchmarks, debugging)
        self.ack_timeout_s = ack_timeout_s
        self.database = database  # of ``redis``: its subscribers listen on its own channel
        self.deployment = deployment
        self.sharded = sharded  # a Redis Cluster: invalidations by sharded pub/sub
        self._lookup = redis.register_script(_LOOKUP)
        self._invalidations: Rounds[str, None] = Rounds(self._invalidate)

    async def detail(self, listing_id: int, build: Builder) -> bytes:
        return await self._cached("detail", detail_base(listing_id), build, DETAIL_TTL_MS)

    async def feed_first_page(self, region: str, limit: int, build: Builder) -> bytes:
        return await self._cached(
            "feed", feed_base(region), build, FEED_TTL_MS, variant=f"limit{limit}"
        )

    def _count(self, kind: str, outcome: str) -> None:
        counter = self._outcomes.get((kind, outcome))
        if counter is None:
            counter = self._outcomes[(kind, outcome)] = self.metrics.cache.labels(kind, outcome)
        counter.inc()

    async def changed(self, listing_id: int, region: str) -> None:
        """Call after a change to a listing has committed, before answering the client.

        Returns once every process has dropped its near copies, or can no longer serve
        them (its lease ran out; see invalidation.py). Changes that commit together share
        one round of invalidation (``Rounds``): it starts after each of them committed.
        """
        bases = [detail_base(listing_id), feed_base(region)]
        self.near.invalidate(bases)
        await self._invalidations.ask(bases)

    async def _invalidate(self, bases: frozenset[str]) -> dict[str, None]:
        """One round: move the generations on, then empty every process's near copies."""
        ack_key = new_ack_key(self.deployment)
        try:
            # The generations move on before any process hears of the change (a cluster
            # pipeline runs each master's commands concurrently: hence two round trips).
            async with self.redis.pipeline(transaction=False) as pipe:
                for base in bases:
                    pipe.incr(f"{base}:gen")
                    pipe.expire(f"{base}:gen", GENERATION_TTL_S)
                await pipe.execute()
            receivers = await publish_invalidation(
                self.redis,
                channel_name(self.database, self.deployment),
                " ".join([ack_key, *bases]),
                sharded=self.sharded,
            )
            unconfirmed = await wait_for_acks(
                self.redis,
                self.database,
                ack_key,
                receivers,
                self.ack_timeout_s,
                sharded=self.sharded,
            )
            if unconfirmed:
                self.metrics.unconfirmed_invalidations.inc()
        except (RedisError, OSError) as error:
            # Usually Redis is down, and every process's lease runs out too. If only
            # this writer lost Redis, the others keep their copies until the TTLs.
            self.metrics.failed_invalidations.inc()
            log.warning("cache invalidation failed", extra={"error": str(error)})
        return {}

    async def close(self) -> None:
        """Stop a round of invalidation in flight (at shutdown)."""
        await self._invalidations.close()

    async def _cached(
        self, kind: str, base: str, build: Builder, ttl_ms: int, variant: str = ""
    ) -> bytes:
        if not self.enabled:
            return await build()
        local = self.near.get(base, variant)
        if local is not None:
            self._count(kind, "local")
            return local
        epoch = self.near.epoch
        value = await self._shared(kind, base, build, ttl_ms, variant)
        self.near.put(base, variant, value, epoch)
        return value

    async def _shared(
        self, kind: str, base: str, build: Builder, ttl_ms: int, variant: str
    ) -> bytes:
        prefix = f"{base}:{variant}:" if variant else f"{base}:"
        try:
            generation, value = await self._lookup(keys=[f"{base}:gen"], args=[prefix])
        except (RedisError, OSError):
            self._count(kind, "bypass")
            return await build()
        if value is not None:
            self._count(kind, "hit")
            return bytes(value)
        entry_key = prefix + generation.decode()
        try:
            return await self._rebuild(kind, entry_key, build, ttl_ms)
        except (RedisError, OSError):
            self._count(kind, "bypass")
            return await build()

    async def _rebuild(self, kind: str, entry_key: str, build: Builder, ttl_ms: int) -> bytes:
        lock_key = entry_key + ":lock"
        if not await self.redis.set(lock_key, 1, nx=True, px=REBUILD_LOCK_MS):
            # Someone else is rebuilding: wait for their entry rather than hit PostgreSQL.
            for _ in range(int(REBUILD_LOCK_MS / 1000 / WAIT_STEP_S)):
                await asyncio.sleep(WAIT_STEP_S)
                value = await self.redis.get(entry_key)
                if isinstance(value, bytes):
                    self._count(kind, "waited")
                    return value
        else:
            # The previous holder may have stored the entry after our lookup: use it.
            value = await self.redis.get(entry_key)
            if isinstance(value, bytes):
                await self.redis.delete(lock_key)
                self._count(kind, "hit")
                return value
        self._count(kind, "miss")
        try:
            value = await build()
            await self.redis.set(entry_key, value, px=ttl_ms)
        finally:
            await self.redis.delete(lock_key)
        return value
