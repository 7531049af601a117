"""Purchases under every strategy, and orders: listing, visibility, complete, cancel, replay."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import ClientResponse

from server import keys
from server.idempotency import IdempotentRequest
from server.orders.locks import PurchaseLocks, lock_key
from server.orders.purchase import PurchaseRequest, StaleFence, purchase
from server.settings import RateLimit, Settings
from tests.conftest import ClientFactory
from tests.orders_support import (
    ORDERS,
    REPLAYED,
    STRATEGIES,
    TOPUP,
    JsonObject,
    OutboxRow,
    balance_of,
    check_invariants,
    check_listing_events,
    check_money,
    check_order_events,
    check_stock,
    keyed,
    last_outbox_id,
    listing_body,
    listing_stock,
    order_url,
    outbox_rows,
    problem,
    purchase_url,
    quick_account,
    quick_accounts,
    snapshot,
)
from tests.support import Account, Client

# Pairs of users buying each other's listing at once under the pessimistic strategy.
CROSSWISE_PAIRS = 8
WAIT_TIMEOUT = 20.0  # turns a wait that never ends (a gate, a lock) into a failure

ORDER_FIELDS = {
    "id", "listing_id", "buyer_id", "seller_id", "quantity", "unit_price", "amount", "status",
    "created_at", "updated_at",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Market:
    """A seller's listing and a funded buyer, on an app running one purchase strategy."""

    client: Client
    seller: Account
    buyer: Account
    listing_id: int
    price: int
    stock: int


async def open_market(
    client: Client,
    db: asyncpg.Connection,
    settings: Settings,
    *,
    price: int = 1_000,
    stock: int = 3,
    balance: int = 5_000,
) -> Market:
    seller = await quick_account(db, settings)
    buyer = await quick_account(db, settings, balance=balance)
    listing_id = await new_listing(client, seller, price=price, stock=stock)
    return Market(client, seller, buyer, listing_id, price, stock)


async def new_listing(client: Client, seller: Account, *, price: int, stock: int) -> int:
    response = await client.post(
        "/api/v1/listings", json=listing_body(price, stock), headers=seller.auth
    )
    assert response.status == 201, await response.text()
    listing_id: int = (await response.json())["id"]
    return listing_id


async def buy(
    client: Client,
    buyer: Account,
    listing_id: int | str,
    quantity: int | None = 1,
    key: str | None = None,
) -> ClientResponse:
    body = {} if quantity is None else {"quantity": quantity}
    return await client.post(purchase_url(listing_id), json=body, headers=keyed(buyer, key))


async def bought(
    client: Client, buyer: Account, listing_id: int, quantity: int = 1, key: str | None = None
) -> JsonObject:
    response = await buy(client, buyer, listing_id, quantity, key)
    assert response.status == 201, await response.text()
    assert REPLAYED not in response.headers
    order: JsonObject = await response.json()
    return order


async def act(
    client: Client, account: Account, order_id: int | str, action: str, key: str | None = None
) -> ClientResponse:
    return await client.post(order_url(order_id, action), headers=keyed(account, key))


async def acted(client: Client, account: Account, order_id: int, action: str) -> JsonObject:
    response = await act(client, account, order_id, action)
    assert response.status == 200, await response.text()
    order: JsonObject = await response.json()
    return order


@pytest.fixture(params=STRATEGIES)
async def shop(
    request: pytest.FixtureRequest, make_client: ClientFactory, settings: Settings
) -> Client:
    """The app running one purchase strategy; tests using it run once per strategy."""
    return await make_client(settings.replace(purchase_strategy=request.param))


def kinds(rows: list[OutboxRow]) -> list[tuple[str, str]]:
    return sorted((row.channel, row.type) for row in rows)


# -- purchases, under every strategy ------------------------------------------------------


