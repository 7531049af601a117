"""Users and refresh tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from db.types import Connection, Queryable


async def insert_user(
    conn: Connection, *, email: str, password_hash: str, nickname: str, region: str
) -> asyncpg.Record:
    """A user and their empty wallet; ``asyncpg.UniqueViolationError`` if the email is taken."""
    row = await conn.fetchrow(
        "WITH created AS ("
        "  INSERT INTO users (email, password_hash, nickname, region) VALUES ($1, $2, $3, $4)"
        "  RETURNING id, email, nickname, region, created_at),"
        " wallet AS (INSERT INTO wallets (user_id) SELECT id FROM created)"
        " SELECT * FROM created",
        email,
        password_hash,
        nickname,
        region,
    )
    assert row is not None
    return row


async def user_by_id(conn: Queryable, user_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, email, nickname, region, created_at FROM users WHERE id = $1",
        user_id,
    )


async def credentials_by_email(conn: Queryable, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, password_hash FROM users WHERE lower(email) = lower($1)", email
    )


async def insert_refresh_token(
    conn: Connection,
    *,
    user_id: int,
    family_id: uuid.UUID,
    token_hash: bytes,
    expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at) "
        "VALUES ($1, $2, $3, $4)",
        user_id,
        family_id,
        token_hash,
        expires_at,
    )


async def lock_refresh_token(conn: Connection, token_hash: bytes) -> asyncpg.Record | None:
    """The token's row, locked so two concurrent refreshes with it cannot both rotate it."""
    return await conn.fetchrow(
        "SELECT user_id, family_id, expires_at, rotated_at, revoked_at "
        "FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        token_hash,
    )


async def mark_rotated(conn: Connection, token_hash: bytes) -> None:
    await conn.execute(
        "UPDATE refresh_tokens SET rotated_at = now() WHERE token_hash = $1", token_hash
    )


async def revoke_family(conn: Connection, family_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
        family_id,
    )
