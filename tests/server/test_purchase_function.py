"""The purchase in one database call: what it renders in SQL is what the API renders in
Python, and the optimistic strategy's retries happen inside the call."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from server import keys
from server.jsonio import dumps
from server.listings.service import event_snapshot
from server.orders.purchase import order_out
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.orders_support import check_money, listing_stock, quick_accounts, seq_scans
from tests.server.test_orders import bought, buy, new_listing

WAIT_TIMEOUT = 20.0
MOMENTS = [
    datetime(2026, 12, 2, 15, 4, 5, tzinfo=UTC),  # no microseconds: none written
    datetime(2026, 12, 2, 15, 4, 5, 7, tzinfo=UTC),
    datetime(2026, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
]


@pytest.mark.parametrize("zone", ["UTC", "Asia/Seoul", "America/St_Johns"])
async def test_an_order_rendered_in_sql_is_the_apis_json_byte_for_byte(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings, zone: str
) -> None:
    client = await make_client(settings)
    seller, buyer = await quick_accounts(db, settings, 2, balance=100_000)
    listing_id = await new_listing(client, seller, price=1_234, stock=9)
    order = await bought(client, buyer, listing_id, quantity=3)
    await db.execute(f"SET TimeZone = '{zone}'")
    for created, updated in zip(MOMENTS, MOMENTS[1:] + MOMENTS[:1], strict=True):
        await db.execute(
            "UPDATE orders SET created_at = $2, updated_at = $3 WHERE id = $1",
            order["id"],
            created,
            updated,
        )
        row = await db.fetchrow("SELECT * FROM orders WHERE id = $1", order["id"])
        assert row is not None
        rendered = await db.fetchval("SELECT api_order(o) FROM orders o WHERE id = $1", order["id"])
        assert rendered.encode() == dumps(order_out(row))
    await db.execute("RESET TimeZone")


async def test_a_listing_in_an_sql_event_is_the_snapshot_python_events_carry(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    client = await make_client(settings)
    (seller,) = await quick_accounts(db, settings, 1)
    listing_id = await new_listing(client, seller, price=77, stock=2)
    await db.execute(
        "UPDATE listings SET title = $2 WHERE id = $1", listing_id, 'A "quoted" 장터 ✓'
    )
    row = await db.fetchrow("SELECT * FROM listings WHERE id = $1", listing_id)
    assert row is not None
    data = await db.fetchval(
        "SELECT listing_event(l)::text FROM listings l WHERE id = $1", listing_id
    )
    assert orjson.loads(data) == event_snapshot(row)


async def test_a_version_moved_under_an_optimistic_purchase_is_read_again_in_the_call(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    """The purchase reads version v, another writer holds the row at v + 1 and commits:
    the purchase's write misses, reads again and wins, within its one call."""
    client = await make_client(settings.replace(purchase_strategy="optimistic"))
    seller, buyer = await quick_accounts(db, settings, 2, balance=5_000)
    listing_id = await new_listing(client, seller, price=1_000, stock=2)
    async with db.transaction():
        await db.execute("UPDATE listings SET version = version + 1 WHERE id = $1", listing_id)
        buying = asyncio.create_task(buy(client, buyer, listing_id))
        await until_waiting_for(db, db.get_server_pid())
    response = await buying
    assert response.status == 201, await response.text()
    retries = client.app[keys.metrics_key].registry.get_sample_value(
        "jangteo_purchase_retries_total", {"strategy": "optimistic"}
    )
    assert retries == 1
    assert await listing_stock(db, listing_id) == (1, "on_sale")
    await check_money(db)


async def test_an_optimistic_call_out_of_attempts_is_a_conflict_and_changes_nothing(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings, database_url: str
) -> None:
    client = await make_client(settings)
    seller, buyer = await quick_accounts(db, settings, 2, balance=5_000)
    listing_id = await new_listing(client, seller, price=1_000, stock=2)
    caller = await asyncpg.connect(database_url)
    try:
        async with db.transaction():
            await db.execute("UPDATE listings SET version = version + 1 WHERE id = $1", listing_id)
            call = asyncio.create_task(
                caller.fetchrow(
                    "SELECT * FROM purchase_listing($1, $2, 1, 'version', NULL, 1, 'k',"
                    " '\\x00', 201, $3)",
                    buyer.user_id,
                    listing_id,
                    timedelta(hours=1),
                )
            )
            await until_waiting_for(db, db.get_server_pid())
        with pytest.raises(asyncpg.RaiseError, match="purchase-conflict") as raised:
            await call
        assert raised.value.detail == "the listing kept changing (1 attempts)"
    finally:
        await caller.close()
    assert await listing_stock(db, listing_id) == (2, "on_sale")
    assert await db.fetchval("SELECT count(*) FROM orders") == 0
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    await check_money(db)


async def until_waiting_for(db: asyncpg.Connection, pid: int) -> None:
    """Until some backend waits for a lock that backend ``pid`` holds (pg_stat_activity
    read afresh each time: within a transaction it repeats its first answer)."""
    async with asyncio.timeout(WAIT_TIMEOUT):
        while True:
            await db.execute("SELECT pg_stat_clear_snapshot()")
            if await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = any(pg_blocking_pids(pid))", pid
            ):
                return
            await asyncio.sleep(0.005)


async def test_purchases_read_by_key_after_the_tables_were_analyzed_small(
    db: asyncpg.Connection, settings: Settings
) -> None:
    """Statistics that say the stored responses are empty and the listings one page, and
    a connection whose calls were all made then (as a pooled one keeps its plans): each
    purchase still reads the stored response, the listing and the wallet by their index,
    not by reading their tables whole."""
    await db.execute("VACUUM ANALYZE idempotency_keys, listings, wallets")
    seller, buyer = await quick_accounts(db, settings, 2, balance=100_000)
    listing_id: int = await db.fetchval(
        "INSERT INTO listings (seller_id, title, price, quantity, category, region)"
        " VALUES ($1, 'Camping chair', 10, 1000, 'sports', 'seoul-mapo') RETURNING id",
        seller.user_id,
    )

    async def buy_once(key: str) -> None:
        await db.fetchrow(
            "SELECT * FROM purchase_listing($1, $2, 1, 'atomic', NULL, 1, $3, '\\x00', 201, $4)",
            buyer.user_id,
            listing_id,
            key,
            timedelta(hours=1),
        )

    for n in range(10):  # more than the five calls after which a generic plan may be kept
        await buy_once(f"early-{n}")
    await db.execute(  # then the stored responses grow (many pages) before the next ANALYZE
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, status_code, response_body,"
        " expires_at) SELECT $1, 'stored-' || g, '\\x00', 201, '\\x7b7d', now() + interval '1 day'"
        " FROM generate_series(1, 5000) AS g",
        buyer.user_id,
    )
    tables = ("idempotency_keys", "listings", "wallets")
    async with db.transaction():
        before = [await seq_scans(db, table) for table in tables]
        for n in range(20):
            await buy_once(f"late-{n}")
        assert [await seq_scans(db, table) for table in tables] == before
    assert await listing_stock(db, listing_id) == (970, "on_sale")
