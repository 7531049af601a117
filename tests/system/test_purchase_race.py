"""Purchases racing over two real server processes, per strategy: no oversell, no lost money."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from server.errors import PROBLEM_CONTENT_TYPE
from server.settings import Settings
from tests.orders_support import (
    REPLAYED,
    STRATEGIES,
    JsonObject,
    balance_of,
    check_invariants,
    check_money,
    check_order_events,
    fund,
    keyed,
    listing_body,
    listing_stock,
    order_url,
    purchase_url,
    quick_account,
    quick_accounts,
)
from tests.support import TEST_JWT_SECRET, Account, ServerProcess, start_servers, stop_servers

STOCK = 25
PRICE = 1_000
BUYERS = 100
ATTEMPTS = 320


@dataclass(frozen=True, slots=True)
class Cluster:
    """Two `jangteo serve` processes sharing one database and one Redis."""

    strategy: str
    servers: tuple[ServerProcess, ServerProcess]

    def url(self, n: int, path: str) -> str:
        return self.servers[n % 2].url + path

    def logs(self) -> str:
        return "\n".join(server.output()[-3000:] for server in self.servers)


@pytest.fixture(scope="module", params=STRATEGIES)
def cluster(request: pytest.FixtureRequest, database_url: str, redis_url: str) -> Iterator[Cluster]:
    """Started once per strategy; the tables and Redis are still emptied after every test."""
    env = {
        "JANGTEO_DATABASE_URL": database_url,
        "JANGTEO_REDIS_URL": redis_url,
        "JANGTEO_JWT_SECRET": TEST_JWT_SECRET,
        "JANGTEO_ACCESS_LOG": "off",
        "JANGTEO_RATE_LIMITS": "off",
        "JANGTEO_PURCHASE_STRATEGY": request.param,
        "JANGTEO_SHUTDOWN_TIMEOUT": "5",
        # Hundreds of requests queue for 20 connections per process; this suite is about
        # correctness under contention, not about shedding load.
        "JANGTEO_PG_ACQUIRE_TIMEOUT": "60",
    }
    first, second = start_servers(ServerProcess(env), ServerProcess(env))
    try:
        yield Cluster(request.param, (first, second))
    finally:
        stop_servers(first, second)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    replayed: bool
    retry_after: str | None
    body: bytes

    @property
    def json(self) -> JsonObject:
        value: JsonObject = orjson.loads(self.body)
        return value

    @property
    def slug(self) -> str:
        """The problem type's last segment ('' when the reply is not a problem)."""
        if self.content_type != PROBLEM_CONTENT_TYPE:
            return ""
        return str(self.json["type"]).rsplit("/", 1)[-1]


async def post(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: Any = None
) -> Reply:
    async with http.post(url, json=body, headers=headers) as response:
        return Reply(
            response.status,
            response.content_type,
            response.headers.get(REPLAYED) == "true",
            response.headers.get("Retry-After"),
            await response.read(),
        )


async def new_listing(
    cluster: Cluster, http: aiohttp.ClientSession, seller: Account, stock: int
) -> int:
    reply = await post(
        http, cluster.url(0, "/api/v1/listings"), seller.auth, listing_body(PRICE, stock)
    )
    assert reply.status == 201, reply.body
    listing_id: int = reply.json["id"]
    return listing_id


async def buy(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    n: int,
    buyer: Account,
    listing_id: int,
    quantity: int,
    key: str | None = None,
) -> Reply:
    return await post(
        http, cluster.url(n, purchase_url(listing_id)), keyed(buyer, key), {"quantity": quantity}
    )


async def bought(
    cluster: Cluster, http: aiohttp.ClientSession, buyer: Account, listing_id: int, quantity: int
) -> JsonObject:
    reply = await buy(cluster, http, 0, buyer, listing_id, quantity)
    assert reply.status == 201, reply.body
    return reply.json


