"""Wallet balances and top-ups."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from db.types import Connection, Queryable


async def balance(conn: Queryable, user_id: int) -> int | None:
    value: int | None = await conn.fetchval(
        "SELECT balance FROM wallets WHERE user_id = $1", user_id
    )
    return value


async def top_up(conn: Connection, user_id: int, amount: int) -> int:
    """Record the top-up and credit it; returns the new balance."""
    await conn.execute("INSERT INTO topups (user_id, amount) VALUES ($1, $2)", user_id, amount)
    return await credit(conn, user_id, amount)


async def credit(conn: Connection, user_id: int, amount: int) -> int:
    new_balance: int = await conn.fetchval(
        "UPDATE wallets SET balance = balance + $2, updated_at = now()"
        " WHERE user_id = $1 RETURNING balance",
        user_id,
        amount,
    )
    return new_balance


async def debit_if_covered(conn: Connection, user_id: int, amount: int) -> int | None:
    """Take ``amount`` only if the balance covers it; the new balance, or None if it does not."""
    value: int | None = await conn.fetchval(
        "UPDATE wallets SET balance = balance - $2, updated_at = now()"
        " WHERE user_id = $1 AND balance >= $2 RETURNING balance",
        user_id,
        amount,
    )
    return value


async def lock_wallets(conn: Connection, user_ids: Sequence[int]) -> dict[int, int]:
    """Row-lock wallets in ascending user id, the one global order every locker follows."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT user_id, balance FROM wallets WHERE user_id = any($1::bigint[])"
        " ORDER BY user_id FOR UPDATE",
        sorted(set(user_ids)),
    )
    return {row["user_id"]: row["balance"] for row in rows}
