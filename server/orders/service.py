"""Orders: buying, who sees an order, and the only legal moves: paid -> completed | cancelled.

Each move and its outbox events are written in one transaction (``purchase``, ``complete``,
``cancel``); the functions the handlers call run that transaction once per idempotency key
and, when it ran now, tell the listing cache afterwards.
"""

from __future__ import annotations

import dataclasses

import asyncpg

from db.queries import listings as listing_queries
from db.queries import orders as queries
from db.queries import wallets as wallet_queries
from db.queries.outbox import Event, insert_events
from db.types import Connection
from server.errors import Problem
from server.idempotency import IdempotentRequest, StoredResponse, retry_transient, run_once
from server.listings.cache import ListingCache
from server.listings.service import event_snapshot
from server.metrics import Metrics
from server.orders.errors import IllegalTransition, NotTheBuyer, OrderNotFound
from server.orders.gate import ListingGate
from server.orders.locks import PurchaseLocks
from server.orders.purchase import Purchase, PurchaseRequest, order_out, purchase
from server.orders.queue import PurchaseQueue
from server.orders.schemas import OrderOut


async def purchase_listing(
    pool: asyncpg.Pool,
    idempotent: IdempotentRequest,
    request: PurchaseRequest,
    *,
    strategy: str,
    metrics: Metrics,
    locks: PurchaseLocks,
    gate: ListingGate,
    cache: ListingCache,
    queue: PurchaseQueue | None = None,
) -> StoredResponse:
    """Buy once per idempotency key, one of the listing's turns in this process (``gate``)
    at a time; the redis_lock strategy holds the listing's lock around the call and hands
    its fencing token in; the queue strategy appends the purchase to the log and waits for
    its outcome."""

    async def buy() -> Purchase:
        # The turn first, then the connection: a buyer waiting for its turn holds none.
        async with gate.turn(request.listing_id), pool.acquire() as conn:
            # No transaction: the call commits by itself.
            return await purchase(conn, idempotent, request, strategy, metrics)

    async def buy_locked() -> Purchase:
        # The connection before the lock: the lock is held while the purchase is in the
        # database, never while it waits for the pool.
        async with gate.turn(request.listing_id), pool.acquire() as conn:

            async def call(fence: int) -> Purchase:
                fenced = dataclasses.replace(request, fence=fence)
                return await purchase(conn, idempotent, fenced, strategy, metrics)

            return await locks.run(request.listing_id, call)

    try:
        if strategy == "redis_lock":
            bought = await retry_transient(buy_locked, metrics.transaction_retried)
        elif strategy == "queue":
            assert queue is not None, "the queue strategy needs its queue"
            bought = await queue.purchase(idempotent, request)
        else:
            bought = await retry_transient(buy, metrics.transaction_retried)
    except Problem as problem:
        metrics.purchases.labels(strategy, problem.slug).inc()
        raise
    response = bought.response
    metrics.purchases.labels(strategy, "replayed" if response.replayed else "paid").inc()
    if bought.region is not None:  # bought now, not replayed: the listing's stock moved
        await cache.changed(request.listing_id, bought.region)
    return response


async def complete_order(
    pool: asyncpg.Pool, idempotent: IdempotentRequest, order_id: int, user_id: int, metrics: Metrics
) -> StoredResponse:
    """The buyer confirms receipt, once per idempotency key."""
    once = await run_once(
        pool,
        idempotent,
        lambda conn: complete(conn, order_id, user_id),
        order_out,
        metrics.transaction_retried,
    )
    return once.response


async def cancel_order(
    pool: asyncpg.Pool,
    idempotent: IdempotentRequest,
    order_id: int,
    user_id: int,
    metrics: Metrics,
    cache: ListingCache,
) -> StoredResponse:
    """Buyer or seller calls the order off, once per idempotency key."""
    once = await run_once(
        pool,
        idempotent,
        lambda conn: cancel(conn, order_id, user_id),
        lambda done: order_out(done[0]),
        metrics.transaction_retried,
    )
    if once.result is not None:  # cancelled now, not replayed: the listing was restocked
        _, listing = once.result
        await cache.changed(listing["id"], listing["region"])
    return once.response


def _visible_to(order: asyncpg.Record | None, user_id: int) -> asyncpg.Record:
    """Other people's orders are answered 404, as if they did not exist."""
    if order is None or user_id not in (order["buyer_id"], order["seller_id"]):
        raise OrderNotFound()
    return order


async def get_order(pool: asyncpg.Pool, order_id: int, user_id: int) -> OrderOut:
    return order_out(_visible_to(await queries.order_by_id(pool, order_id), user_id))


async def list_orders(
    pool: asyncpg.Pool, user_id: int, role: str, before_id: int | None, limit: int
) -> tuple[list[OrderOut], int | None]:
    """A page of the user's orders, newest first, and the id the next page starts before."""
    rows = list(
        await queries.orders_page(
            pool, user_id=user_id, role=role, before_id=before_id, limit=limit + 1
        )
    )
    last = rows[limit - 1]["id"] if len(rows) > limit else None
    return [order_out(row) for row in rows[:limit]], last


def _order_events(order: asyncpg.Record, event_type: str) -> list[Event]:
    data = order_out(order).model_dump(mode="json")
    return [
        Event(f"user:{order['buyer_id']}", event_type, data),
        Event(f"user:{order['seller_id']}", event_type, data),
    ]


async def complete(conn: Connection, order_id: int, user_id: int) -> asyncpg.Record:
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


async def cancel(
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