async def test_a_purchase_takes_stock_and_money_and_writes_events(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings, stock=3, balance=5_000)
    listing_before = await db.fetchrow(
        "SELECT version FROM listings WHERE id = $1", market.listing_id
    )
    assert listing_before is not None
    events_from = await last_outbox_id(db)

    response = await buy(shop, market.buyer, market.listing_id, 2)
    assert response.status == 201, await response.text()
    order = await response.json()
    assert set(order) == ORDER_FIELDS
    assert order["listing_id"] == market.listing_id
    assert order["buyer_id"] == market.buyer.user_id
    assert order["seller_id"] == market.seller.user_id
    assert (order["quantity"], order["unit_price"], order["amount"]) == (2, 1_000, 2_000)
    assert order["status"] == "paid"

    row = await db.fetchrow("SELECT * FROM orders")
    assert row is not None
    assert row["id"] == order["id"]
    assert (row["quantity"], row["amount"], row["status"]) == (2, 2_000, "paid")
    listing = await db.fetchrow(
        "SELECT quantity, status, version FROM listings WHERE id = $1", market.listing_id
    )
    assert listing is not None
    assert (listing["quantity"], listing["status"]) == (1, "on_sale")
    assert listing["version"] > listing_before["version"]
    assert await balance_of(db, market.buyer.user_id) == 3_000
    assert await balance_of(db, market.seller.user_id) == 0  # escrow, not the seller, yet

    events = await outbox_rows(db, events_from)
    assert kinds(events) == sorted(
        [
            (f"user:{market.buyer.user_id}", "order.paid"),
            (f"user:{market.seller.user_id}", "order.paid"),
            (f"listing:{market.listing_id}", "listing.stock_changed"),
        ]
    )
    for event in events:
        if event.type == "order.paid":
            assert event.data["id"] == order["id"]
            assert event.data["amount"] == 2_000
        else:
            assert event.data["quantity"] == 1
            assert event.data["old_quantity"] == 3
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1
    await check_money(db)
    await check_stock(db, market.listing_id, 3)


async def test_buying_the_last_items_sells_the_listing(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings, stock=2)
    events_from = await last_outbox_id(db)
    await bought(shop, market.buyer, market.listing_id, 2)
    assert await listing_stock(db, market.listing_id) == (0, "sold")
    events = await outbox_rows(db, events_from)
    status_events = [event for event in events if event.type == "listing.status_changed"]
    assert len(status_events) == 1
    assert status_events[0].channel == f"listing:{market.listing_id}"
    assert status_events[0].data["status"] == "sold"
    assert status_events[0].data["old_status"] == "on_sale"
    shown = await shop.get(f"/api/v1/listings/{market.listing_id}")
    assert (await shown.json())["status"] == "sold"

    late = await quick_account(db, settings, balance=5_000)
    await problem(await buy(shop, late, market.listing_id), 409, "insufficient-stock")
    await check_listing_events(db, market.listing_id)


async def test_quantity_defaults_to_one(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings)
    response = await buy(shop, market.buyer, market.listing_id, None)
    assert response.status == 201, await response.text()
    assert (await response.json())["quantity"] == 1
    assert await listing_stock(db, market.listing_id) == (2, "on_sale")


async def test_a_free_listing_can_be_bought_with_an_empty_wallet(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings, price=0, balance=0)
    order = await bought(shop, market.buyer, market.listing_id, 3)
    assert order["amount"] == 0
    assert await listing_stock(db, market.listing_id) == (0, "sold")


Setup = Callable[[Market, asyncpg.Connection, Settings], Awaitable[tuple[Account, int, int]]]


async def own_listing(m: Market, db: asyncpg.Connection, s: Settings) -> tuple[Account, int, int]:
    await db.execute("UPDATE wallets SET balance = 5000 WHERE user_id = $1", m.seller.user_id)
    await db.execute("INSERT INTO topups (user_id, amount) VALUES ($1, 5000)", m.seller.user_id)
    return m.seller, m.listing_id, 1


async def reserved(m: Market, db: asyncpg.Connection, s: Settings) -> tuple[Account, int, int]:
    await db.execute("UPDATE listings SET status = 'reserved' WHERE id = $1", m.listing_id)
    return m.buyer, m.listing_id, 1


async def sold_out(m: Market, db: asyncpg.Connection, s: Settings) -> tuple[Account, int, int]:
    first = await quick_account(db, s, balance=10_000)
    await bought(m.client, first, m.listing_id, m.stock)
    return m.buyer, m.listing_id, 1


