"""A purchase: one call of the database's ``purchase_listing()``, the stock taken by one of
four strategies.

The call runs outside any explicit transaction, so it commits as it returns: the key's
lock and replay check, the listing, the stock, the debit, the order, its events and the
stored response happen in the server, and the listing's row stays locked for no round
trip to this process (with one hot listing, throughput is one over that time). The SQL
is in db/migrations/0008_purchase_function.sql. Whatever the strategy, stock and wallet
CHECK constraints are the last line of defence, and locks are taken in one global order
(order row, then listing, then wallets), so purchases, cancellations and completions
never deadlock one another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from db.queries import orders as order_queries
from db.queries.outbox import events_written
from db.types import Connection
from server.errors import Problem
from server.idempotency import (
    KEY_TTL,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    IdempotentRequest,
    StoredResponse,
)
from server.listings.service import ListingNotFound
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

# How each strategy takes the stock (``take`` of purchase_listing()):
STRATEGIES = {
    "atomic": "atomic",  # one conditional UPDATE decides
    "pessimistic": "locked",  # SELECT ... FOR UPDATE, check, write
    "optimistic": "version",  # write if the version read is unchanged; read again on a miss
    "redis_lock": "fenced",  # under the Redis lock, with a newer fencing token than the last
}


@dataclass(frozen=True, slots=True)
class PurchaseRequest:
    buyer_id: int
    listing_id: int
    quantity: int
    fence: int | None = None  # the Redis lock's fencing token (redis_lock strategy only)


@dataclass(frozen=True, slots=True)
class Purchase:
    response: StoredResponse
    region: str | None  # the listing's, when bought now (None when replayed)


class StaleFence(PurchaseConflict):
    """Our Redis lock expired and a later holder already wrote; carries the fence seen."""

    def __init__(self, seen: int) -> None:
        super().__init__("the purchase lock expired; try again")
        self.seen = seen


# The problem each refusal of purchase_listing() stands for, by slug, given its detail.
REFUSALS: dict[str, Callable[[str | None], Problem]] = {
    "idempotency-key-in-flight": lambda detail: IdempotencyKeyInFlight(),
    "idempotency-key-reused": lambda detail: IdempotencyKeyReused(),
    "listing-not-found": lambda detail: ListingNotFound(),
    "own-listing": lambda detail: OwnListing(),
    "listing-not-on-sale": lambda detail: ListingNotOnSale(),
    "insufficient-stock": InsufficientStock,
    "insufficient-funds": InsufficientFunds,
    "purchase-conflict": PurchaseConflict,
    "stale-fence": lambda detail: StaleFence(int(detail or 0)),
}


def refusal(slug: str, detail: str | None) -> Problem | None:
    """The problem a refusal stands for (None: not a refusal of a purchase)."""
    problem = REFUSALS.get(slug)
    return None if problem is None else problem(detail)


async def purchase(
    conn: Connection,
    idempotent: IdempotentRequest,
    request: PurchaseRequest,
    strategy: str,
    metrics: Metrics,
) -> Purchase:
    """Buy once per idempotency key (a key answered already is answered again)."""
    try:
        row = await order_queries.purchase(
            conn,
            buyer_id=request.buyer_id,
            listing_id=request.listing_id,
            quantity=request.quantity,
            take=STRATEGIES[strategy],
            fence=request.fence,
            attempts=OPTIMISTIC_ATTEMPTS,
            key=idempotent.key,
            fingerprint=idempotent.fingerprint,
            answer_status=idempotent.status,
            key_ttl=KEY_TTL,
        )
    except asyncpg.RaiseError as error:
        problem = refusal(error.message, error.detail)
        if problem is None:
            raise
        raise problem from None
    if row["retries"]:
        metrics.purchase_retries.labels(strategy).inc(row["retries"])
    response = StoredResponse(row["status_code"], row["body"].encode(), row["replayed"])
    if response.replayed:
        return Purchase(response, None)
    events_written(
        conn,
        [f"user:{request.buyer_id}", f"user:{row['seller_id']}", f"listing:{request.listing_id}"],
    )
    return Purchase(response, row["region"])


def order_out(order: asyncpg.Record) -> OrderOut:
    return OrderOut(**dict(order))
