"""Every app connection terminated (pg_terminate_backend) while purchases are mid-way.

Each purchase either committed whole (201) or left nothing behind (503 with Retry-After);
retrying every key until it answers 201 makes exactly one order per key, and a retry of
a key that already succeeded replays the same answer instead of buying again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import orjson
import pytest

from server.embedded.redis import EmbeddedRedis
from server.settings import PURCHASE_STRATEGIES
from tests.faults.support import Timed, timed
from tests.orders_support import REPLAYED, check_money, check_order_events, check_stock, fund
from tests.support import ServerProcess, server_env
from tests.system.realtime_support import User, sign_up

BUYS = 6
STOCK = 20
PRICE = 100


@pytest.fixture
async def own_db(own_postgres: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(own_postgres)
    yield conn
    await conn.close()


async def _buy(http: aiohttp.ClientSession, url: str, buyer: User, key: str) -> Timed:
    return await timed(
        http, "purchase", "POST", url, json={"quantity": 1},
        headers={**buyer.auth, "Idempotency-Key": key},
    )  # fmt: skip


async def _terminate_app_connections(db: asyncpg.Connection) -> int:
    """pg_terminate_backend on every connection of the app's pools and purchase queue
    consumers; how many there were."""
    killed: int = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'jangteo' OR application_name LIKE 'jangteo-queue:%'"
    )
    return killed


@pytest.mark.parametrize("strategy", PURCHASE_STRATEGIES)
async def test_purchases_cut_off_mid_way_leave_nothing_half_done_and_retry_once(
    own_postgres: str, own_redis: EmbeddedRedis, own_db: asyncpg.Connection, strategy: str
) -> None:
    env = server_env(own_postgres, own_redis.url, PURCHASE_STRATEGY=strategy)
    server = ServerProcess(env).start()
    try:
        async with aiohttp.ClientSession() as http:
            seller = await sign_up(http, server)
            buyer = await sign_up(http, server)
            await fund(own_db, buyer.user_id, PRICE * STOCK)
            async with http.post(
                f"{server.url}/api/v1/listings",
                json={"title": "lamp", "price": PRICE, "quantity": STOCK, "category": "sports"},
                headers=seller.auth,
            ) as response:
                assert response.status == 201, await response.text()
                listing_id = (await response.json())["id"]
            url = f"{server.url}/api/v1/listings/{listing_id}/purchase"

            blocker = await asyncpg.connect(own_postgres)
            try:
                transaction = blocker.transaction()
                await transaction.start()
                # Hold the buyer's wallet: purchases take (or lock) the stock, then wait.
                await blocker.execute(
                    "SELECT balance FROM wallets WHERE user_id = $1 FOR UPDATE", buyer.user_id
                )
                keys = [uuid.uuid4().hex for _ in range(BUYS)]
                first = [asyncio.create_task(_buy(http, url, buyer, key)) for key in keys]
                await _wait_blocked(own_db, blocker.get_server_pid(), first)
                assert await _terminate_app_connections(own_db) >= 1
                await transaction.rollback()
            finally:
                await blocker.close()
            replies = await asyncio.gather(*first)

            # Each one committed whole or not at all, and said which.
            assert {reply.status for reply in replies} <= {201, 503, 409}, replies
            if strategy != "queue":  # a consumer's death is hidden: the next one applies
                assert any(reply.status == 503 for reply in replies), replies
            for reply in replies:
                if reply.status == 503:
                    assert reply.retry_after is not None
            paid = {orjson.loads(r.body)["id"] for r in replies if r.status == 201}
            rows = await own_db.fetch("SELECT id FROM orders")
            assert {row["id"] for row in rows} == paid
            await _check(own_db, listing_id)

            # Retried with the same keys until each answers 201, then once more.
            answers: dict[str, bytes] = {}
            for key in keys:
                for _ in range(100):
                    reply = await _buy(http, url, buyer, key)
                    if reply.status == 201:
                        answers[key] = reply.body
                        break
                    assert reply.status in (503, 409), reply
                    await asyncio.sleep(0.1)
            assert len(answers) == BUYS
            for key in keys:
                async with http.post(
                    url, json={"quantity": 1}, headers={**buyer.auth, "Idempotency-Key": key}
                ) as response:
                    assert response.status == 201
                    assert response.headers.get(REPLAYED) == "true"
                    assert await response.read() == answers[key]
            assert await own_db.fetchval("SELECT count(*) FROM orders") == BUYS  # one per key
            await _check(own_db, listing_id)
    finally:
        server.stop()


async def _check(db: asyncpg.Connection, listing_id: int) -> None:
    await check_money(db)
    await check_stock(db, listing_id, STOCK)
    await check_order_events(db)
    keys = await db.fetchval("SELECT count(*) FROM idempotency_keys")
    assert keys == await db.fetchval("SELECT count(*) FROM orders")


async def _wait_blocked(
    db: asyncpg.Connection, blocker_pid: int, requests: list[asyncio.Task[Timed]]
) -> None:
    """Until an app connection waits for the wallet lock (a purchase is mid-way)."""
    async with asyncio.timeout(60):
        while not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE (application_name = 'jangteo' OR application_name LIKE 'jangteo-queue:%')"
            " AND wait_event_type = 'Lock' AND $1 = any(pg_blocking_pids(pid))",
            blocker_pid,
        ):
            for request in requests:
                assert not request.done(), request.result()
            await asyncio.sleep(0.01)
