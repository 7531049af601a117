"""Redis killed with SIGKILL and restarted while purchases, edits and chat keep flowing."""

from __future__ import annotations

import os
import signal

import aiohttp
import asyncpg

from server.embedded.redis import EmbeddedRedis
from tests.faults.support import wait_ready
from tests.faults.traffic import Traffic, audit, more_writes, open_market, watch
from tests.support import ServerProcess, server_env, start_servers, stop_servers


async def test_redis_killed_and_restarted_under_traffic_loses_nothing(
    database_url: str, own_redis: EmbeddedRedis, db: asyncpg.Connection
) -> None:
    env = server_env(database_url, own_redis.url, REDIS_TIMEOUT="1")
    first, second = start_servers(ServerProcess(env), ServerProcess(env))
    try:
        async with aiohttp.ClientSession() as http:
            market = await open_market(http, (first, second), db)
            await watch(http, market, second)
            traffic = Traffic(http, market)
            await more_writes(market)

            pid = own_redis.running_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            for server in (first, second):
                await wait_ready(http, server, 503)
            await more_writes(market)  # while Redis is gone: PostgreSQL is enough
            own_redis.ensure_running()
            for server in (first, second):
                await wait_ready(http, server)
            await more_writes(market)
            await traffic.stop()

            # No write was refused: none of them needs Redis.
            refused = [answer for answer in market.answers if answer.status not in (200, 201)]
            assert not refused, (refused[:3], market.logs())
            assert market.chat_refusals == 0
            await audit(market, db, database_url)
    finally:
        stop_servers(first, second)
