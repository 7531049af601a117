"""Listing rules: who may change what, derived status, and the events each change emits.

Every change and its outbox events are written in one transaction here.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from db.queries import listings as queries
from db.queries.outbox import Event, insert_events
from db.read_batches import ReadBatches
from server.cursors import decode_cursor, encode_cursor
from server.errors import Conflict, Forbidden, NotFound, ValidationFailed
from server.listings.preconditions import IfMatch
from server.listings.schemas import FeedQuery, ListingCreate, ListingPatch

EVENT_FIELDS = (
    "id", "seller_id", "title", "price", "quantity", "category", "region", "status",
    "like_count", "version",
)  # fmt: skip


class ListingNotFound(NotFound):
    slug, title = "listing-not-found", "No such listing"


class NotTheSeller(Forbidden):
    slug, title = "not-the-seller", "Only the seller may change this listing"


class SoldOut(Conflict):
    slug, title = "sold-out", "The listing is sold out: send a quantity with the status"


def event_snapshot(row: asyncpg.Record) -> dict[str, Any]:
    """The listing as events carry it (no photo URLs: those depend on the storage)."""
    return {name: row[name] for name in EVENT_FIELDS}


async def create_listing(pool: asyncpg.Pool, seller_id: int, data: ListingCreate) -> asyncpg.Record:
    async with pool.acquire() as conn, conn.transaction():
        region = data.region or await conn.fetchval(
            "SELECT region FROM users WHERE id = $1", seller_id
        )
        row = await queries.insert_listing(
            conn,
            seller_id=seller_id,
            title=data.title,
            description=data.description,
            price=data.price,
            quantity=data.quantity,
            category=data.category,
            region=region,
        )
        await insert_events(conn, [Event(f"feed:{region}", "listing.created", event_snapshot(row))])
    return row


async def get_listing(reads: ReadBatches[int, asyncpg.Record], listing_id: int) -> asyncpg.Record:
    """A visible listing; hidden ones are gone for everybody. Read with the other requests
    of the same moment (``db/read_batches.py``)."""
    row = await reads.get(listing_id)
    if row is None or row["status"] == "hidden":
        raise ListingNotFound()
    return row


def _changes(current: asyncpg.Record, patch: ListingPatch) -> dict[str, Any]:
    """The columns that really change, with the status that follows from quantity."""
    given = patch.model_dump(exclude_unset=True)
    nulls = [name for name, value in given.items() if value is None]
    if nulls:
        raise ValidationFailed(
            [{"field": name, "code": "null", "message": "may not be null"} for name in nulls]
        )
    changes = {name: value for name, value in given.items() if value != current[name]}
    quantity = changes.get("quantity", current["quantity"])
    status = changes.get("status", current["status"])
    if quantity == 0:
        if "status" in given and "quantity" in given:  # the request contradicts itself
            raise ValidationFailed(
                [{"field": "status", "code": "sold_out", "message": "quantity 0 means sold"}]
            )
        if "status" in given:  # the listing's state does
            raise SoldOut()
        status = "sold"
    elif current["status"] == "sold":
        status = given.get("status", "on_sale")
    if status != current["status"]:
        changes["status"] = status
    else:
        changes.pop("status", None)
    return changes


def _events(before: asyncpg.Record, after: asyncpg.Record, changed: set[str]) -> list[Event]:
    channel = f"listing:{after['id']}"
    snapshot = event_snapshot(after)
    events = []
    if "price" in changed:
        events.append(
            Event(channel, "listing.price_changed", {**snapshot, "old_price": before["price"]})
        )
    if "status" in changed:
        events.append(
            Event(channel, "listing.status_changed", {**snapshot, "old_status": before["status"]})
        )
    if "quantity" in changed:
        events.append(
            Event(
                channel, "listing.stock_changed", {**snapshot, "old_quantity": before["quantity"]}
            )
        )
    other = sorted(changed - {"price", "status", "quantity"})
    if other:
        events.append(Event(channel, "listing.updated", {**snapshot, "changed": other}))
    return events


async def _lock_for_seller(
    conn: Any, listing_id: int, user_id: int, if_match: IfMatch
) -> asyncpg.Record:
    """The locked listing: 404, then 403, and only then the precondition (428/412)."""
    current = await queries.lock_listing(conn, listing_id)
    if current is None or current["status"] == "hidden":
        raise ListingNotFound()
    if current["seller_id"] != user_id:
        raise NotTheSeller()
    if_match.check(listing_id, current["version"])
    return current


async def update_listing(
    pool: asyncpg.Pool,
    listing_id: int,
    user_id: int,
    if_match: IfMatch,
    patch: ListingPatch,
) -> tuple[asyncpg.Record, bool]:
    """Apply a seller's edit if ``if_match`` holds; returns (listing, changed)."""
    async with pool.acquire() as conn, conn.transaction():
        current = await _lock_for_seller(conn, listing_id, user_id, if_match)
        changes = _changes(current, patch)
        if changes:
            await queries.update_listing(conn, listing_id, changes)
        row = await queries.listing_by_id(conn, listing_id)
        assert row is not None
        if changes:
            await insert_events(conn, _events(current, row, set(changes)))
    return row, bool(changes)


async def hide_listing(
    pool: asyncpg.Pool, listing_id: int, user_id: int, if_match: IfMatch
) -> asyncpg.Record:
    """DELETE: the listing becomes hidden (orders may still refer to it)."""
    async with pool.acquire() as conn, conn.transaction():
        current = await _lock_for_seller(conn, listing_id, user_id, if_match)
        await queries.update_listing(conn, listing_id, {"status": "hidden"})
        row = await queries.listing_by_id(conn, listing_id)
        assert row is not None
        await insert_events(conn, _events(current, row, {"status"}))
    return row


async def list_listings(
    pool: asyncpg.Pool, query: FeedQuery
) -> tuple[list[asyncpg.Record], str | None]:
    """One page, newest first; ids only decrease along pages, so inserts never shift them."""
    feed = queries.FeedFilter(
        region=query.region,
        category=query.category,
        status=query.status,
        seller_id=query.seller,
        min_price=query.min_price,
        max_price=query.max_price,
        query=query.q,
        before_id=decode_cursor(query.cursor) if query.cursor else None,
    )
    rows = list(await queries.feed_page(pool, feed, query.limit + 1))
    if len(rows) <= query.limit:
        return rows, None
    rows = rows[: query.limit]
    return rows, encode_cursor(rows[-1]["id"])


async def like_listing(pool: asyncpg.Pool, listing_id: int, user_id: int, liked: bool) -> str:
    """Like or unlike, idempotently; returns the listing's region (for cache invalidation)."""
    async with pool.acquire() as conn, conn.transaction():
        meta = await queries.visible_listing_meta(conn, listing_id)
        if meta is None:
            raise ListingNotFound()
        if liked:
            result = await queries.add_like(conn, listing_id, user_id)
        else:
            result = await queries.remove_like(conn, listing_id, user_id)
        if result is not None:
            data = {
                "listing_id": listing_id,
                "like_count": result["like_count"],
                "liked": liked,
                "user_id": user_id,
            }
            events = [Event(f"listing:{listing_id}", "listing.liked", data)]
            if liked:
                events.append(Event(f"user:{result['seller_id']}", "listing.liked", data))
            await insert_events(conn, events)
    region: str = meta["region"]
    return region
