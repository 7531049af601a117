"""Who is calling: bearer access tokens, and sessions revoked before their tokens expire.

A logout (or detected token reuse) marks the session revoked in Redis for as long as
an access token of it can live, so those access tokens stop working at once.
"""

from __future__ import annotations

import logging
import uuid

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from server import keys
from server.auth.tokens import AccessClaims
from server.errors import InvalidToken

log = logging.getLogger(__name__)


def _revoked_key(session_id: uuid.UUID) -> str:
    return f"revoked-session:{session_id}"


async def revoke_session(redis: aioredis.Redis, session_id: uuid.UUID, ttl: int) -> None:
    try:
        await redis.set(_revoked_key(session_id), 1, ex=ttl)
    except (RedisError, OSError) as error:
        log.warning("could not mark session revoked", extra={"error": str(error)})


async def is_session_revoked(redis: aioredis.Redis, session_id: uuid.UUID) -> bool:
    try:
        return bool(await redis.exists(_revoked_key(session_id)))
    except (RedisError, OSError):
        # Redis down: the refresh token is revoked in PostgreSQL already, and the
        # access token expires within minutes; keep serving rather than fail.
        return False


async def authenticate(request: web.Request) -> AccessClaims:
    """The caller's claims from ``Authorization: Bearer``; 401 when absent or invalid."""
    if keys.claims_key in request:
        return request[keys.claims_key]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("send Authorization: Bearer <access token>")
    claims = request.app[keys.token_issuer_key].decode_access(token.strip())
    if await is_session_revoked(request.app[keys.redis_key], claims.session_id):
        raise InvalidToken("this session was logged out")
    request[keys.claims_key] = claims
    return claims
