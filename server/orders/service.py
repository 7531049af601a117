"""Order rules: who sees an order, and the only legal moves: paid -> completed | cancelled."""

from __future__ import annotations

import asyncpg

from db.queries import listings as listing_queries
from db.queries import orders as queries
from db.queries import wallets as wallet_queries
from db.queries.outbox import Event, insert_events
from db.types import Connection
from server.listings.service import event_snapshot
from server.orders.errors import IllegalTransition, NotTheBuyer, OrderNotFound
from server.orders.purchase import order_json


def _visible_to(order: asyncpg.Record | None, user_id: int) -> asyncpg.Record:
    """Other people's orders are answered 404, as if they did not exist."""
    if order is None or user_id not in (order["buyer_id"], order["seller_id"]):
        raise OrderNotFound()
    return order


async def get_order(pool: asyncpg.Pool, order_id: int, user_id: int) -> asyncpg.Record:
    return _visible_to(await queries.order_by_id(pool, order_id), user_id)


async def list_orders(
    pool: asyncpg.Pool, user_id: int, role: str, before_id: int | None, limit: int
) -> tuple[list[asyncpg.Record], int | None]:
    rows = list(
        await queries.orders_page(
            pool, user_id=user_id, role=role, before_id=before_id, limit=limit + 1
        )
    )
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], rows[limit - 1]["id"]


def _order_events(order: asyncpg.Record, event_type: str) -> list[Event]:
    data = order_json(order)
    return [
        Event(f"user:{order['buyer_id']}", event_type, data),
        Event(f"user:{order['seller_id']}", event_type, data),
    ]


async def complete_order(conn: Connection, order_id: int, user_id: int) -> asyncpg.Record:
    """The buyer confirms receipt: the escrow goes to the seller, once."""
    order = _visible_to(await queries.lock_order(conn, order_id), user_id)
    if order["buyer_id"] != user_id:
        raise NotTheBuyer()
    if order["status"] != "paid":
        raise IllegalTransition(f"the order is {order['status']}")
    await wallet_queries.credit(conn, order["seller_id"], order["amount"])
    completed = await queries.set_status(conn, order_id, "completed")
    await insert_events(conn, _order_events(completed, "order.completed"))
    return completed


async def cancel_order(
    conn: Connection, order_id: int, user_id: int
) -> tuple[asyncpg.Record, asyncpg.Record]:
    """Buyer or seller calls it off while paid: refund, restock; returns (order, listing)."""
    order = _visible_to(await queries.lock_order(conn, order_id), user_id)
    if order["status"] != "paid":
        raise IllegalTransition(f"the order is {order['status']}")
    before = await listing_queries.stock_row(conn, order["listing_id"], lock=True)
    assert before is not None
    listing = await listing_queries.restock(conn, order["listing_id"], order["quantity"])
    await wallet_queries.credit(conn, order["buyer_id"], order["amount"])
    cancelled = await queries.set_status(conn, order_id, "cancelled")
    snapshot = event_snapshot(listing)
    channel = f"listing:{listing['id']}"
    events = _order_events(cancelled, "order.cancelled")
    events.append(
        Event(channel, "listing.stock_changed", {**snapshot, "old_quantity": before["quantity"]})
    )
    if before["status"] != listing["status"]:
        events.append(
            Event(channel, "listing.status_changed", {**snapshot, "old_status": before["status"]})
        )
    await insert_events(conn, events)
    return cancelled, listing