async def too_many(m: Market, db: asyncpg.Connection, s: Settings) -> tuple[Account, int, int]:
    return m.buyer, m.listing_id, m.stock + 1


async def too_poor(m: Market, db: asyncpg.Connection, s: Settings) -> tuple[Account, int, int]:
    poor = await quick_account(db, s, balance=2 * m.price - 1)
    return poor, m.listing_id, 2


async def hidden(m: Market, db: asyncpg.Connection, s: Settings) -> tuple[Account, int, int]:
    await db.execute("UPDATE listings SET status = 'hidden' WHERE id = $1", m.listing_id)
    return m.buyer, m.listing_id, 1


async def unknown(m: Market, db: asyncpg.Connection, s: Settings) -> tuple[Account, int, int]:
    return m.buyer, m.listing_id + 1000, 1


REFUSALS: list[tuple[Setup, int, str]] = [
    (own_listing, 409, "own-listing"),
    (reserved, 409, "listing-not-on-sale"),
    (sold_out, 409, "insufficient-stock"),
    (too_many, 409, "insufficient-stock"),
    (too_poor, 409, "insufficient-funds"),
    (hidden, 404, "listing-not-found"),
    (unknown, 404, "listing-not-found"),
]


@pytest.mark.parametrize(
    ("setup", "status", "slug"), REFUSALS, ids=[setup.__name__ for setup, _, _ in REFUSALS]
)
async def test_a_refused_purchase_changes_nothing(
    shop: Client,
    db: asyncpg.Connection,
    settings: Settings,
    setup: Setup,
    status: int,
    slug: str,
) -> None:
    market = await open_market(shop, db, settings, stock=3)
    buyer, listing_id, quantity = await setup(market, db, settings)
    before = await snapshot(db)
    for _ in range(2):  # the refusal is not stored: the same key is refused the same way
        response = await buy(shop, buyer, listing_id, quantity, key="refused")
        await problem(response, status, slug)
        assert await snapshot(db) == before
    await check_money(db)


async def test_a_refused_purchase_can_be_retried_with_its_key(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings, balance=500)
    refused = await buy(shop, market.buyer, market.listing_id, 1, key="try-again")
    await problem(refused, 409, "insufficient-funds")
    topped = await shop.post(TOPUP, json={"amount": 500}, headers=keyed(market.buyer))
    assert topped.status == 200
    retried = await buy(shop, market.buyer, market.listing_id, 1, key="try-again")
    assert retried.status == 201, await retried.text()
    assert REPLAYED not in retried.headers
    assert await balance_of(db, market.buyer.user_id) == 0


async def test_malformed_purchases_change_nothing(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings)
    before = await snapshot(db)
    url = purchase_url(market.listing_id)
    bodies: list[Any] = [
        {"quantity": 0},
        {"quantity": -1},
        {"quantity": 10_001},
        {"quantity": "1"},
        {"quantity": 1.5},  # 1.0 is the integer 1 in JSON (and JSON Schema)
        {"quantity": None},
        {"quantity": 1, "unit_price": 1},
        [],
    ]
    for body in bodies:
        response = await shop.post(url, json=body, headers=keyed(market.buyer))
        await problem(response, 422, "validation-failed")
    no_key = await shop.post(url, json={"quantity": 1}, headers=market.buyer.auth)
    await problem(no_key, 400, "idempotency-key-missing")
    no_token = await shop.post(url, json={"quantity": 1}, headers={"Idempotency-Key": "k"})
    await problem(no_token, 401, "invalid-token")
    no_json = await shop.post(url, data=b"quantity=1", headers=keyed(market.buyer))
    await problem(no_json, 415, "unsupported-media-type")
    for not_an_id in ("abc", "99999999999999999999", "-1", "1e3", "%201"):
        await problem(await buy(shop, market.buyer, not_an_id), 404, "listing-not-found")
    assert await snapshot(db) == before


