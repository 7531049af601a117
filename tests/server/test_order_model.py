"""A hypothesis state machine drives top-ups, purchases, cancels and completes against a model."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import asyncpg
import orjson
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from db.queries import wallets as wallet_queries
from server.errors import Problem
from server.idempotency import IdempotentRequest
from server.metrics import Metrics
from server.orders import purchase as purchase_module
from server.orders import service
from server.orders.purchase import PurchaseRequest, purchase
from server.settings import Settings
from tests.orders_support import check_money, check_order_events, check_stock

T = TypeVar("T")
USERS = 4  # user 0 sells everything; any user may try to buy, cancel or complete
LISTINGS = ((1_000, 3), (2_500, 1), (0, 2))  # (price, stock)
START_BALANCE = 4_000


@dataclass(slots=True)
class ListingModel:
    seller: int
    price: int
    quantity: int
    status: str


@dataclass(slots=True)
class OrderModel:
    buyer: int
    seller: int
    listing: int
    quantity: int
    amount: int
    status: str = "paid"


class MarketMachine(RuleBasedStateMachine):
    """Each step runs the real service code in a transaction, then compares with the model."""

    loop: ClassVar[asyncio.AbstractEventLoop]
    conn: ClassVar[asyncpg.Connection]

    def __init__(self) -> None:
        super().__init__()
        self.metrics = Metrics()
        self.fence = 0
        self.users: list[int] = []
        self.balances: dict[int, int] = {}
        self.listings: dict[int, ListingModel] = {}
        self.orders: dict[int, OrderModel] = {}
        self.run(self._reset())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _reset(self) -> None:
        conn = self.conn
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        names = ", ".join(f'"{row["tablename"]}"' for row in tables)
        await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        for n in range(USERS):
            user_id = await conn.fetchval(
                "INSERT INTO users (email, password_hash, nickname, region)"
                " VALUES ($1, 'x', 'model', 'seoul-mapo') RETURNING id",
                f"model-{n}@example.com",
            )
            await conn.execute("INSERT INTO wallets (user_id) VALUES ($1)", user_id)
            async with conn.transaction():
                await wallet_queries.top_up(conn, user_id, START_BALANCE)
            self.users.append(user_id)
            self.balances[user_id] = START_BALANCE
        for price, stock in LISTINGS:
            listing_id = await conn.fetchval(
                "INSERT INTO listings (seller_id, title, price, quantity, category, region)"
                " VALUES ($1, 'thing', $2, $3, 'etc', 'seoul-mapo') RETURNING id",
                self.users[0],
                price,
                stock,
            )
            self.listings[listing_id] = ListingModel(self.users[0], price, stock, "on_sale")

    async def _attempt(self, work: Coroutine[Any, Any, T]) -> T | str:
        """Run ``work`` in a transaction: its result, or the slug of the problem it raised."""
        try:
            async with self.conn.transaction():
                return await work
        except Problem as problem:
            return problem.slug

    @rule(user=st.integers(0, USERS - 1), amount=st.integers(1, 6_000))
    def top_up(self, user: int, amount: int) -> None:
        user_id = self.users[user]

        async def work() -> int:
            return await wallet_queries.top_up(self.conn, user_id, amount)

        self.balances[user_id] += amount
        assert self.run(self._attempt(work())) == self.balances[user_id]

    @rule(
        user=st.integers(0, USERS - 1),
        pick=st.integers(0, len(LISTINGS) - 1),
        quantity=st.integers(1, 3),
        strategy=st.sampled_from(sorted(purchase_module.STRATEGIES)),
    )
    def buy(self, user: int, pick: int, quantity: int, strategy: str) -> None:
        buyer = self.users[user]
        listing_id = sorted(self.listings)[pick]
        listing = self.listings[listing_id]
        amount = listing.price * quantity
        if listing.status == "hidden":
            expected = "listing-not-found"
        elif listing.seller == buyer:
            expected = "own-listing"
        elif listing.status == "reserved":
            expected = "listing-not-on-sale"
        elif listing.status == "sold" or listing.quantity < quantity:
            expected = "insufficient-stock"
        elif self.balances[buyer] < amount:
            expected = "insufficient-funds"
        else:
            expected = "paid"
        self.fence += 1
        request = PurchaseRequest(buyer, listing_id, quantity, self.fence)
        idempotent = IdempotentRequest.of(
            f"buy-{self.fence}",
            user_id=buyer,
            method="POST",
            path=f"/api/v1/listings/{listing_id}/purchase",
            body={"quantity": quantity},
            status=201,
        )
        bought = purchase(self.conn, idempotent, request, strategy, self.metrics)
        outcome = self.run(self._attempt(bought))
        if isinstance(outcome, str):
            assert outcome == expected
            return
        assert expected == "paid"
        order = orjson.loads(outcome.response.body)
        assert (order["buyer_id"], order["quantity"], order["amount"]) == (
            buyer,
            quantity,
            amount,
        )
        self.balances[buyer] -= amount
        listing.quantity -= quantity
        if listing.quantity == 0:
            listing.status = "sold"
        self.orders[order["id"]] = OrderModel(buyer, listing.seller, listing_id, quantity, amount)

    def _order(self, pick: int) -> tuple[int, OrderModel]:
        order_id = sorted(self.orders)[pick % len(self.orders)]
        return order_id, self.orders[order_id]

    @precondition(lambda self: bool(self.orders))
    @rule(pick=st.integers(0, 1_000), user=st.integers(0, USERS - 1))
    def cancel(self, pick: int, user: int) -> None:
        order_id, order = self._order(pick)
        actor = self.users[user]
        outcome = self.run(self._attempt(service.cancel(self.conn, order_id, actor)))
        if actor not in (order.buyer, order.seller):
            assert outcome == "order-not-found"
        elif order.status != "paid":
            assert outcome == "illegal-order-transition"
        else:
            assert not isinstance(outcome, str), outcome
            assert outcome[0]["status"] == "cancelled"
            order.status = "cancelled"
            self.balances[order.buyer] += order.amount
            listing = self.listings[order.listing]
            listing.quantity = min(listing.quantity + order.quantity, 10_000)
            if listing.status == "sold":
                listing.status = "on_sale"

    @precondition(lambda self: bool(self.orders))
    @rule(pick=st.integers(0, 1_000), user=st.integers(0, USERS - 1))
    def complete(self, pick: int, user: int) -> None:
        order_id, order = self._order(pick)
        actor = self.users[user]
        outcome = self.run(self._attempt(service.complete(self.conn, order_id, actor)))
        if actor not in (order.buyer, order.seller):
            assert outcome == "order-not-found"
        elif actor != order.buyer:
            assert outcome == "not-the-buyer"
        elif order.status != "paid":
            assert outcome == "illegal-order-transition"
        else:
            assert not isinstance(outcome, str), outcome
            assert outcome["status"] == "completed"
            order.status = "completed"
            self.balances[order.seller] += order.amount

    @rule(
        pick=st.integers(0, len(LISTINGS) - 1),
        status=st.sampled_from(["reserved", "hidden", "on_sale"]),
    )
    def seller_sets_status(self, pick: int, status: str) -> None:
        """What the seller may do by PATCH or DELETE: a sold-out listing can only be hidden."""
        listing_id = sorted(self.listings)[pick]
        listing = self.listings[listing_id]
        if listing.quantity == 0 and status != "hidden":
            return
        self.run(
            self.conn.execute(
                "UPDATE listings SET status = $2, version = version + 1 WHERE id = $1",
                listing_id,
                status,
            )
        )
        listing.status = status

    @invariant()
    def database_matches_the_model(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        conn = self.conn
        wallets = await conn.fetch("SELECT user_id, balance FROM wallets")
        assert {row["user_id"]: row["balance"] for row in wallets} == self.balances
        listings = await conn.fetch("SELECT id, quantity, status FROM listings")
        assert {row["id"]: (row["quantity"], row["status"]) for row in listings} == {
            listing_id: (model.quantity, model.status)
            for listing_id, model in self.listings.items()
        }
        orders = await conn.fetch("SELECT id, status FROM orders")
        assert {row["id"]: row["status"] for row in orders} == {
            order_id: model.status for order_id, model in self.orders.items()
        }
        await check_money(conn)
        await check_order_events(conn)
        for listing_id, (_, stock) in zip(sorted(self.listings), LISTINGS, strict=True):
            await check_stock(conn, listing_id, stock)


async def connect(database_url: str) -> asyncpg.Connection:
    """A connection that encodes json as the app's pool does (outbox rows are json)."""
    conn = await asyncpg.connect(database_url)
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=orjson_text, decoder=orjson.loads, schema="pg_catalog"
        )
    return conn


def orjson_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def test_money_and_stock_invariants_hold_for_any_sequence(settings: Settings) -> None:
    assert settings.database_url is not None
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(connect(settings.database_url))
    bound = type("BoundMarketMachine", (MarketMachine,), {"loop": loop, "conn": conn})
    try:
        run_state_machine_as_test(
            bound,
            settings=hypothesis_settings(
                max_examples=25,
                stateful_step_count=30,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        loop.run_until_complete(conn.close())
        loop.close()
