"""A purchase in one transaction, with the stock taken by one of four strategies.

Whatever the strategy: stock and wallet CHECK constraints are the last line of
defence, the buyer is debited with a conditional UPDATE, and the order and its events
are written in the same transaction. Locks are always taken in one global order
(order row, then listing, then wallets by ascending user id), so purchases,
cancellations and completions never deadlock one another.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from db.queries import listings as listing_queries
from db.queries import orders as order_queries
from db.queries import wallets as wallet_queries
from db.queries.outbox import Event, insert_events
from db.types import Connection
from server.listings.service import ListingNotFound, event_snapshot
from server.metrics import Metrics
from server.orders.errors import (
    InsufficientFunds,
    InsufficientStock,
    ListingNotOnSale,
    OwnListing,
    PurchaseConflict,
)
from server.orders.schemas import OrderOut

OPTIMISTIC_ATTEMPTS = 8
OPTIMISTIC_BACKOFF_S = 0.004  # doubled per attempt, full jitter


@dataclass(frozen=True, slots=True)
class PurchaseRequest:
    buyer_id: int
    listing_id: int
    quantity: int
    fence: int | None = None  # the Redis lock's fencing token (redis_lock strategy only)


@dataclass(frozen=True, slots=True)
class Purchase:
    order: asyncpg.Record
    listing: asyncpg.Record


T = TypeVar("T")
TakeStock = Callable[[Connection, PurchaseRequest, Metrics], Awaitable[asyncpg.Record]]


def check_purchasable(listing: asyncpg.Record | None, request: PurchaseRequest) -> None:
    """Raise the problem that explains why ``listing`` cannot be bought; else return."""
    if listing is None or listing["status"] == "hidden":
        raise ListingNotFound()
    if listing["seller_id"] == request.buyer_id:
        raise OwnListing()
    if listing["status"] == "reserved":
        raise ListingNotOnSale()
    if listing["status"] == "sold" or listing["quantity"] < request.quantity:
        raise InsufficientStock(f"{listing['quantity']} left")


async def _explain_refusal(conn: Connection, request: PurchaseRequest) -> None:
    check_purchasable(
        await listing_queries.stock_row(conn, request.listing_id, lock=False), request
    )


async def take_stock_atomic(
    conn: Connection, request: PurchaseRequest, metrics: Metrics
) -> asyncpg.Record:
    """One conditional UPDATE decides; the row lock lasts only until commit."""
    row = await listing_queries.take_stock_if_available(
        conn, request.listing_id, request.quantity, request.buyer_id
    )
    if row is None:
        await _explain_refusal(conn, request)
        raise InsufficientStock()
    return row


async def take_stock_pessimistic(
    conn: Connection, request: PurchaseRequest, metrics: Metrics
) -> asyncpg.Record:
    """SELECT ... FOR UPDATE the listing, then both wallets in ascending user id."""
    listing = await listing_queries.stock_row(conn, request.listing_id, lock=True)
    check_purchasable(listing, request)
    assert listing is not None
    balances = await wallet_queries.lock_wallets(conn, [request.buyer_id, listing["seller_id"]])
    if balances.get(request.buyer_id, 0) < listing["price"] * request.quantity:
        raise InsufficientFunds()
    row = await listing_queries.set_stock_if_version(
        conn, request.listing_id, listing["quantity"] - request.quantity, listing["version"]
    )
    assert row is not None, "the row is locked; its version cannot have moved"
    return row


async def take_stock_optimistic(
    conn: Connection, request: PurchaseRequest, metrics: Metrics
) -> asyncpg.Record:
    """Read without locking, write only if the version is unchanged; retry on a lost race.

    Retries stay in this transaction: under READ COMMITTED each attempt reads the latest
    commit. Retrying whole transactions instead made each retry queue for a pooled
    connection again, behind every other buyer, and find the version moved once more
    (half the throughput and many exhausted retries in loadtests/benchmarks/purchase.py).
    """

    async def attempt() -> asyncpg.Record:
        listing = await listing_queries.stock_row(conn, request.listing_id, lock=False)
        check_purchasable(listing, request)
        assert listing is not None
        row = await listing_queries.set_stock_if_version(
            conn, request.listing_id, listing["quantity"] - request.quantity, listing["version"]
        )
        if row is None:
            raise VersionMoved()
        return row

    return await with_optimistic_retries(attempt, metrics)


class VersionMoved(PurchaseConflict):
    """Another purchase changed the listing between our read and our write."""

    def __init__(self) -> None:
        super().__init__(f"the listing kept changing ({OPTIMISTIC_ATTEMPTS} attempts)")


async def with_optimistic_retries(attempt: Callable[[], Awaitable[T]], metrics: Metrics) -> T:
    """Run ``attempt`` again after a lost version race, with jittered exponential backoff."""
    for number in range(OPTIMISTIC_ATTEMPTS):
        try:
            return await attempt()
        except VersionMoved:
            if number == OPTIMISTIC_ATTEMPTS - 1:
                raise
            metrics.purchase_retries.labels("optimistic").inc()
            await asyncio.sleep(random.uniform(0, OPTIMISTIC_BACKOFF_S * 2**number))  # noqa: S311
    raise AssertionError("unreachable")


async def take_stock_fenced(
    conn: Connection, request: PurchaseRequest, metrics: Metrics
) -> asyncpg.Record:
    """Under the Redis lock: the conditional UPDATE also demands a newer fencing token."""
    assert request.fence is not None, "the redis_lock strategy needs a fencing token"
    row = await listing_queries.take_stock_if_available(
        conn, request.listing_id, request.quantity, request.buyer_id, fence=request.fence
    )
    if row is not None:
        return row
    current = await listing_queries.stock_row(conn, request.listing_id, lock=False)
    check_purchasable(current, request)
    assert current is not None
    if current["fence"] >= request.fence:
        raise StaleFence(current["fence"])
    raise InsufficientStock()


class StaleFence(PurchaseConflict):
    """Our Redis lock expired and a later holder already wrote; carries the fence seen."""

    def __init__(self, seen: int) -> None:
        super().__init__("the purchase lock expired; try again")
        self.seen = seen


STRATEGIES: dict[str, TakeStock] = {
    "atomic": take_stock_atomic,
    "pessimistic": take_stock_pessimistic,
    "optimistic": take_stock_optimistic,
    "redis_lock": take_stock_fenced,
}


async def purchase(
    conn: Connection, request: PurchaseRequest, strategy: str, metrics: Metrics
) -> Purchase:
    """Take stock, debit the buyer into escrow, create the order, write the events."""
    listing = await STRATEGIES[strategy](conn, request, metrics)
    amount = listing["price"] * request.quantity
    if await wallet_queries.debit_if_covered(conn, request.buyer_id, amount) is None:
        raise InsufficientFunds(f"{amount} needed")
    order = await order_queries.insert_order(
        conn,
        listing_id=listing["id"],
        buyer_id=request.buyer_id,
        seller_id=listing["seller_id"],
        quantity=request.quantity,
        unit_price=listing["price"],
    )
    await insert_events(conn, purchase_events(order, listing))
    return Purchase(order, listing)


def order_out(order: asyncpg.Record) -> OrderOut:
    return OrderOut(**dict(order))


def purchase_events(order: asyncpg.Record, listing: asyncpg.Record) -> list[Event]:
    data = order_out(order).model_dump(mode="json")
    snapshot = event_snapshot(listing)
    old_quantity = listing["quantity"] + order["quantity"]
    events = [
        Event(f"user:{order['buyer_id']}", "order.paid", data),
        Event(f"user:{order['seller_id']}", "order.paid", data),
        Event(
            f"listing:{listing['id']}",
            "listing.stock_changed",
            {**snapshot, "old_quantity": old_quantity},
        ),
    ]
    if listing["status"] == "sold":
        events.append(
            Event(
                f"listing:{listing['id']}",
                "listing.status_changed",
                {**snapshot, "old_status": "on_sale"},
            )
        )
    return events
