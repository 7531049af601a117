"""Sessions revoked before their access tokens expire, marked in Redis.

A logout (or detected token reuse) marks the session revoked for as long as an access
token of it can live, so those tokens stop working at once on every instance. Every
authenticated request looks its session up; concurrent requests share one round trip
(``Rounds``), each answered by a lookup that began after it asked.
"""

from __future__ import annotations

import logging
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.rounds import Rounds

log = logging.getLogger(__name__)


def revoked_key(session_id: uuid.UUID) -> str:
    return f"revoked-session:{session_id}"


class SessionRevocations:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._lookups: Rounds[uuid.UUID, bool] = Rounds(self._look_up)

    async def revoke(self, session_id: uuid.UUID, ttl: int) -> None:
        try:
            await self.redis.set(revoked_key(session_id), 1, ex=ttl)
        except (RedisError, OSError) as error:
            log.warning("could not mark session revoked", extra={"error": str(error)})

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        return (await self._lookups.ask((session_id,)))[session_id]

    async def _look_up(self, sessions: frozenset[uuid.UUID]) -> dict[uuid.UUID, bool]:
        ordered = list(sessions)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for session_id in ordered:
                    pipe.exists(revoked_key(session_id))
                found = await pipe.execute()
        except (RedisError, OSError):
            # Redis down: the refresh token is revoked in PostgreSQL already, and the
            # access token expires within minutes; keep serving rather than fail.
            return dict.fromkeys(ordered, False)
        return {session_id: bool(count) for session_id, count in zip(ordered, found, strict=True)}

    async def close(self) -> None:
        """Stop a lookup in flight (at shutdown)."""
        await self._lookups.close()