def allowed_refusals(strategy: str) -> set[str]:
    refusals = {"insufficient-stock", "insufficient-funds"}
    if strategy in ("optimistic", "redis_lock"):
        refusals.add("purchase-conflict")  # retries ran out, or the lock wait did
    return refusals


async def test_hundreds_of_buyers_race_for_one_listing(
    cluster: Cluster, http: aiohttp.ClientSession, db: asyncpg.Connection, settings: Settings
) -> None:
    seller = await quick_account(db, settings)
    buyers = await quick_accounts(db, settings, BUYERS)
    for n, buyer in enumerate(buyers):  # 500 to 4,500: some can buy several, some none
        await fund(db, buyer.user_id, PRICE // 2 + PRICE * (n % 5))
    listing_id = await new_listing(cluster, http, seller, STOCK)

    # A few orders made beforehand are cancelled (by either party) or completed mid-race.
    solvent = [buyer for n, buyer in enumerate(buyers) if n % 5]
    early = [(await bought(cluster, http, buyer, listing_id, 1)) for buyer in solvent[:6]]
    buyer_of = {buyer.user_id: buyer for buyer in buyers}

    attempts = [(buyers[n % BUYERS], 2 if n % 4 == 0 else 1) for n in range(ATTEMPTS)]
    moves = [
        (order["id"], account, action)
        for order in early
        for account, action in (
            (buyer_of[order["buyer_id"]], "cancel"),
            (seller, "cancel"),
            (buyer_of[order["buyer_id"]], "complete"),
        )
    ]
    jobs: list[tuple[str, int, Awaitable[Reply]]] = [
        ("buy", n, buy(cluster, http, n, buyer, listing_id, quantity))
        for n, (buyer, quantity) in enumerate(attempts)
    ]
    jobs += [
        (action, n, post(http, cluster.url(n, order_url(order_id, action)), keyed(account)))
        for n, (order_id, account, action) in enumerate(moves)
    ]
    random.Random(7).shuffle(jobs)
    replies = await asyncio.gather(*(job for _, _, job in jobs))
    purchases: dict[int, Reply] = {}
    transitions: dict[int, Reply] = {}
    for (kind, n, _), reply in zip(jobs, replies, strict=True):
        (purchases if kind == "buy" else transitions)[n] = reply

    # Every purchase answered 201 or one of the expected conflicts: never a 5xx.
    outcomes = Counter(reply.status for reply in purchases.values())
    assert set(outcomes) <= {201, 409}, (outcomes, cluster.logs())
    refusals = Counter(reply.slug for reply in purchases.values() if reply.status == 409)
    assert set(refusals) <= allowed_refusals(cluster.strategy), refusals
    assert outcomes[201] > 0
    assert refusals["insufficient-stock"] > 0  # demand was well above the stock

    # Every 201 is exactly one order row, the one the buyer asked for.
    made = {reply.json["id"]: n for n, reply in purchases.items() if reply.status == 201}
    assert len(made) == outcomes[201]
    rows = {
        row["id"]: row
        for row in await db.fetch(
            "SELECT id, buyer_id, seller_id, listing_id, quantity, amount FROM orders"
            " WHERE id <> all($1::bigint[])",
            [order["id"] for order in early],
        )
    }
    assert set(rows) == set(made)
    for order_id, n in made.items():
        buyer, quantity = attempts[n]
        row = rows[order_id]
        assert (row["buyer_id"], row["seller_id"], row["listing_id"]) == (
            buyer.user_id,
            seller.user_id,
            listing_id,
        )
        assert (row["quantity"], row["amount"]) == (quantity, quantity * PRICE)
        assert purchases[n].json["quantity"] == quantity

    # Of the moves racing on each early order, exactly one won; the rest were refused.
    for order in early:
        tried = [
            (moves[n][2], reply) for n, reply in transitions.items() if moves[n][0] == order["id"]
        ]
        winners = [(action, reply) for action, reply in tried if reply.status == 200]
        assert len(winners) == 1, [(action, reply.status, reply.body) for action, reply in tried]
        action, reply = winners[0]
        expected = "completed" if action == "complete" else "cancelled"
        assert reply.json["status"] == expected
        status = await db.fetchval("SELECT status FROM orders WHERE id = $1", order["id"])
        assert status == expected
        for _, refused in tried:
            if refused.status != 200:
                assert (refused.status, refused.slug) == (409, "illegal-order-transition")

    await check_invariants(db, listing_id, STOCK)
    stored = await db.fetchval("SELECT count(*) FROM idempotency_keys")
    assert stored == len(early) + len(made) + len(early)  # one winning move per early order


async def test_one_key_sent_twenty_times_buys_once(
    cluster: Cluster, http: aiohttp.ClientSession, db: asyncpg.Connection, settings: Settings
) -> None:
    seller = await quick_account(db, settings)
    buyer = await quick_account(db, settings, balance=5_000)
    listing_id = await new_listing(cluster, http, seller, 5)

    replies = await asyncio.gather(
        *(buy(cluster, http, n, buyer, listing_id, 2, key="only-once") for n in range(20))
    )
    assert {reply.status for reply in replies} <= {201, 409}, [r.body for r in replies]
    for reply in replies:
        if reply.status == 409:
            assert reply.slug == "idempotency-key-in-flight"
    created = [reply for reply in replies if reply.status == 201]
    assert len([reply for reply in created if not reply.replayed]) == 1
    assert len({reply.body for reply in created}) == 1

    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    assert await balance_of(db, buyer.user_id) == 3_000
    assert await listing_stock(db, listing_id) == (3, "on_sale")
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1
    late = await buy(cluster, http, 1, buyer, listing_id, 2, key="only-once")
    assert (late.status, late.replayed, late.body) == (201, True, created[0].body)
    await check_money(db)
    await check_order_events(db)


async def test_cancel_and_complete_racing_on_one_order_move_it_once(
    cluster: Cluster, http: aiohttp.ClientSession, db: asyncpg.Connection, settings: Settings
) -> None:
    seller = await quick_account(db, settings)
    buyers = await quick_accounts(db, settings, 6, balance=5_000)
    listing_id = await new_listing(cluster, http, seller, 12)
    orders = [await bought(cluster, http, buyer, listing_id, 2) for buyer in buyers]
    assert await listing_stock(db, listing_id) == (0, "sold")

    moves: list[tuple[int, str]] = []
    jobs: list[Awaitable[Reply]] = []
    for buyer, order in zip(buyers, orders, strict=True):
        for n in range(16):
            account, action = [(buyer, "complete"), (buyer, "cancel"), (seller, "cancel")][n % 3]
            moves.append((order["id"], action))
            url = cluster.url(n, order_url(order["id"], action))
            jobs.append(post(http, url, keyed(account)))
    shuffled = list(range(len(jobs)))
    random.Random(11).shuffle(shuffled)
    replies = dict(zip(shuffled, await asyncio.gather(*(jobs[i] for i in shuffled)), strict=True))

    completed = 0
    for buyer, order in zip(buyers, orders, strict=True):
        mine = [(moves[i][1], replies[i]) for i in range(len(jobs)) if moves[i][0] == order["id"]]
        won = [(action, reply) for action, reply in mine if reply.status == 200]
        assert len(won) == 1, [(action, reply.status, reply.body) for action, reply in mine]
        for _, reply in mine:
            if reply.status != 200:
                assert (reply.status, reply.slug) == (409, "illegal-order-transition")
        action = won[0][0]
        status = await db.fetchval("SELECT status FROM orders WHERE id = $1", order["id"])
        assert status == ("completed" if action == "complete" else "cancelled")
        assert won[0][1].json["status"] == status
        completed += action == "complete"
        refunded = action == "cancel"
        assert await balance_of(db, buyer.user_id) == 5_000 - (0 if refunded else 2 * PRICE)

    assert await balance_of(db, seller.user_id) == completed * 2 * PRICE
    quantity, _ = await listing_stock(db, listing_id)
    assert quantity == 12 - 2 * completed
    await check_invariants(db, listing_id, 12)
