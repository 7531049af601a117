"""The queue strategy: purchases decided in log order, a late outcome answered 503 and
replayed on retry, and a batch applied once however often a consumer meets it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from server import keys
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.orders_support import (
    REPLAYED,
    check_money,
    check_order_events,
    keyed,
    listing_stock,
    quick_accounts,
)
from tests.server.test_orders import buy, new_listing
from tests.support import Account, Client

WAIT_TIMEOUT = 20.0


@pytest.fixture
def queue_settings(settings: Settings) -> Settings:
    return settings.replace(purchase_strategy="queue", purchase_queue_timeout=10.0)


async def consumers_ready(client: Client) -> None:
    """Until every partition has a consumer and outcomes can be received."""
    queue = client.app[keys.purchase_queue_key]
    async with asyncio.timeout(WAIT_TIMEOUT):
        await queue.listening.wait()
        while True:
            stream_info = [
                await client.app[keys.redis_key].exists(queue.settings.stream(p))
                for p in range(queue.settings.partitions)
            ]
            if all(stream_info):  # each consumer made its stream and group
                return
            await asyncio.sleep(0.02)


async def entries_logged(client: Client, listing_id: int, count: int) -> None:
    """Until the listing's partition of the log holds ``count`` entries."""
    queue = client.app[keys.purchase_queue_key]
    stream = queue.settings.stream(queue.settings.partition_of(listing_id))
    async with asyncio.timeout(WAIT_TIMEOUT):
        while True:
            if await client.app[keys.redis_key].xlen(stream) >= count:
                return
            await asyncio.sleep(0.01)


async def hold_listing(db: asyncpg.Connection, listing_id: int) -> None:
    await db.execute("SELECT FROM listings WHERE id = $1 FOR UPDATE", listing_id)


async def test_buyers_are_served_in_log_order(
    make_client: ClientFactory, db: asyncpg.Connection, queue_settings: Settings
) -> None:
    """Twenty buyers for five items: the five whose purchases came first in the log win,
    whatever order their requests finish in."""
    client = await make_client(queue_settings)
    await consumers_ready(client)
    seller, *buyers = await quick_accounts(db, queue_settings, 21, balance=5_000)
    listing_id = await new_listing(client, seller, price=100, stock=5)
    queue = client.app[keys.purchase_queue_key]
    stream = queue.settings.stream(queue.settings.partition_of(listing_id))
    redis = client.app[keys.redis_key]
    async with db.transaction():  # the consumer waits for the listing: entries pile up
        await hold_listing(db, listing_id)
        buying = {
            buyer.user_id: asyncio.create_task(buy(client, buyer, listing_id)) for buyer in buyers
        }
        await entries_logged(client, listing_id, len(buyers))
        entries: Any = await redis.xrange(stream)
        logged = [int(fields[b"buyer"]) for _, fields in entries]
    statuses = {user: (await task).status for user, task in buying.items()}
    winners = {user for user, status in statuses.items() if status == 201}
    assert winners == set(logged[:5])
    assert {statuses[user] for user in logged[5:]} == {409}
    assert await listing_stock(db, listing_id) == (0, "sold")
    await check_money(db)
    await check_order_events(db)


async def test_an_outcome_that_comes_late_is_503_and_the_retry_replays_it(
    make_client: ClientFactory, db: asyncpg.Connection, queue_settings: Settings
) -> None:
    client = await make_client(queue_settings.replace(purchase_queue_timeout=0.3))
    await consumers_ready(client)
    seller, buyer = await quick_accounts(db, queue_settings, 2, balance=5_000)
    listing_id = await new_listing(client, seller, price=100, stock=2)
    key = uuid.uuid4().hex
    async with db.transaction():
        await hold_listing(db, listing_id)
        pending = await buy(client, buyer, listing_id, key=key)
        assert pending.status == 503, await pending.text()
        assert pending.headers["Retry-After"]
        assert (await pending.json())["type"].endswith("/purchase-pending")
    async with asyncio.timeout(WAIT_TIMEOUT):  # the first entry is applied once the row is free
        while True:
            if await db.fetchval("SELECT count(*) FROM orders"):
                break
            await asyncio.sleep(0.01)
    retried = await buy(client, buyer, listing_id, key=key)
    assert retried.status == 201, await retried.text()
    assert retried.headers[REPLAYED] == "true"
    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    assert await listing_stock(db, listing_id) == (1, "on_sale")
    await check_money(db)


async def test_a_batch_met_again_after_its_commit_is_applied_once(
    make_client: ClientFactory, db: asyncpg.Connection, queue_settings: Settings
) -> None:
    """A consumer that died after its commit and before acknowledging leaves its entries
    to the next one: applied again, they change nothing, and later entries still apply."""
    client = await make_client(queue_settings.replace(purchase_strategy="atomic"))
    seller, buyer = await quick_accounts(db, queue_settings, 2, balance=5_000)
    listing_id = await new_listing(client, seller, price=100, stock=3)
    await db.execute("LISTEN outcomes")

    def entry(number: int, key: str) -> dict[str, str]:
        return {
            "entry": f"1700000000000-{number}", "request": f"r{number}", "reply": "outcomes",
            "buyer": str(buyer.user_id), "listing": str(listing_id), "quantity": "1",
            "key": key, "fingerprint": "00", "status": "201",
        }  # fmt: skip

    async def apply(entries: list[dict[str, str]]) -> int:
        applied: int = await db.fetchval(
            "SELECT purchase_queue_apply(7, $1::jsonb, $2)",
            orjson.dumps(entries).decode(),
            timedelta(hours=1),
        )
        return applied

    first = [entry(0, "a"), entry(1, "b")]
    assert await apply(first) == 2
    assert await apply(first) == 0  # met again: skipped
    assert await apply([*first, entry(2, "c")]) == 1
    assert await db.fetchval("SELECT count(*) FROM orders") == 3
    assert await listing_stock(db, listing_id) == (0, "sold")
    await check_money(db)
    await check_order_events(db)


async def test_a_refusal_in_a_batch_undoes_only_its_own_entry(
    make_client: ClientFactory, db: asyncpg.Connection, queue_settings: Settings
) -> None:
    client = await make_client(queue_settings)
    await consumers_ready(client)
    seller, rich = await quick_accounts(db, queue_settings, 2, balance=5_000)
    (poor,) = await quick_accounts(db, queue_settings, 1, balance=50)
    listing_id = await new_listing(client, seller, price=100, stock=3)

    async def buy_as(account: Account) -> tuple[int, str]:
        response = await client.post(
            f"/api/v1/listings/{listing_id}/purchase", json={"quantity": 1}, headers=keyed(account)
        )
        return response.status, (await response.json()).get("type", "")

    async with db.transaction():
        await hold_listing(db, listing_id)
        answers = [asyncio.create_task(buy_as(account)) for account in (rich, poor, rich)]
        await entries_logged(client, listing_id, 3)
    results = [await answer for answer in answers]
    assert results[0][0] == 201 and results[2][0] == 201
    assert results[1][0] == 409 and results[1][1].endswith("/insufficient-funds")
    assert await listing_stock(db, listing_id) == (1, "on_sale")
    await check_money(db)
    await check_order_events(db)
