"""Listings, their ready photos, and likes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from db.types import Connection, Queryable

# Every column a listing's representation needs, with its ready photos as a json array.
LISTING_SELECT = """
SELECT l.id, l.seller_id, l.title, l.description, l.price, l.quantity, l.category, l.region,
       l.status, l.like_count, l.version, l.created_at, l.updated_at,
       COALESCE((
           SELECT json_agg(json_build_object(
                      'id', p.id, 'key', p.object_key, 'content_type', p.content_type)
                  ORDER BY p.created_at, p.id)
           FROM listing_photos p WHERE p.listing_id = l.id AND p.status = 'ready'
       ), '[]'::json) AS photos
FROM listings l
"""

EDITABLE_COLUMNS = ("title", "description", "price", "quantity", "category", "status")


async def insert_listing(
    conn: Connection,
    *,
    seller_id: int,
    title: str,
    description: str,
    price: int,
    quantity: int,
    category: str,
    region: str,
) -> asyncpg.Record:
    listing_id = await conn.fetchval(
        "INSERT INTO listings (seller_id, title, description, price, quantity, category, region,"
        " status) VALUES ($1, $2, $3, $4, $5, $6, $7,"
        " CASE WHEN $5::int = 0 THEN 'sold' ELSE 'on_sale' END) RETURNING id",
        seller_id,
        title,
        description,
        price,
        quantity,
        category,
        region,
    )
    row = await listing_by_id(conn, listing_id)
    assert row is not None
    return row


async def listing_by_id(conn: Queryable, listing_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(LISTING_SELECT + " WHERE l.id = $1", listing_id)


async def listings_by_id(conn: Queryable, listing_ids: Sequence[int]) -> dict[int, asyncpg.Record]:
    """The listings of ``listing_ids`` that exist, by id (one statement for all of them)."""
    rows = await conn.fetch(LISTING_SELECT + " WHERE l.id = ANY($1::bigint[])", listing_ids)
    return {row["id"]: row for row in rows}


async def lock_listing(conn: Connection, listing_id: int) -> asyncpg.Record | None:
    """The listing's editable columns, row-locked until the transaction ends."""
    return await conn.fetchrow(
        "SELECT id, seller_id, title, description, price, quantity, category, region, status,"
        " version FROM listings WHERE id = $1 FOR UPDATE",
        listing_id,
    )


async def update_listing(conn: Connection, listing_id: int, changes: dict[str, Any]) -> None:
    """Apply ``changes`` (keys from EDITABLE_COLUMNS) and bump the version."""
    assignments = []
    values: list[Any] = [listing_id]
    for column, value in changes.items():
        if column not in EDITABLE_COLUMNS:
            raise ValueError(f"not an editable column: {column}")
        values.append(value)
        assignments.append(f"{column} = ${len(values)}")
    assignments += ["version = version + 1", "updated_at = now()"]
    await conn.execute(
        f"UPDATE listings SET {', '.join(assignments)} WHERE id = $1",
        *values,
    )


@dataclass(frozen=True, slots=True)
class FeedFilter:
    region: str | None = None
    category: str | None = None
    status: str | None = None
    seller_id: int | None = None
    min_price: int | None = None
    max_price: int | None = None
    query: str | None = None
    before_id: int | None = None


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def feed_sql(feed: FeedFilter, limit: int) -> tuple[str, list[Any]]:
    """The keyset-paginated feed query for ``feed``: newest first, ``limit`` rows."""
    conditions: list[str] = []
    params: list[Any] = []

    def where(template: str, value: Any) -> None:
        params.append(value)
        conditions.append(template.format(f"${len(params)}"))

    if feed.status is None:
        conditions.append("l.status <> 'hidden'")
    else:
        where("l.status = {}", feed.status)
    if feed.region is not None:
        where("l.region = {}", feed.region)
    if feed.category is not None:
        where("l.category = {}", feed.category)
    if feed.seller_id is not None:
        where("l.seller_id = {}", feed.seller_id)
    if feed.min_price is not None:
        where("l.price >= {}", feed.min_price)
    if feed.max_price is not None:
        where("l.price <= {}", feed.max_price)
    if feed.query is not None:
        where("(l.title || ' ' || l.description) ILIKE {}", _like_pattern(feed.query))
    if feed.before_id is not None:
        where("l.id < {}", feed.before_id)
    params.append(limit)
    where_sql = " AND ".join(conditions)
    sql = f"{LISTING_SELECT} WHERE {where_sql} ORDER BY l.id DESC LIMIT ${len(params)}"
    return sql, params


async def feed_page(conn: Queryable, feed: FeedFilter, limit: int) -> Sequence[asyncpg.Record]:
    sql, params = feed_sql(feed, limit)
    return await conn.fetch(sql, *params)


async def add_like(conn: Connection, listing_id: int, user_id: int) -> asyncpg.Record | None:
    """Like once: returns the listing's new like_count and seller, or None if already liked."""
    return await conn.fetchrow(
        "WITH added AS ("
        "  INSERT INTO listing_likes (listing_id, user_id) VALUES ($1, $2)"
        "  ON CONFLICT DO NOTHING RETURNING listing_id)"
        " UPDATE listings SET like_count = like_count + 1"
        " WHERE id = $1 AND EXISTS (SELECT 1 FROM added)"
        " RETURNING like_count, seller_id, region",
        listing_id,
        user_id,
    )


async def remove_like(conn: Connection, listing_id: int, user_id: int) -> asyncpg.Record | None:
    """Unlike: the new like_count, or None when there was no like to remove."""
    return await conn.fetchrow(
        "WITH removed AS ("
        "  DELETE FROM listing_likes WHERE listing_id = $1 AND user_id = $2 RETURNING listing_id)"
        " UPDATE listings SET like_count = like_count - 1"
        " WHERE id = $1 AND EXISTS (SELECT 1 FROM removed)"
        " RETURNING like_count, seller_id, region",
        listing_id,
        user_id,
    )


async def visible_listing_meta(conn: Queryable, listing_id: int) -> asyncpg.Record | None:
    """Seller, region and status of a listing that is not hidden."""
    return await conn.fetchrow(
        "SELECT seller_id, region, status FROM listings WHERE id = $1 AND status <> 'hidden'",
        listing_id,
    )


# Columns a purchase or a cancellation needs, returned by the stock updates below.
STOCK_COLUMNS = (
    "id, seller_id, title, price, quantity, category, region, status, like_count, version, fence"
)


async def stock_row(conn: Connection, listing_id: int, *, lock: bool) -> asyncpg.Record | None:
    suffix = " FOR UPDATE" if lock else ""
    return await conn.fetchrow(
        f"SELECT {STOCK_COLUMNS} FROM listings WHERE id = $1{suffix}",
        listing_id,
    )


async def restock(conn: Connection, listing_id: int, quantity: int) -> asyncpg.Record:
    """Give back cancelled stock; a sold listing is on sale again.

    The stock stays within the 10000 a listing may hold: a seller who refilled it in the
    meantime must not turn the buyer's refund into a CHECK violation.
    """
    row = await conn.fetchrow(
        "UPDATE listings SET quantity = least(quantity + $2, 10000),"
        " status = CASE WHEN status = 'sold' THEN 'on_sale' ELSE status END,"
        f" version = version + 1, updated_at = now() WHERE id = $1 RETURNING {STOCK_COLUMNS}",
        listing_id,
        quantity,
    )
    assert row is not None
    return row
