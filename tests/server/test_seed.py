"""`jangteo seed`: demo neighbours who can sign in, their listings, and the events for them."""

from __future__ import annotations

import asyncpg

from server.seed import DEMO_PASSWORD, seed
from server.settings import Settings
from tests.support import Client


async def test_seed_fills_an_empty_database_once(
    settings: Settings, db: asyncpg.Connection, client: Client
) -> None:
    summary = await seed(settings, users=6, listings=15, if_empty=True)
    assert "6 users and 15 listings" in summary
    assert await db.fetchval("SELECT count(*) FROM users") == 6
    assert await db.fetchval("SELECT count(*) FROM listings") == 15
    created = await db.fetchval("SELECT count(*) FROM outbox WHERE type = 'listing.created'")
    assert created == 15
    mismatched = await db.fetchval(
        "SELECT count(*) FROM listings l JOIN users u ON u.id = l.seller_id"
        " WHERE l.region <> u.region"
    )
    assert mismatched == 0

    again = await seed(settings, users=6, listings=15, if_empty=True)
    assert "nothing seeded" in again
    assert await db.fetchval("SELECT count(*) FROM users") == 6

    login = await client.post(
        "/api/v1/auth/login", json={"email": "demo1@jangteo.dev", "password": DEMO_PASSWORD}
    )
    assert login.status == 200
    feed = await client.get("/api/v1/listings", params={"limit": "100"})
    assert len((await feed.json())["items"]) == 15


async def test_seeding_twice_without_if_empty_adds_more(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed(settings, users=3, listings=4, if_empty=False)
    await seed(settings, users=3, listings=4, if_empty=False)
    assert await db.fetchval("SELECT count(DISTINCT email) FROM users") == 6
    assert await db.fetchval("SELECT count(*) FROM listings") == 8
