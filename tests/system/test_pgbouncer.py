"""jangteo through pgbouncer in session mode: two real instances whose every PostgreSQL
connection (request pools and the relay's lock session) goes through pgbouncer.

The relay's fallback poll is set far beyond every timeout here, so an event that arrives
was published because its commit woke the relay: NOTIFY from the writer's connection,
through pgbouncer, to the LISTEN of the leader's relay, through pgbouncer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from db.pool import connect, create_pool
from db.queries.relay import RELAY_LINE_CLASS, RELAY_LOCK_CLASS
from realtime.relay import RelaySettings
from server.embedded.pgbouncer import EmbeddedPgbouncer
from server.settings import Settings
from tests import support
from tests.orders_support import (
    STRATEGIES,
    check_invariants,
    fund,
    keyed,
    listing_body,
    purchase_url,
    quick_account,
    quick_accounts,
)
from tests.support import ServerProcess
from tests.system.pgbouncer_support import app_backends, server_pids
from tests.system.realtime_support import (
    committed_offsets,
    create_listing,
    insert_events,
    metric,
    open_socket,
    set_price,
    sign_up,
)

# The relay's poll: never within a test, so only a NOTIFY can wake it within the event
# waits' timeouts (seconds). Its lock timeout must be at least twice the poll plus one
# second (server/settings.py).
RELAY_POLL_S = 600
LEADER_TIMEOUT_S = 60.0
STOCK = 20
PRICE = 1_000
BUYERS = 40
ATTEMPTS = 120
_LEADER_LOCKS = """
SELECT pid, granted FROM pg_locks
WHERE locktype = 'advisory' AND classid = $1 AND objid = 0 AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.fixture
def strategy() -> str:
    return "atomic"


@pytest.fixture
def server_env(pgbouncer: EmbeddedPgbouncer, redis_url: str, strategy: str) -> dict[str, str]:
    """Instances that know PostgreSQL only through pgbouncer (used by ``two_servers``)."""
    return support.server_env(
        pgbouncer.url,
        redis_url,
        PURCHASE_STRATEGY=strategy,
        RELAY_POLL_INTERVAL=str(RELAY_POLL_S),
        RELAY_LOCK_TIMEOUT=str(2 * RELAY_POLL_S + 1),
        # A hundred requests queue for 20 connections per process: this is about
        # correctness under contention, not about shedding load.
        PG_ACQUIRE_TIMEOUT="60",
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        yield session


async def check_all_through_pgbouncer(db: asyncpg.Connection, bouncer: EmbeddedPgbouncer) -> None:
    """Every backend the instances opened is one of pgbouncer's server connections."""
    backends = await app_backends(db)  # first: pgbouncer keeps its servers open longer
    servers = server_pids(bouncer)
    assert backends, "the instances have no connection to this database"
    assert set(backends) <= set(servers), (backends, servers)


async def test_pool_and_relay_sessions_keep_their_settings_through_pgbouncer(
    pgbouncer: EmbeddedPgbouncer, settings: Settings, db: asyncpg.Connection
) -> None:
    """pgbouncer refuses startup parameters it does not track (statement_timeout, …):
    the pool and the relay SET them once connected, and they hold for the session."""
    pool = await create_pool(
        pgbouncer.url,
        min_size=1,
        max_size=2,
        connect_timeout=settings.pg_connect_timeout,
        acquire_timeout=settings.pg_acquire_timeout,
        statement_timeout=settings.pg_statement_timeout,
    )
    try:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT current_setting('statement_timeout') AS statement,"
                " current_setting('application_name') AS app,"
                " current_setting('jangteo.notify_after_commit') AS notify"
            )
            assert row is not None
            assert dict(row) == {"statement": "10s", "app": "jangteo", "notify": "on"}
    finally:
        await pool.close()

    # The relay's lock session ends when it stays silent for lock_timeout, and pgbouncer
    # then closes the client too: a paused leader's lock goes to the next in line.
    relay = RelaySettings(pgbouncer.url, lock_timeout=2.0)
    lock = await connect(relay.database_url, relay.lock_session_settings("test"), 10)
    try:
        assert await lock.fetchval("SHOW idle_session_timeout") == "2s"
        assert await lock.fetchval("SHOW application_name") == "jangteo-relay:test"
        await lock.execute("SELECT pg_advisory_lock($1, 0)", RELAY_LOCK_CLASS)
        assert [row["granted"] for row in await db.fetch(_LEADER_LOCKS, RELAY_LOCK_CLASS)] == [True]
        deadline = time.monotonic() + 30
        while await db.fetch(_LEADER_LOCKS, RELAY_LOCK_CLASS):
            assert time.monotonic() < deadline, "the silent session kept its lock"
            await asyncio.sleep(0.1)
        with pytest.raises((asyncpg.InterfaceError, asyncpg.PostgresError, OSError)):
            await lock.fetchval("SELECT 1")
    finally:
        lock.terminate()


