"""Wallet balances and top-ups."""

from __future__ import annotations

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
