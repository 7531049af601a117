"""Fixed-window rate limits kept in Redis, counted and expired atomically by one Lua script."""

from __future__ import annotations

import logging
import math

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.errors import RateLimited
from server.metrics import Metrics
from server.settings import RateLimit

log = logging.getLogger(__name__)

# Returns {hits in this window, milliseconds until the window ends}.
_HIT_SCRIPT = """
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {hits, ttl}
"""


class RateLimiter:
    """Counts hits per key; raises ``RateLimited`` with the seconds left in the window.

    When Redis is unreachable the limiter lets requests through (and logs it): a
    Redis outage must not take down sign-in, which otherwise needs only PostgreSQL.
    """

    def __init__(self, redis: aioredis.Redis, metrics: Metrics, *, enabled: bool) -> None:
        self.enabled = enabled
        self.metrics = metrics
        self._script = redis.register_script(_HIT_SCRIPT)

    async def hit(self, name: str, subject: str, limit: RateLimit) -> None:
        if not self.enabled:
            return
        key = f"ratelimit:{name}:{subject}"
        try:
            hits, ttl_ms = await self._script(keys=[key], args=[limit.window_seconds * 1000])
        except (RedisError, OSError) as error:
            log.warning("rate limit skipped: redis unavailable", extra={"error": str(error)})
            return
        if int(hits) > limit.limit:
            self.metrics.rate_limited.labels(name).inc()
            raise RateLimited(max(1, math.ceil(int(ttl_ms) / 1000)))
