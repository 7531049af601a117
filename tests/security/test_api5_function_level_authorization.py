"""OWASP API5, broken function level authorization: who may do what to an order or a
listing, as the order rules and docs/api.md have it.

| function                  | who                         | others                     |
| ------------------------- | --------------------------- | -------------------------- |
| complete an order         | its buyer, while paid       | seller 403, stranger 404   |
| cancel an order           | buyer or seller, while paid | completed/cancelled: 409   |
| buy / ask about a listing | anyone but its seller       | seller 409 (own-listing)   |
| set a listing's status    | seller: on_sale / reserved  | sold, hidden: 422          |
"""

from __future__ import annotations

import asyncpg

from tests.orders_support import balance_of, keyed, order_url, problem, purchase_url
from tests.security.support import Market, open_market
from tests.server.listings_support import item_url
from tests.support import Client


async def _order_status(db: asyncpg.Connection, market: Market) -> str:
    status: str = await db.fetchval("SELECT status FROM orders WHERE id = $1", market.order_id)
    return status


async def test_the_seller_cannot_complete_the_order(client: Client, db: asyncpg.Connection) -> None:
    market = await open_market(client, db)
    seller_balance = await balance_of(db, market.seller.user_id)
    response = await client.post(
        order_url(market.order_id, "complete"), headers=keyed(market.seller)
    )
    await problem(response, 403, "not-the-buyer")
    assert await _order_status(db, market) == "paid"
    assert await balance_of(db, market.seller.user_id) == seller_balance  # no escrow released


async def test_nobody_cancels_a_completed_order(client: Client, db: asyncpg.Connection) -> None:
    market = await open_market(client, db)
    done = await client.post(order_url(market.order_id, "complete"), headers=keyed(market.buyer))
    assert done.status == 200, await done.text()
    paid_out = await balance_of(db, market.seller.user_id)
    for account in (market.seller, market.buyer):
        response = await client.post(order_url(market.order_id, "cancel"), headers=keyed(account))
        await problem(response, 409, "illegal-order-transition")
    again = await client.post(order_url(market.order_id, "complete"), headers=keyed(market.buyer))
    await problem(again, 409, "illegal-order-transition")
    assert await _order_status(db, market) == "completed"
    assert await balance_of(db, market.seller.user_id) == paid_out  # the money stays paid


async def test_a_cancelled_order_cannot_be_completed(
    client: Client, db: asyncpg.Connection
) -> None:
    market = await open_market(client, db)
    cancelled = await client.post(
        order_url(market.order_id, "cancel"), headers=keyed(market.seller)
    )
    assert cancelled.status == 200, await cancelled.text()
    refunded = await balance_of(db, market.buyer.user_id)
    response = await client.post(
        order_url(market.order_id, "complete"), headers=keyed(market.buyer)
    )
    await problem(response, 409, "illegal-order-transition")
    assert await balance_of(db, market.seller.user_id) == 0
    assert await balance_of(db, market.buyer.user_id) == refunded


async def test_the_seller_can_neither_buy_nor_ask_about_their_own_listing(
    client: Client, db: asyncpg.Connection
) -> None:
    market = await open_market(client, db)
    buy = await client.post(
        purchase_url(market.listing_id), json={"quantity": 1}, headers=keyed(market.seller)
    )
    await problem(buy, 409, "own-listing")
    ask = await client.post(
        f"/api/v1/listings/{market.listing_id}/chats", headers=market.seller.auth
    )
    assert ask.status == 409, await ask.text()


async def test_a_seller_sets_only_the_statuses_a_seller_may(
    client: Client, db: asyncpg.Connection
) -> None:
    market = await open_market(client, db)
    url = item_url(market.listing_id)
    headers = {**market.seller.auth, "If-Match": "*"}
    for status in ("sold", "hidden", "anything"):
        response = await client.patch(url, json={"status": status}, headers=headers)
        assert response.status == 422, (status, await response.text())
    reserved = await client.patch(url, json={"status": "reserved"}, headers=headers)
    assert reserved.status == 200
    assert (
        await db.fetchval("SELECT status FROM listings WHERE id = $1", market.listing_id)
        == "reserved"
    )
