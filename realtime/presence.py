"""Who is online in a room and who is typing: ephemeral, in Redis with short TTLs.

Never written to the outbox and never replayed. Each instance records its own sockets'
users in a sorted set per room (member ``user:instance``, score = expiry) and refreshes
them while they stay; an instance that dies simply stops refreshing and its users drop
out within ``ttl``. Changes are sent as ``presence`` frames over the broker, published
on the room's channel as ephemeral messages, so every instance's subscribers get them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from realtime.broker import Broker, encode_ephemeral

log = logging.getLogger(__name__)

ROOM_PREFIX = "room:"


class Presence:
    def __init__(
        self,
        redis: aioredis.Redis,
        broker: Broker,
        *,
        ttl: float = 30.0,
        typing_ttl: float = 4.0,
    ) -> None:
        self.redis = redis
        self.broker = broker
        self.ttl = ttl
        self.typing_ttl = typing_ttl
        self.instance = secrets.token_hex(6)
        self.local: Counter[tuple[str, int]] = Counter()  # (room channel, user) -> sockets
        self.tasks: set[asyncio.Task[None]] = set()
        self.refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.refresher = asyncio.create_task(self._refresh_forever(), name="jangteo-presence")

    # -- what sockets do ------------------------------------------------------------------

    def joined(self, channel: str, user_id: int) -> None:
        if channel.startswith(ROOM_PREFIX):
            self.local[(channel, user_id)] += 1
            self._spawn(self._mark_online(channel, user_id))

    def left(self, channel: str, user_id: int) -> None:
        if not channel.startswith(ROOM_PREFIX) or self.local[(channel, user_id)] <= 0:
            return
        self.local[(channel, user_id)] -= 1
        if self.local[(channel, user_id)] == 0:
            del self.local[(channel, user_id)]
            self._spawn(self._mark_offline(channel, user_id))

    def typing(self, channel: str, user_id: int) -> None:
        self._spawn(self._mark_typing(channel, user_id))

    # -- Redis ----------------------------------------------------------------------------

    def _member(self, user_id: int) -> str:
        return f"{user_id}:{self.instance}"

    async def _mark_online(self, channel: str, user_id: int) -> None:
        key = f"presence:{channel}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self._member(user_id): _ms(time.time() + self.ttl)})
            pipe.expire(key, int(self.ttl * 2))
            await pipe.execute()
        await self.announce(channel)

    async def _mark_offline(self, channel: str, user_id: int) -> None:
        await self.redis.zrem(f"presence:{channel}", self._member(user_id))
        await self.announce(channel)

    async def _mark_typing(self, channel: str, user_id: int) -> None:
        key = f"typing:{channel}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {str(user_id): _ms(time.time() + self.typing_ttl)})
            pipe.expire(key, int(self.typing_ttl * 2) + 1)
            await pipe.execute()
        await self.announce(channel)
        # Tell everybody again once it has run out (unless it was renewed meanwhile).
        await asyncio.sleep(self.typing_ttl + 0.05)
        await self.announce(channel)

    async def announce(self, channel: str) -> None:
        """Publish the room's current presence to every instance's subscribers."""
        now = _ms(time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(f"presence:{channel}", now, "+inf")
            pipe.zrangebyscore(f"typing:{channel}", now, "+inf")
            online_members, typing_members = await pipe.execute()
        online = sorted({int(member.split(b":", 1)[0]) for member in online_members})
        typing = sorted(int(member) for member in typing_members)
        frame = orjson.dumps(
            {"op": "presence", "channel": channel, "online": online, "typing": typing}
        )
        await self.broker.publish([(channel, encode_ephemeral(frame))])

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if not self.local:
                continue
            expiry = _ms(time.time() + self.ttl)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for channel, user_id in self.local:
                        pipe.zadd(f"presence:{channel}", {self._member(user_id): expiry})
                        pipe.expire(f"presence:{channel}", int(self.ttl * 2))
                    await pipe.execute()
            except (RedisError, OSError) as error:
                log.warning("presence refresh failed", extra={"error": repr(error)})

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(_logged(work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        pending = [task for task in (self.refresher, *self.tasks) if task is not None]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    try:
        await work
    except (RedisError, OSError) as error:
        log.warning("presence update failed", extra={"error": repr(error)})


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
