"""Stored first responses of money-moving requests, keyed by (user, Idempotency-Key)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from db.types import Connection, Queryable


async def try_lock(conn: Connection, user_id: int, key: str) -> bool:
    """A transaction-scoped advisory lock on the key: False while another request holds it."""
    locked: bool = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($2, $1))", user_id, key
    )
    return locked


async def stored(conn: Connection, user_id: int, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT fingerprint, status_code, response_body FROM idempotency_keys"
        " WHERE user_id = $1 AND key = $2 AND expires_at > now()",
        user_id,
        key,
    )


async def store(
    conn: Connection,
    *,
    user_id: int,
    key: str,
    fingerprint: bytes,
    status_code: int,
    body: bytes,
    ttl: timedelta,
) -> None:
    """Save the response; an expired row under the same key is replaced."""
    await conn.execute(
        "INSERT INTO idempotency_keys"
        " (user_id, key, fingerprint, status_code, response_body, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, now() + $6)"
        " ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,"
        " status_code = excluded.status_code, response_body = excluded.response_body,"
        " created_at = now(), expires_at = excluded.expires_at",
        user_id,
        key,
        fingerprint,
        status_code,
        body,
        ttl,
    )


async def delete_expired(conn: Queryable, batch: int = 1000) -> int:
    result: str = await conn.execute(
        "DELETE FROM idempotency_keys WHERE ctid = any(ARRAY("
        " SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))",
        batch,
    )
    return int(result.split()[-1])
