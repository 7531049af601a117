"""Idempotency keys for money-moving POSTs, as one reusable piece.

The effect of a request and its stored response commit in the same transaction, so a
crash in between cannot let a retry run the effect twice. A transaction-scoped
advisory lock on (user, key) turns a duplicate that arrives while the first is still
running into a 409 instead of a second execution. Only successful responses are kept:
a request that failed changed nothing, so retrying it with the same key may succeed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from db.queries import idempotency as queries
from db.types import Connection
from server.errors import BadRequest, Conflict, Problem
from server.jsonio import JSON_CONTENT_TYPE, dumps

KEY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
KEY_TTL = timedelta(hours=24)
_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
# Transient failures after which the whole transaction may safely run again.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
MAX_ATTEMPTS = 3


class IdempotencyKeyMissing(BadRequest):
    slug, title = "idempotency-key-missing", "Send an Idempotency-Key header"


class IdempotencyKeyInvalid(BadRequest):
    slug, title = "idempotency-key-invalid", "Idempotency-Key must be 1-255 visible characters"


class IdempotencyKeyInFlight(Conflict):
    slug, title = "idempotency-key-in-flight", "A request with this Idempotency-Key is running"


class IdempotencyKeyReused(Problem):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency-Key used with another body"


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    user_id: int
    key: str
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes
    replayed: bool

    def to_response(self) -> web.Response:
        headers = {REPLAY_HEADER: "true"} if self.replayed else {}
        return web.Response(
            status=self.status, body=self.body, headers=headers, content_type=JSON_CONTENT_TYPE
        )


def idempotent_request(request: web.Request, user_id: int, body: Any) -> IdempotentRequest:
    """The key and the fingerprint (method, path, canonical body) of a money-moving request."""
    key = request.headers.get(KEY_HEADER)
    if key is None:
        raise IdempotencyKeyMissing()
    if not _KEY_PATTERN.match(key):
        raise IdempotencyKeyInvalid()
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), _canonical(body)):
        digest.update(len(part).to_bytes(8, "big") + part)
    return IdempotentRequest(user_id, key, digest.digest())


def _canonical(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


Work = Callable[[Connection], Awaitable[tuple[int, Any]]]


async def run_once(
    pool: asyncpg.Pool,
    request: IdempotentRequest,
    work: Work,
    on_retry: Callable[[str], None] = lambda reason: None,
) -> StoredResponse:
    """Run ``work`` at most once per key; replay its stored response afterwards."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return await _attempt(pool, request, work)
        except RETRYABLE as error:
            if attempt == MAX_ATTEMPTS:
                raise
            on_retry(type(error).__name__)
    raise AssertionError("unreachable")


async def _attempt(pool: asyncpg.Pool, request: IdempotentRequest, work: Work) -> StoredResponse:
    async with pool.acquire() as conn, conn.transaction():
        if not await queries.try_lock(conn, request.user_id, request.key):
            raise IdempotencyKeyInFlight()
        previous = await queries.stored(conn, request.user_id, request.key)
        if previous is not None:
            if bytes(previous["fingerprint"]) != request.fingerprint:
                raise IdempotencyKeyReused()
            return StoredResponse(previous["status_code"], bytes(previous["response_body"]), True)
        status, payload = await work(conn)
        body = dumps(payload)
        await queries.store(
            conn,
            user_id=request.user_id,
            key=request.key,
            fingerprint=request.fingerprint,
            status_code=status,
            body=body,
            ttl=KEY_TTL,
        )
    return StoredResponse(status, body, False)
