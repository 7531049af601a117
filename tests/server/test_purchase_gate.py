"""The purchase gate: how many purchases of one listing a process lets into PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from server import keys
from server.orders.gate import ListingGate
from server.settings import Settings, SettingsError
from tests.conftest import ClientFactory
from tests.orders_support import (
    check_money,
    check_order_events,
    keyed,
    listing_body,
    listing_stock,
    purchase_url,
    quick_accounts,
)

TIMEOUT = 20.0
BUYERS = 12
PERMITS = 3


async def test_a_listing_lets_in_its_permits_and_the_rest_wait_in_arrival_order() -> None:
    gate = ListingGate(2)
    inside: list[int] = []
    most = 0
    order: list[int] = []
    leave = asyncio.Event()

    async def purchase(number: int) -> None:
        nonlocal most
        async with gate.turn(7):
            order.append(number)
            inside.append(number)
            most = max(most, len(inside))
            await leave.wait()
            inside.remove(number)

    tasks = [asyncio.create_task(purchase(n)) for n in range(6)]
    await asyncio.sleep(0.01)
    assert sorted(inside) == [0, 1] and gate.listings() == 1
    late = asyncio.create_task(purchase(100))
    await asyncio.sleep(0.01)
    assert 100 not in inside  # it waits behind those that came before it
    leave.set()
    await asyncio.gather(*tasks, late)
    assert most == 2 and order == [0, 1, 2, 3, 4, 5, 100]
    assert gate.listings() == 0  # nothing held, nothing waiting: forgotten


async def test_listings_do_not_wait_for_one_another() -> None:
    gate = ListingGate(1)
    held = asyncio.Event()
    leave = asyncio.Event()

    async def hold() -> None:
        async with gate.turn(1):
            held.set()
            await leave.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    async with asyncio.timeout(1), gate.turn(2):
        assert gate.listings() == 2
    leave.set()
    await holder
    assert gate.listings() == 0


async def test_a_cancelled_wait_gives_its_place_up() -> None:
    gate = ListingGate(1)
    leave = asyncio.Event()
    entered: list[str] = []

    async def enter(name: str) -> None:
        async with gate.turn(1):
            entered.append(name)
            await leave.wait()

    first = asyncio.create_task(enter("first"))
    given_up = asyncio.create_task(enter("given up"))
    last = asyncio.create_task(enter("last"))
    await asyncio.sleep(0.01)
    given_up.cancel()
    leave.set()
    await asyncio.gather(first, last)
    assert given_up.cancelled() and entered == ["first", "last"]
    assert gate.listings() == 0


async def test_no_permits_means_no_limit() -> None:
    gate = ListingGate(0)
    leave = asyncio.Event()
    inside = 0

    async def enter() -> None:
        nonlocal inside
        async with gate.turn(1):
            inside += 1
            await leave.wait()

    tasks = [asyncio.create_task(enter()) for _ in range(50)]
    await asyncio.sleep(0.01)
    assert inside == 50
    leave.set()
    await asyncio.gather(*tasks)


def test_under_redis_lock_the_lock_holder_lets_in_twice_the_permits() -> None:
    assert ListingGate.for_strategy("redis_lock", 4).permits == 8
    assert ListingGate.for_strategy("atomic", 4).permits == 4
    assert ListingGate.for_strategy("redis_lock", 0).permits == 0


def test_the_permits_setting() -> None:
    assert Settings.from_env({}).purchase_permits == 4
    assert Settings.from_env({"JANGTEO_PURCHASE_PERMITS": "0"}).purchase_permits == 0
    with pytest.raises(SettingsError, match="must be 0 or more"):
        Settings.from_env({"JANGTEO_PURCHASE_PERMITS": "-1"})


async def waiting_for_the_row(db: asyncpg.Connection) -> int:
    """Backends of this database waiting for a lock: the first buyer waits for the test's
    transaction, the others for the row's tuple lock that the first one holds."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return count


@pytest.mark.parametrize("strategy", ["atomic", "pessimistic", "optimistic", "redis_lock"])
async def test_only_the_permits_reach_the_database_and_the_rest_hold_no_connection(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings, strategy: str
) -> None:
    """While the test holds the listing's row, twelve buyers of it arrive at once: only
    the permits' purchases wait in PostgreSQL, with a connection each; the others wait in
    the process, with none. Let go, and every purchase goes through."""
    client = await make_client(
        settings.replace(purchase_strategy=strategy, purchase_permits=PERMITS, pg_pool_max=30)
    )
    seller, *buyers = await quick_accounts(db, settings, BUYERS + 1, balance=5_000)
    response = await client.post(
        "/api/v1/listings", json=listing_body(1_000, BUYERS), headers=seller.auth
    )
    assert response.status == 201, await response.text()
    listing_id = (await response.json())["id"]
    pool = client.app[keys.pg_pool_key]
    gate = client.app[keys.purchase_gate_key]
    async with db.transaction():
        await db.execute("SELECT FROM listings WHERE id = $1 FOR UPDATE", listing_id)
        buying = [
            asyncio.create_task(
                client.post(purchase_url(listing_id), json={"quantity": 1}, headers=keyed(buyer))
            )
            for buyer in buyers
        ]
        async with asyncio.timeout(TIMEOUT):
            while gate.users(listing_id) < BUYERS or await waiting_for_the_row(db) < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # time enough for more to reach the row (none may)
        in_database = await waiting_for_the_row(db)
        if strategy == "redis_lock":
            # The lock's holder lets in twice the permits. Purchases join a lease of the
            # lock only within LEASE_JOIN_S of its taking, so on a slow machine one may
            # hold a connection and wait for the next lease.
            assert 1 <= in_database <= 2 * PERMITS
            assert pool.get_size() - pool.get_idle_size() == 2 * PERMITS
        else:
            assert in_database == PERMITS
            assert pool.get_size() - pool.get_idle_size() == PERMITS
        assert gate.users(listing_id) == BUYERS
    responses = await asyncio.gather(*buying)
    assert [r.status for r in responses] == [201] * BUYERS
    assert await listing_stock(db, listing_id) == (0, "sold")
    assert gate.listings() == 0
    await check_money(db)
    await check_order_events(db)
