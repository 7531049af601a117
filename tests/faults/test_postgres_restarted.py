"""PostgreSQL stopped (fast shutdown) and started again while the market keeps writing.

During the outage every request answers 503 with Retry-After within the configured
timeouts, chat sends are refused with "send again"; afterwards the pool and the relay
recover by themselves, and nothing acknowledged or committed is lost.
"""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg

from server.embedded.postgres import EmbeddedPostgres
from server.embedded.redis import EmbeddedRedis
from tests.faults.support import eventually, wait_ready
from tests.faults.traffic import Traffic, audit, more_writes, open_market, watch
from tests.support import ServerProcess, server_env, start_servers, stop_servers

ACQUIRE_S, CONNECT_S, STATEMENT_S = 2.0, 2.0, 3.0


async def test_postgres_stopped_and_started_under_traffic_loses_nothing(
    own_postgres: str, own_postgres_server: EmbeddedPostgres, own_redis: EmbeddedRedis
) -> None:
    env = server_env(
        own_postgres,
        own_redis.url,
        PG_ACQUIRE_TIMEOUT=str(ACQUIRE_S),
        PG_CONNECT_TIMEOUT=str(CONNECT_S),
        PG_STATEMENT_TIMEOUT=str(STATEMENT_S),
    )
    first, second = start_servers(ServerProcess(env), ServerProcess(env))
    servers = (first, second)
    try:
        async with aiohttp.ClientSession() as http:
            db = await asyncpg.connect(own_postgres)
            try:
                market = await open_market(http, servers, db)
            finally:
                await db.close()
            await watch(http, market, servers[1])
            traffic = Traffic(http, market)
            await more_writes(market)

            outage_from = len(market.answers)
            await asyncio.to_thread(own_postgres_server.stop)
            for server in servers:
                await wait_ready(http, server, 503)

            async def refused() -> bool:
                return sum(a.status == 503 for a in market.answers[outage_from:]) >= 6

            await eventually(refused, "requests refused during the outage")
            await asyncio.to_thread(own_postgres_server.ensure_running)
            for server in servers:
                await wait_ready(http, server)  # the pool reconnects by itself
            await more_writes(market)
            await traffic.stop()

            for answer in market.answers:
                assert answer.status in (200, 201, 503, 409), (answer, market.logs())
                if answer.status == 503:
                    assert answer.retry_after is not None, answer
                # Nobody waits past the acquire and statement timeouts (with a margin).
                assert answer.seconds < ACQUIRE_S + STATEMENT_S + CONNECT_S, answer
            assert market.chat_refusals > 0  # "not stored; send again" during the outage

            db = await asyncpg.connect(own_postgres)
            try:
                await audit(market, db, own_postgres)
            finally:
                await db.close()
    finally:
        stop_servers(*servers)
