"""Helpers of the security suite: a market with one of everything, its state, its routes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import requests

from tests.orders_support import fund, keyed, purchase_url
from tests.server.listings_support import create_listing
from tests.support import PASSWORD, Account, Client, sign_up


def signed_up_token(base_url: str, region: str = "seoul-mapo") -> str:
    """A new account's access token, from a served app (blocking: for sync tests)."""
    email = f"sec-{uuid.uuid4().hex[:12]}@example.com"
    response = requests.post(
        base_url + "/api/v1/auth/signup",
        json={"email": email, "password": PASSWORD, "nickname": "security", "region": region},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["access_token"]
    return token


@dataclass(frozen=True, slots=True)
class Market:
    """One of everything that has an id, and three people: its owners and a stranger."""

    seller: Account
    buyer: Account
    stranger: Account
    listing_id: int
    order_id: int
    room_id: int
    photo_id: str

    def ids(self, path: str) -> dict[str, str]:
        """Values for the path parameters of ``path``: this market's real objects."""
        prefix = path.split("/")[3] if path.startswith("/api/v1/") else ""
        own = {"listings": self.listing_id, "orders": self.order_id, "chats": self.room_id}
        return {"id": str(own.get(prefix, self.listing_id)), "photo_id": self.photo_id}


# Ids nobody has: as large as a bigint id may be, and a random photo id.
MISSING_IDS = {"id": str(2**63 - 1), "photo_id": str(uuid.uuid4())}


async def open_market(client: Client, db: asyncpg.Connection) -> Market:
    """A listing with a photo slot, an order on it and the buyer's chat room about it."""
    seller, buyer, stranger = [await sign_up(client) for _ in range(3)]
    listing = await create_listing(client, seller, price=1_000, quantity=5)
    for account in (buyer, stranger):
        await fund(db, account.user_id, 100_000)
    bought = await client.post(
        purchase_url(listing["id"]), json={"quantity": 1}, headers=keyed(buyer)
    )
    assert bought.status == 201, await bought.text()
    room = await client.post(f"/api/v1/listings/{listing['id']}/chats", headers=buyer.auth)
    assert room.status == 201, await room.text()
    room_id = (await room.json())["id"]
    said = await client.post(
        f"/api/v1/chats/{room_id}/messages",
        json={"body": "is it still there?", "client_id": str(uuid.uuid4())},
        headers=buyer.auth,
    )
    assert said.status == 201, await said.text()
    photo = await client.post(
        f"/api/v1/listings/{listing['id']}/photos",
        json={"content_type": "image/jpeg", "size": 1_000},
        headers=seller.auth,
    )
    assert photo.status == 201, await photo.text()
    return Market(
        seller,
        buyer,
        stranger,
        listing["id"],
        (await bought.json())["id"],
        room_id,
        (await photo.json())["photo_id"],
    )


_STATE_QUERIES = (
    "SELECT id, seller_id, title, price, quantity, status, version, like_count FROM listings",
    "SELECT id, status, quantity, amount FROM orders",
    "SELECT user_id, balance FROM wallets",
    "SELECT id, room_id, sender_id, body FROM chat_messages",
    "SELECT * FROM chat_rooms",
    "SELECT id, listing_id, status FROM listing_photos",
    "SELECT listing_id, user_id FROM listing_likes",
)


async def market_state(db: asyncpg.Connection) -> list[list[tuple[Any, ...]]]:
    """Everything a request could change, to compare before and after."""
    return [sorted(tuple(row.values()) for row in await db.fetch(q)) for q in _STATE_QUERIES]


def routes_with_parameters(client: Client) -> set[tuple[str, str]]:
    """(method, path) of every route of the app whose path takes a parameter."""
    return {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None
        and route.method not in ("HEAD", "*")
        and "{" in route.resource.canonical
    }


def valid_bodies(market: Market) -> dict[tuple[str, str], tuple[Account, dict[str, Any]]]:
    """A body each operation with one accepts, and who sends it."""
    client_id = str(uuid.uuid4())
    return {
        ("POST", "/api/v1/auth/signup"): (
            market.stranger,
            {
                "email": f"p-{uuid.uuid4().hex[:8]}@example.com",
                "password": "long enough pw",
                "nickname": "n",
                "region": "seoul-mapo",
            },
        ),
        ("POST", "/api/v1/auth/login"): (
            market.stranger,
            {"email": market.stranger.email, "password": "whatever"},
        ),
        ("POST", "/api/v1/auth/refresh"): (
            market.stranger,
            {"refresh_token": market.stranger.refresh_token},
        ),
        ("POST", "/api/v1/auth/logout"): (
            market.stranger,
            {"refresh_token": market.stranger.refresh_token},
        ),
        ("POST", "/api/v1/listings"): (
            market.seller,
            {"title": "t", "price": 1, "category": "etc"},
        ),
        ("PATCH", "/api/v1/listings/{id}"): (market.seller, {"price": 2}),
        ("POST", "/api/v1/wallet/topup"): (market.stranger, {"amount": 1}),
        ("POST", "/api/v1/listings/{id}/purchase"): (market.stranger, {"quantity": 1}),
        ("POST", "/api/v1/listings/{id}/photos"): (
            market.seller,
            {"content_type": "image/png", "size": 10},
        ),
        ("POST", "/api/v1/chats/{id}/messages"): (
            market.buyer,
            {"body": "hi", "client_id": client_id},
        ),
        ("POST", "/api/v1/chats/{id}/read"): (market.buyer, {"up_to": 1}),
    }
