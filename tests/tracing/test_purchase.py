"""A purchase writes its events from SQL (purchase_listing()): traced, they carry its context."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider

from jangteo.app import create_app
from server.settings import PURCHASE_STRATEGIES, Settings
from tests.orders_support import keyed, listing_body, purchase_url, quick_accounts
from tests.support import Client

AppClient = Callable[..., Awaitable[Client]]
# The strategies that call purchase_listing() (the queue's consumer writes a batch of
# many requests in one transaction, and is not linked: docs/tracing.md).
DIRECT = [strategy for strategy in PURCHASE_STRATEGIES if strategy != "queue"]


@pytest.mark.parametrize("strategy", DIRECT)
async def test_a_traced_purchase_stores_its_context_with_each_event(
    provider: TracerProvider,
    aiohttp_client: AppClient,
    settings: Settings,
    db: asyncpg.Connection,
    strategy: str,
) -> None:
    client = await aiohttp_client(
        create_app(settings.replace(purchase_strategy=strategy), tracer_provider=provider)
    )
    seller, buyer = await quick_accounts(db, settings, 2, 10_000)
    response = await client.post(
        "/api/v1/listings", json=listing_body(1_000, 1), headers=seller.auth
    )
    assert response.status == 201, await response.text()
    listing_id = (await response.json())["id"]
    before = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")

    trace_id = secrets.randbits(128) | 1
    parent = f"00-{trace_id:032x}-{secrets.randbits(64) | 1:016x}-01"
    headers = {**keyed(buyer), "traceparent": parent}
    response = await client.post(purchase_url(listing_id), json={"quantity": 1}, headers=headers)
    assert response.status == 201, await response.text()

    rows = await db.fetch(
        "SELECT type, trace_context FROM outbox WHERE id > $1 ORDER BY id", before
    )
    # Both parties' order.paid, the stock change and the sell-out, all of this request.
    assert [row["type"] for row in rows] == [
        "order.paid",
        "order.paid",
        "listing.stock_changed",
        "listing.status_changed",
    ]
    for row in rows:
        assert row["trace_context"].split("-")[1] == f"{trace_id:032x}"


async def test_the_context_stays_in_its_own_transaction(db: asyncpg.Connection) -> None:
    """purchase_listing_traced() sets it for its own transaction only: the session's next
    events (the same pooled connection, another request) carry none."""
    traced = f"00-{secrets.randbits(128) | 1:032x}-{secrets.randbits(64) | 1:016x}-01"
    with pytest.raises(asyncpg.RaiseError, match="listing-not-found"):
        await db.fetch(
            "SELECT * FROM purchase_listing_traced($1, 1, 1, 1, 'atomic', NULL, 1, 'k',"
            " '\\x00'::bytea, 201, $2)",
            traced,
            timedelta(hours=1),
        )
    async with db.transaction():
        await db.execute("SELECT set_config('jangteo.trace_context', $1, true)", traced)
        await db.execute("INSERT INTO outbox (channel, type, data) VALUES ('user:1', 't', '{}')")
    await db.execute("INSERT INTO outbox (channel, type, data) VALUES ('user:1', 't', '{}')")
    stored = await db.fetch("SELECT trace_context FROM outbox ORDER BY id")
    assert [row["trace_context"] for row in stored] == [traced, None]