async def purchase(
    http: aiohttp.ClientSession, server: ServerProcess, buyer: support.Account, listing_id: int
) -> tuple[int, dict[str, Any]]:
    url = server.url + purchase_url(listing_id)
    quantity = 1 + buyer.user_id % 2
    async with http.post(url, json={"quantity": quantity}, headers=keyed(buyer)) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        return response.status, body


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_buyers_racing_through_pgbouncer_never_oversell_or_lose_money(
    strategy: str,
    two_servers: tuple[ServerProcess, ServerProcess],
    pgbouncer: EmbeddedPgbouncer,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    seller = await quick_account(db, settings)
    buyers = await quick_accounts(db, settings, BUYERS)
    for n, buyer in enumerate(buyers):  # 500 to 2,500: some can buy several, some none
        await fund(db, buyer.user_id, PRICE // 2 + PRICE * (n % 3))
    created = await http.post(
        two_servers[0].url + "/api/v1/listings",
        json=listing_body(PRICE, STOCK),
        headers=seller.auth,
    )
    assert created.status == 201, await created.text()
    listing_id: int = (await created.json())["id"]

    replies = await asyncio.gather(
        *(
            purchase(http, two_servers[n % 2], buyers[n % BUYERS], listing_id)
            for n in range(ATTEMPTS)
        )
    )

    statuses = Counter(status for status, _ in replies)
    assert set(statuses) <= {201, 409}, [body for status, body in replies if status != 201]
    refusals = Counter(body["type"].rsplit("/", 1)[-1] for status, body in replies if status == 409)
    allowed = {"insufficient-stock", "insufficient-funds"}
    if strategy in ("optimistic", "redis_lock"):
        allowed.add("purchase-conflict")  # retries ran out, or the lock wait did
    assert set(refusals) <= allowed, refusals
    assert statuses[201] > 0
    assert refusals["insufficient-stock"] > 0  # demand was well above the stock
    orders = {body["id"] for status, body in replies if status == 201}
    assert len(orders) == statuses[201] == await db.fetchval("SELECT count(*) FROM orders")
    await check_invariants(db, listing_id, STOCK)
    await check_all_through_pgbouncer(db, pgbouncer)


async def test_changes_reach_the_other_instance_woken_by_notify_through_pgbouncer(
    two_servers: tuple[ServerProcess, ServerProcess],
    pgbouncer: EmbeddedPgbouncer,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    first, second = two_servers
    # One leader holds the lock and the other waits in line for it, each on a pgbouncer
    # session.
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while True:
        leaders = [await metric(http, server, "jangteo_relay_leader") for server in two_servers]
        held = await db.fetch(_LEADER_LOCKS, RELAY_LOCK_CLASS)
        in_line = await db.fetch(_LEADER_LOCKS, RELAY_LINE_CLASS)
        if sorted(leaders) == [0.0, 1.0] and len(held) == len(in_line) == 1:
            break
        assert time.monotonic() < deadline, (leaders, held, in_line)
        await asyncio.sleep(0.2)
    servers = server_pids(pgbouncer)
    locks = [*held, *in_line]
    assert all(row["granted"] for row in locks) and held[0]["pid"] != in_line[0]["pid"]
    names = {servers.get(row["pid"]) or "" for row in locks}
    assert all(name.startswith("jangteo-relay:") for name in names), (locks, servers)

    # A change through one instance reaches a subscriber on the other, each woken for.
    seller = await sign_up(http, first)
    viewer = await sign_up(http, second)
    listing_id = await create_listing(http, first, seller)
    channel = f"listing:{listing_id}"
    watcher = await open_socket(http, second, viewer)
    await watcher.subscribe(channel)
    prices = [900, 800, 700]
    for count, price in enumerate(prices, 1):
        await set_price(http, first, seller, listing_id, price)
        await watcher.wait_events(channel, count)
    events = watcher.events[channel]
    assert [event["type"] for event in events] == ["listing.price_changed"] * len(prices)
    assert [event["data"]["price"] for event in events] == prices

    # Rows written by any other client wake the relay too (the outbox trigger's NOTIFY).
    for count in range(len(prices) + 1, len(prices) + 3):
        await insert_events(database_url, channel, 1, start=count)
        await watcher.wait_events(channel, count)
    assert [event["type"] for event in events[len(prices) :]] == ["test.tick"] * 2

    # Offsets are the channel's committed positions, each chained to the one before it.
    committed = await committed_offsets(database_url, channel)
    received = watcher.offsets(channel)
    assert received == committed[-len(received) :]
    before = committed[: -len(received)]
    assert [event["prev"] for event in events] == [before[-1] if before else 0, *received[:-1]]
    await check_all_through_pgbouncer(db, pgbouncer)
