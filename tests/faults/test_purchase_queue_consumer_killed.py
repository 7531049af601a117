"""The queue strategy's consumer SIGKILLed mid-batch: the other instance's candidate takes
the partition over, claims the entries the dead one had read, and applies each once.

Purchases go through the surviving instance and wait there for their outcomes, while
the consumer on the other instance holds them in a batch it cannot finish (the test holds
the listing's row). Killing it mid-batch rolls its transaction back and leaves the
entries pending in the consumer group; every purchase must still be answered once, by the
successor, with one order per key.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from server.embedded.redis import EmbeddedRedis
from server.orders.queue_consumer import GROUP, QUEUE_LOCK_CLASS
from tests.faults.support import Timed, timed
from tests.orders_support import check_money, check_order_events, check_stock, fund
from tests.support import ServerProcess, server_env
from tests.system.realtime_support import sign_up

BUYS = 8
STOCK = 20
PRICE = 100
WAIT_TIMEOUT = 30.0


@pytest.fixture
async def own_db(own_postgres: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(own_postgres)
    yield conn
    await conn.close()


async def _until(check: asyncpg.Connection, sql: str, *args: object) -> None:
    async with asyncio.timeout(WAIT_TIMEOUT):
        while True:
            if await check.fetchval(sql, *args):
                return
            await asyncio.sleep(0.02)


async def test_a_consumer_killed_mid_batch_leaves_its_entries_to_the_next_applied_once(
    own_postgres: str, own_redis: EmbeddedRedis, own_db: asyncpg.Connection
) -> None:
    env = server_env(
        own_postgres,
        own_redis.url,
        PURCHASE_STRATEGY="queue",
        PURCHASE_QUEUE_PARTITIONS="1",
        PURCHASE_QUEUE_TIMEOUT="20",
    )
    consumer = ServerProcess(env).start()  # first: it takes the partition's lock
    survivor: ServerProcess | None = None
    redis = aioredis.Redis.from_url(own_redis.url)
    try:
        await _until(
            own_db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1 AND objid = 0",
            QUEUE_LOCK_CLASS,
        )
        survivor = ServerProcess(env).start()
        async with aiohttp.ClientSession() as http:
            seller = await sign_up(http, survivor)
            buyer = await sign_up(http, survivor)
            await fund(own_db, buyer.user_id, PRICE * STOCK)
            async with http.post(
                f"{survivor.url}/api/v1/listings",
                json={"title": "lamp", "price": PRICE, "quantity": STOCK, "category": "sports"},
                headers=seller.auth,
            ) as response:
                assert response.status == 201, await response.text()
                listing_id = (await response.json())["id"]
            url = f"{survivor.url}/api/v1/listings/{listing_id}/purchase"
            keys = [uuid.uuid4().hex for _ in range(BUYS)]

            holder = await asyncpg.connect(own_postgres)
            try:
                async with holder.transaction():
                    await holder.execute(
                        "SELECT FROM listings WHERE id = $1 FOR UPDATE", listing_id
                    )
                    buying = [
                        asyncio.create_task(
                            timed(http, "purchase", "POST", url, json={"quantity": 1},
                                  headers={**buyer.auth, "Idempotency-Key": key})
                        )
                        for key in keys
                    ]  # fmt: skip
                    # The consumer is mid-batch: it waits for the row, entries in hand.
                    await _until(
                        own_db,
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name LIKE 'jangteo-queue:%'"
                        " AND $1 = any(pg_blocking_pids(pid))",
                        holder.get_server_pid(),
                    )
                    stream = "purchases:{jangteo:0}"  # the default deployment, partition 0
                    pending = await redis.xpending(stream, GROUP)
                    assert pending["pending"] >= 1
                    assert consumer.process is not None
                    consumer.process.send_signal(signal.SIGKILL)
                    consumer.wait()
            finally:
                await holder.close()
            replies: list[Timed] = await asyncio.gather(*buying)

        assert [reply.status for reply in replies] == [201] * BUYS, replies
        assert await own_db.fetchval("SELECT count(*) FROM orders") == BUYS
        assert await own_db.fetchval("SELECT count(*) FROM idempotency_keys") == BUYS
        async with asyncio.timeout(WAIT_TIMEOUT):  # acknowledged by the successor
            while True:
                if not (await redis.xpending(stream, GROUP))["pending"]:
                    break
                await asyncio.sleep(0.05)
        await check_money(own_db)
        await check_stock(own_db, listing_id, STOCK)
        await check_order_events(own_db)
    finally:
        await redis.aclose()
        consumer.stop()
        if survivor is not None:
            survivor.stop()
