"""Listing photos: upload slots, their completion, and the listing rows they change."""

from __future__ import annotations

import uuid

import asyncpg

from db.types import Connection, Queryable


async def lock_listing_for_photos(conn: Connection, listing_id: int) -> asyncpg.Record | None:
    """Seller and status of a listing, locked so photo counts cannot race.

    ``FOR NO KEY UPDATE`` (what an UPDATE takes) rather than ``FOR UPDATE``: inserts of
    likes, orders or photos referencing the listing are not blocked by it.
    """
    return await conn.fetchrow(
        "SELECT seller_id, status FROM listings WHERE id = $1 FOR NO KEY UPDATE", listing_id
    )


async def count_photo_slots(conn: Connection, listing_id: int, ticket_ttl: int) -> int:
    """Ready photos plus pending ones whose upload ticket may still be used."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM listing_photos WHERE listing_id = $1"
        " AND (status = 'ready' OR created_at > now() - make_interval(secs => $2))",
        listing_id,
        float(ticket_ttl),
    )
    return count


async def count_ready_photos(conn: Connection, listing_id: int) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM listing_photos WHERE listing_id = $1 AND status = 'ready'",
        listing_id,
    )
    return count


async def insert_photo(
    conn: Connection,
    *,
    photo_id: uuid.UUID,
    listing_id: int,
    object_key: str,
    content_type: str,
    size_bytes: int,
) -> None:
    await conn.execute(
        "INSERT INTO listing_photos (id, listing_id, object_key, content_type, size_bytes)"
        " VALUES ($1, $2, $3, $4, $5)",
        photo_id,
        listing_id,
        object_key,
        content_type,
        size_bytes,
    )


async def photo_of_listing(
    conn: Queryable, listing_id: int, photo_id: uuid.UUID
) -> asyncpg.Record | None:
    """The listing's seller and status with the photo's columns (NULL when it has no such photo).

    None when the listing itself does not exist.
    """
    return await conn.fetchrow(
        "SELECT l.seller_id, l.status AS listing_status, p.id, p.object_key, p.content_type,"
        " p.size_bytes, p.status"
        " FROM listings l LEFT JOIN listing_photos p ON p.listing_id = l.id AND p.id = $2"
        " WHERE l.id = $1",
        listing_id,
        photo_id,
    )


async def mark_photo_ready(conn: Connection, photo_id: uuid.UUID) -> bool:
    """Pending -> ready; False when another request completed it first."""
    updated = await conn.fetchval(
        "UPDATE listing_photos SET status = 'ready', completed_at = now()"
        " WHERE id = $1 AND status = 'pending' RETURNING id",
        photo_id,
    )
    return updated is not None


async def bump_listing_version(conn: Connection, listing_id: int) -> asyncpg.Record:
    """+1 on the listing's version (so cached representations are replaced); its new state."""
    row = await conn.fetchrow(
        "UPDATE listings SET version = version + 1, updated_at = now() WHERE id = $1"
        " RETURNING id, seller_id, title, price, quantity, category, region, status,"
        " like_count, version",
        listing_id,
    )
    assert row is not None, "the caller holds the listing's row lock"
    return row


async def delete_abandoned_photos(conn: Queryable, older_than_s: int, limit: int) -> list[str]:
    """Forget pending photos asked for longer ago than ``older_than_s`` (their tickets are
    dead); returns their object keys. A photo completed meanwhile is ready, so it stays."""
    rows = await conn.fetch(
        "DELETE FROM listing_photos WHERE id = any(ARRAY("
        " SELECT id FROM listing_photos WHERE status = 'pending'"
        " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2))"
        " AND status = 'pending' RETURNING object_key",
        older_than_s,
        limit,
    )
    return [row["object_key"] for row in rows]
