"""Problems of purchases and orders, each with its own type so clients can tell them apart."""

from __future__ import annotations

from server.errors import Conflict, Forbidden, NotFound, ServiceUnavailable


class OwnListing(Conflict):
    slug, title = "own-listing", "You cannot buy your own listing"


class ListingNotOnSale(Conflict):
    slug, title = "listing-not-on-sale", "The listing is reserved, not on sale"


class InsufficientStock(Conflict):
    slug, title = "insufficient-stock", "Not enough left to buy that many"


class InsufficientFunds(Conflict):
    slug, title = "insufficient-funds", "Your wallet balance does not cover this purchase"


class PurchaseConflict(Conflict):
    slug, title = "purchase-conflict", "Too many buyers at once; try again"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class OrderNotFound(NotFound):
    slug, title = "order-not-found", "No such order"


class NotTheBuyer(Forbidden):
    slug, title = "not-the-buyer", "Only the buyer may do this"


class IllegalTransition(Conflict):
    slug, title = "illegal-order-transition", "The order is no longer paid"


class PurchasePending(ServiceUnavailable):
    slug = "purchase-pending"
    title = "The purchase is queued but not decided yet; retry with the same Idempotency-Key"