async def test_a_repeated_purchase_is_replayed_not_repeated(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings, stock=2, balance=10_000)
    first = await buy(shop, market.buyer, market.listing_id, 1, key="buy-once")
    assert first.status == 201
    first_body = await first.read()
    after_first = await snapshot(db)

    again = await buy(shop, market.buyer, market.listing_id, 1, key="buy-once")
    assert again.status == 201
    assert again.headers[REPLAYED] == "true"
    assert await again.read() == first_body
    assert await snapshot(db) == after_first

    # Even once the listing has sold out, the key still answers with its first order.
    await bought(shop, market.buyer, market.listing_id, 1)
    later = await buy(shop, market.buyer, market.listing_id, 1, key="buy-once")
    assert later.status == 201
    assert await later.read() == first_body

    before = await snapshot(db)
    other_quantity = await buy(shop, market.buyer, market.listing_id, 2, key="buy-once")
    await problem(other_quantity, 422, "idempotency-key-reused")
    second_listing = await new_listing(shop, market.seller, price=1, stock=1)
    other_listing = await buy(shop, market.buyer, second_listing, 1, key="buy-once")
    await problem(other_listing, 422, "idempotency-key-reused")
    assert (await snapshot(db)).orders == before.orders
    assert await balance_of(db, market.buyer.user_id) == 8_000
    await check_money(db)


async def test_an_explicit_quantity_of_one_replays_the_default(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings)
    assert (await buy(shop, market.buyer, market.listing_id, None, key="k")).status == 201
    same = await buy(shop, market.buyer, market.listing_id, 1, key="k")
    assert same.status == 201
    assert same.headers[REPLAYED] == "true"


async def test_concurrent_buyers_never_oversell(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings, stock=10)
    buyers = await quick_accounts(db, settings, 30, balance=2_500)
    responses = await asyncio.gather(
        *(buy(shop, buyer, market.listing_id, 1 + n % 2) for n, buyer in enumerate(buyers + buyers))
    )
    statuses = [response.status for response in responses]
    assert set(statuses) <= {201, 409}, statuses
    for response in responses:
        if response.status == 409:
            body = await response.json(content_type=None)
            slug = body["type"].rsplit("/", 1)[1]
            assert slug in ("insufficient-stock", "insufficient-funds", "purchase-conflict")
    sold = sum([(await r.json())["quantity"] for r in responses if r.status == 201])
    quantity, _ = await listing_stock(db, market.listing_id)
    assert sold == 10 - quantity
    assert await db.fetchval("SELECT count(*) FROM orders") == statuses.count(201)
    await check_invariants(db, market.listing_id, 10)


