"""Orders: created by a purchase, completed or cancelled once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from db.trace_context import current_traceparent
from db.types import Connection, Queryable

ORDER_COLUMNS = (
    "id, listing_id, buyer_id, seller_id, quantity, unit_price, amount, status,"
    " created_at, updated_at"
)


# The whole purchase in one call (db/migrations/0008_purchase_function.sql); made outside
# any explicit transaction, it commits as it returns.
PURCHASE = "SELECT * FROM purchase_listing($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
# The same, its events carrying the trace context $11 (0013_outbox_trace_context.sql).
PURCHASE_TRACED = (
    "SELECT * FROM purchase_listing_traced($11, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)


async def purchase(
    conn: Connection,
    *,
    buyer_id: int,
    listing_id: int,
    quantity: int,
    take: str,
    fence: int | None,
    attempts: int,
    key: str,
    fingerprint: bytes,
    answer_status: int,
    key_ttl: timedelta,
) -> asyncpg.Record:
    """(replayed, status_code, body, region, seller_id, retries); refusals raise
    ``asyncpg.RaiseError`` with the problem's slug as its message."""
    trace = current_traceparent()
    row = await conn.fetchrow(
        PURCHASE if trace is None else PURCHASE_TRACED,
        buyer_id,
        listing_id,
        quantity,
        take,
        fence,
        attempts,
        key,
        fingerprint,
        answer_status,
        key_ttl,
        *(() if trace is None else (trace,)),
    )
    assert row is not None
    return row


async def order_by_id(conn: Queryable, order_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1", order_id)


async def lock_order(conn: Connection, order_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 FOR UPDATE",
        order_id,
    )


async def set_status(conn: Connection, order_id: int, status: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        "UPDATE orders SET status = $2, updated_at = now() WHERE id = $1 RETURNING "
        + ORDER_COLUMNS,
        order_id,
        status,
    )
    assert row is not None
    return row


async def orders_page(
    conn: Queryable, *, user_id: int, role: str, before_id: int | None, limit: int
) -> Sequence[asyncpg.Record]:
    column = "buyer_id" if role == "buyer" else "seller_id"
    return await conn.fetch(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE {column} = $1"
        " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        user_id,
        before_id,
        limit,
    )
