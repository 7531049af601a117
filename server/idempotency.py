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
from typing import Any, Generic, TypeVar

import asyncpg
import orjson

from db.queries import idempotency as queries
from db.types import Connection
from server.errors import BadRequest, Conflict, Problem
from server.jsonio import dumps

KEY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
KEY_TTL = timedelta(hours=24)
_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
# Transient failures after which the whole transaction may safely run again.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
MAX_ATTEMPTS = 3
T = TypeVar("T")


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
    status: int  # what it answers when it succeeds; stored with the body for every replay

    @classmethod
    def of(
        cls, key: str | None, *, user_id: int, method: str, path: str, body: Any, status: int
    ) -> IdempotentRequest:
        """The key and the fingerprint (method, path, canonical body) of a request."""
        if key is None:
            raise IdempotencyKeyMissing()
        if not _KEY_PATTERN.match(key):
            raise IdempotencyKeyInvalid()
        digest = hashlib.sha256()
        for part in (
            method.encode(),
            path.encode(),
            orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
        ):
            digest.update(len(part).to_bytes(8, "big") + part)
        return cls(user_id, key, digest.digest(), status)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes
    replayed: bool


@dataclass(frozen=True, slots=True)
class Once(Generic[T]):
    """What ``run_once`` did: the response, and the work's result if it ran now."""

    response: StoredResponse
    result: T | None  # None when the response was replayed


async def run_once(
    pool: asyncpg.Pool,
    request: IdempotentRequest,
    work: Callable[[Connection], Awaitable[T]],
    body: Callable[[T], object],
    on_retry: Callable[[str], None] = lambda reason: None,
) -> Once[T]:
    """Run ``work`` at most once per key, and store ``body(result)`` as its answer in the
    same transaction; replay that answer afterwards."""
    return await retry_transient(lambda: _attempt(pool, request, work, body), on_retry)


async def retry_transient(
    transaction: Callable[[], Awaitable[T]], on_retry: Callable[[str], None]
) -> T:
    """Run a whole transaction again after a deadlock or serialization failure."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return await transaction()
        except RETRYABLE as error:
            if attempt == MAX_ATTEMPTS:
                raise
            on_retry(type(error).__name__)
    raise AssertionError("unreachable")


async def _attempt(
    pool: asyncpg.Pool,
    request: IdempotentRequest,
    work: Callable[[Connection], Awaitable[T]],
    body: Callable[[T], object],
) -> Once[T]:
    async with pool.acquire() as conn, conn.transaction():
        if not await queries.try_lock(conn, request.user_id, request.key):
            raise IdempotencyKeyInFlight()
        previous = await queries.stored(conn, request.user_id, request.key)
        if previous is not None:
            if bytes(previous["fingerprint"]) != request.fingerprint:
                raise IdempotencyKeyReused()
            stored = StoredResponse(previous["status_code"], bytes(previous["response_body"]), True)
            return Once(stored, None)
        result = await work(conn)
        answer = dumps(body(result))
        await queries.store(
            conn,
            user_id=request.user_id,
            key=request.key,
            fingerprint=request.fingerprint,
            status_code=request.status,
            body=answer,
            ttl=KEY_TTL,
        )
    return Once(StoredResponse(request.status, answer, False), result)