async def test_a_cancelled_sale_can_be_bought_again(
    shop: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(shop, db, settings, stock=1)
    order = await bought(shop, market.buyer, market.listing_id)
    assert await listing_stock(db, market.listing_id) == (0, "sold")
    await acted(shop, market.seller, order["id"], "cancel")
    assert await listing_stock(db, market.listing_id) == (1, "on_sale")
    other = await quick_account(db, settings, balance=1_000)
    await bought(shop, other, market.listing_id)
    assert await listing_stock(db, market.listing_id) == (0, "sold")
    await check_stock(db, market.listing_id, 1)
    await check_money(db)
    await check_listing_events(db, market.listing_id)


async def test_purchases_are_rate_limited_as_writes(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    client = await make_client(settings.replace(rate_limit_writes=RateLimit(1, 60)))
    market = await open_market(client, db, settings)
    await bought(client, market.buyer, market.listing_id)
    before = await snapshot(db)
    limited = await buy(client, market.buyer, market.listing_id)
    await problem(limited, 429, "rate-limited")
    assert await snapshot(db) == before


# -- orders --------------------------------------------------------------------------------


async def order_page(
    client: Client, account: Account, **query: str | int
) -> tuple[list[JsonObject], str | None]:
    response = await client.get(
        ORDERS, params={k: str(v) for k, v in query.items()}, headers=account.auth
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"items", "next_cursor"}
    return body["items"], body["next_cursor"]


async def all_pages(client: Client, account: Account, **query: str | int) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        extra: dict[str, str | int] = {"cursor": cursor} if cursor else {}
        items, cursor = await order_page(client, account, **query, **extra)
        pages.append([item["id"] for item in items])
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


async def test_orders_are_listed_newest_first_in_pages_by_role(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(client, db, settings, stock=10, balance=10_000)
    other_listing = await new_listing(client, market.seller, price=10, stock=5)
    mine = [
        (await bought(client, market.buyer, listing))["id"]
        for listing in (market.listing_id, other_listing, market.listing_id, other_listing)
    ]
    someone = await quick_account(db, settings, balance=1_000)
    theirs = (await bought(client, someone, market.listing_id))["id"]

    assert await all_pages(client, market.buyer, limit=2) == [mine[:1:-1], mine[1::-1]]
    assert await all_pages(client, market.buyer, limit=3, role="buyer") == [
        mine[:0:-1],
        mine[:1],
    ]
    assert await all_pages(client, market.buyer, limit=4) == [mine[::-1]]
    everything = sorted([*mine, theirs], reverse=True)
    assert await all_pages(client, market.seller, role="seller") == [everything]
    assert await all_pages(client, market.seller, role="seller", limit=1) == [
        [order_id] for order_id in everything
    ]
    assert await all_pages(client, market.seller) == [[]]  # the default role is buyer
    assert await all_pages(client, market.buyer, role="seller") == [[]]
    assert await all_pages(client, someone) == [[theirs]]

    items, _ = await order_page(client, market.buyer, limit=1)
    shown = await client.get(order_url(mine[-1]), headers=market.buyer.auth)
    assert items == [await shown.json()]


async def test_the_order_list_pages_by_twenty_by_default(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(client, db, settings, price=1, stock=21, balance=21)
    for _ in range(21):
        await bought(client, market.buyer, market.listing_id)
    pages = await all_pages(client, market.buyer)
    assert [len(page) for page in pages] == [20, 1]
    assert [len(p) for p in await all_pages(client, market.buyer, limit=100)] == [21]


@pytest.mark.parametrize(
    "query",
    [
        {"role": "admin"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"sort": "id"},
    ],
)
async def test_bad_order_queries_are_refused(
    client: Client, db: asyncpg.Connection, settings: Settings, query: dict[str, str]
) -> None:
    account = await quick_account(db, settings)
    response = await client.get(ORDERS, params=query, headers=account.auth)
    await problem(response, 422, "validation-failed")


async def test_an_order_is_seen_only_by_its_buyer_and_seller(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(client, db, settings)
    order = await bought(client, market.buyer, market.listing_id)
    for party in (market.buyer, market.seller):
        response = await client.get(order_url(order["id"]), headers=party.auth)
        assert response.status == 200
        assert await response.json() == order

    stranger = await quick_account(db, settings)
    before = await snapshot(db)
    await problem(
        await client.get(order_url(order["id"]), headers=stranger.auth), 404, "order-not-found"
    )
    for action in ("complete", "cancel"):
        await problem(await act(client, stranger, order["id"], action), 404, "order-not-found")
    assert await snapshot(db) == before
    for missing in (
        order["id"] + 1,
        "abc",
        "99999999999999999999",
        "0",
        "-1",
        "%20" + str(order["id"]),
    ):
        response = await client.get(order_url(missing), headers=market.buyer.auth)
        await problem(response, 404, "order-not-found")
        for action in ("complete", "cancel"):
            refused = await act(client, market.buyer, missing, action)
            await problem(refused, 404, "order-not-found")
    assert (await client.get(order_url(order["id"]))).status == 401
    assert (await client.get(ORDERS)).status == 401


async def test_completing_pays_the_seller_once(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(client, db, settings, stock=3, balance=5_000)
    order = await bought(client, market.buyer, market.listing_id, 2)

    before = await snapshot(db)
    by_seller = await act(client, market.seller, order["id"], "complete")
    await problem(by_seller, 403, "not-the-buyer")
    assert await snapshot(db) == before

    events_from = await last_outbox_id(db)
    completed = await acted(client, market.buyer, order["id"], "complete")
    assert completed["status"] == "completed"
    assert {k: v for k, v in completed.items() if k not in ("status", "updated_at")} == {
        k: v for k, v in order.items() if k not in ("status", "updated_at")
    }
    assert await balance_of(db, market.seller.user_id) == 2_000
    assert await balance_of(db, market.buyer.user_id) == 3_000
    assert await listing_stock(db, market.listing_id) == (1, "on_sale")
    events = await outbox_rows(db, events_from)
    assert kinds(events) == sorted(
        [
            (f"user:{market.buyer.user_id}", "order.completed"),
            (f"user:{market.seller.user_id}", "order.completed"),
        ]
    )
    await check_money(db)

    after = await snapshot(db)
    for account, action in ((market.buyer, "complete"), (market.buyer, "cancel"),
                            (market.seller, "cancel")):  # fmt: skip
        refused = await act(client, account, order["id"], action)
        await problem(refused, 409, "illegal-order-transition")
        assert await snapshot(db) == after
    await check_order_events(db)
    await check_stock(db, market.listing_id, 3)


@pytest.mark.parametrize("who", ["buyer", "seller"])
async def test_cancelling_refunds_and_restocks_once(
    client: Client, db: asyncpg.Connection, settings: Settings, who: str
) -> None:
    market = await open_market(client, db, settings, stock=2, balance=5_000)
    order = await bought(client, market.buyer, market.listing_id, 2)
    assert await listing_stock(db, market.listing_id) == (0, "sold")
    canceller = market.buyer if who == "buyer" else market.seller

    events_from = await last_outbox_id(db)
    cancelled = await acted(client, canceller, order["id"], "cancel")
    assert cancelled["status"] == "cancelled"
    assert cancelled["id"] == order["id"]
    assert await balance_of(db, market.buyer.user_id) == 5_000
    assert await balance_of(db, market.seller.user_id) == 0
    assert await listing_stock(db, market.listing_id) == (2, "on_sale")
    events = await outbox_rows(db, events_from)
    listing_channel = f"listing:{market.listing_id}"
    assert kinds(events) == sorted(
        [
            (f"user:{market.buyer.user_id}", "order.cancelled"),
            (f"user:{market.seller.user_id}", "order.cancelled"),
            (listing_channel, "listing.stock_changed"),
            (listing_channel, "listing.status_changed"),
        ]
    )
    for event in events:
        if event.type == "listing.stock_changed":
            assert (event.data["old_quantity"], event.data["quantity"]) == (0, 2)
        if event.type == "listing.status_changed":
            assert (event.data["old_status"], event.data["status"]) == ("sold", "on_sale")

    after = await snapshot(db)
    for account, action in ((market.buyer, "cancel"), (market.seller, "cancel"),
                            (market.buyer, "complete")):  # fmt: skip
        refused = await act(client, account, order["id"], action)
        await problem(refused, 409, "illegal-order-transition")
        assert await snapshot(db) == after
    await check_invariants(db, market.listing_id, 2)


async def test_cancelling_part_of_the_stock_keeps_the_listing_on_sale(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(client, db, settings, stock=5)
    order = await bought(client, market.buyer, market.listing_id, 2)
    events_from = await last_outbox_id(db)
    await acted(client, market.buyer, order["id"], "cancel")
    assert await listing_stock(db, market.listing_id) == (5, "on_sale")
    events = await outbox_rows(db, events_from)
    assert "listing.status_changed" not in [event.type for event in events]


@pytest.mark.parametrize("status", ["hidden", "reserved"])
async def test_cancelling_restocks_but_keeps_a_seller_chosen_status(
    client: Client, db: asyncpg.Connection, settings: Settings, status: str
) -> None:
    market = await open_market(client, db, settings, stock=3)
    order = await bought(client, market.buyer, market.listing_id, 1)
    await db.execute("UPDATE listings SET status = $2 WHERE id = $1", market.listing_id, status)
    await acted(client, market.buyer, order["id"], "cancel")
    assert await listing_stock(db, market.listing_id) == (3, status)
    assert await balance_of(db, market.buyer.user_id) == 5_000


async def test_cancelling_after_the_seller_refilled_the_stock_still_refunds(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(client, db, settings, price=10, stock=10_000)
    order = await bought(client, market.buyer, market.listing_id, 3)
    # The seller set the stock back to the most a listing may hold.
    await db.execute("UPDATE listings SET quantity = 10000 WHERE id = $1", market.listing_id)
    cancelled = await acted(client, market.buyer, order["id"], "cancel")
    assert cancelled["status"] == "cancelled"
    assert await balance_of(db, market.buyer.user_id) == 5_000
    assert await listing_stock(db, market.listing_id) == (10_000, "on_sale")
    await check_money(db)


async def test_complete_and_cancel_are_replayed_not_repeated(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(client, db, settings, stock=3, balance=5_000)
    to_complete = await bought(client, market.buyer, market.listing_id, 1)
    to_cancel = await bought(client, market.buyer, market.listing_id, 1)

    for order, account, action in ((to_complete, market.buyer, "complete"),
                                   (to_cancel, market.seller, "cancel")):  # fmt: skip
        first = await act(client, account, order["id"], action, key=f"{action}-it")
        assert first.status == 200
        first_body = await first.read()
        after = await snapshot(db)
        again = await act(client, account, order["id"], action, key=f"{action}-it")
        assert again.status == 200
        assert again.headers[REPLAYED] == "true"
        assert await again.read() == first_body
        assert await snapshot(db) == after

    assert await balance_of(db, market.seller.user_id) == 1_000
    assert await balance_of(db, market.buyer.user_id) == 4_000
    assert await listing_stock(db, market.listing_id) == (2, "on_sale")
    await check_money(db)
    await check_order_events(db)


async def test_complete_and_cancel_need_a_key(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    market = await open_market(client, db, settings)
    order = await bought(client, market.buyer, market.listing_id)
    before = await snapshot(db)
    for action in ("complete", "cancel"):
        response = await client.post(order_url(order["id"], action), headers=market.buyer.auth)
        await problem(response, 400, "idempotency-key-missing")
    assert await snapshot(db) == before


# -- each strategy's own guarantees --------------------------------------------------------


async def test_crosswise_pessimistic_purchases_never_deadlock(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    """A buys B's listing while B buys A's, in several pairs at once, every purchase
    holding its listing's lock while it waits for a wallet: none deadlocks.

    The test holds every wallet, so that each purchase locks its listing and then waits;
    once all of them wait, it lets go. A deadlock aborts one purchase of a pair after
    deadlock_timeout and the request runs again, so the status alone would hide it; the
    retry count does not.
    """
    purchases = 2 * CROSSWISE_PAIRS
    client = await make_client(
        settings.replace(purchase_strategy="pessimistic", pg_pool_max=2 * purchases)
    )
    accounts = await quick_accounts(db, settings, purchases, balance=5_000)
    listing_of = {
        account.user_id: await new_listing(client, account, price=1_000, stock=1)
        for account in accounts
    }
    crosswise = [
        (buyer, seller)
        for first, second in zip(accounts[::2], accounts[1::2], strict=True)
        for buyer, seller in ((first, second), (second, first))
    ]
    async with db.transaction():
        await db.execute(
            "SELECT FROM wallets WHERE user_id = any($1::bigint[]) FOR UPDATE",
            [account.user_id for account in accounts],
        )
        buying = [
            asyncio.create_task(buy(client, buyer, listing_of[seller.user_id]))
            for buyer, seller in crosswise
        ]
        async with asyncio.timeout(WAIT_TIMEOUT):
            while await blocked_by(db, db.get_server_pid()) < purchases:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        holding = await db.fetchval(
            "SELECT count(DISTINCT pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'listings' AND l.mode = 'RowShareLock'"
            " AND l.pid <> pg_backend_pid()"
        )
        assert holding == purchases  # each waits holding its listing's row
    responses = await asyncio.gather(*buying)
    failed = [(r.status, await r.text()) for r in responses if r.status != 201]
    assert failed == []
    retries = client.app[keys.metrics_key].registry.get_sample_value(
        "jangteo_transaction_retries_total", {"reason": "DeadlockDetectedError"}
    )
    assert not retries, f"{retries:.0f} purchases deadlocked and ran again"
    for listing_id in listing_of.values():
        assert await listing_stock(db, listing_id) == (0, "sold")
    assert await db.fetchval("SELECT count(*) FROM orders") == purchases
    await check_money(db)
    await check_order_events(db)


async def blocked_by(db: asyncpg.Connection, pid: int) -> int:
    """How many backends wait for a lock that backend ``pid`` holds (read afresh: within
    a transaction, pg_stat_activity otherwise repeats its first answer)."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = any(pg_blocking_pids(pid))", pid
    )
    return count


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_purchase_locks_no_wallet_but_the_buyers(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings, strategy: str
) -> None:
    """The seller is paid on completion, so a purchase goes through while the seller's
    wallet is held (by a completion or a top-up): its locks are the listing's row and
    the buyer's wallet, and nothing it waits for can wait for it."""
    client = await make_client(settings.replace(purchase_strategy=strategy))
    seller, buyer = await quick_accounts(db, settings, 2, balance=5_000)
    listing_id = await new_listing(client, seller, price=1_000, stock=1)
    async with db.transaction():
        await db.execute("SELECT FROM wallets WHERE user_id = $1 FOR UPDATE", seller.user_id)
        async with asyncio.timeout(WAIT_TIMEOUT):
            order = await bought(client, buyer, listing_id)
    assert (order["buyer_id"], order["seller_id"]) == (buyer.user_id, seller.user_id)
    assert await listing_stock(db, listing_id) == (0, "sold")
    await check_money(db)


async def test_a_lock_that_expires_mid_purchase_cannot_oversell(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    """Holder A pauses past its lock's expiry; B takes the lock and buys; A's write is refused."""
    client = await make_client(settings.replace(purchase_strategy="redis_lock"))
    # Stock for both: only the fencing token can refuse the late write.
    market = await open_market(client, db, settings, stock=2)
    second_buyer = await quick_account(db, settings, balance=5_000)
    app = client.app
    redis, pool, metrics = app[keys.redis_key], app[keys.pg_pool_key], app[keys.metrics_key]
    process_a, process_b = PurchaseLocks(redis), PurchaseLocks(redis)  # two instances

    async def buy_with(buyer: Account, fence: int) -> int:
        async with pool.acquire() as conn, conn.transaction():
            request = PurchaseRequest(buyer.user_id, market.listing_id, 1, fence)
            idempotent = IdempotentRequest.of(
                f"fence-{fence}",
                user_id=buyer.user_id,
                method="POST",
                path=f"/api/v1/listings/{market.listing_id}/purchase",
                body={"quantity": 1},
                status=201,
            )
            done = await purchase(conn, idempotent, request, "redis_lock", metrics)
            order_id: int = orjson.loads(done.response.body)["id"]
            return order_id

    async def paused_holder(fence: int) -> int:
        await redis.delete(lock_key(market.listing_id))  # its timeout ran out
        winner = await process_b.run(market.listing_id, lambda later: buy_with(second_buyer, later))
        winners.append(winner)
        return await buy_with(market.buyer, fence)  # wakes up and writes, too late

    winners: list[int] = []
    with pytest.raises(StaleFence):
        await process_a.run(market.listing_id, paused_holder)

    orders = await db.fetch("SELECT id, buyer_id FROM orders")
    assert [(row["id"], row["buyer_id"]) for row in orders] == [(winners[0], second_buyer.user_id)]
    assert await listing_stock(db, market.listing_id) == (1, "on_sale")
    assert await balance_of(db, market.buyer.user_id) == 5_000
    await check_money(db)


async def test_a_stale_fencing_token_is_refused_once_then_moved_past(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    client = await make_client(settings.replace(purchase_strategy="redis_lock"))
    market = await open_market(client, db, settings)
    # A later lock holder already wrote with token 10, and Redis lost its counter since.
    await db.execute("UPDATE listings SET fence = 10 WHERE id = $1", market.listing_id)
    before = await snapshot(db)
    refused = await buy(client, market.buyer, market.listing_id, key="fenced")
    await problem(refused, 409, "purchase-conflict")
    assert refused.headers["Retry-After"] == "1"
    assert await snapshot(db) == before

    retried = await buy(client, market.buyer, market.listing_id, key="fenced")
    assert retried.status == 201, await retried.text()
    fence = await db.fetchval("SELECT fence FROM listings WHERE id = $1", market.listing_id)
    assert fence > 10
    await check_money(db)
