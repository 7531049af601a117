"""The event subscription lost (its connections killed) or silent (Redis stopped with
SIGSTOP for longer than the watchdog allows): noticed, reported by /readyz, backfilled."""

from __future__ import annotations

import os
import signal

import aiohttp
import orjson
import redis.asyncio as aioredis

from server.embedded.redis import EmbeddedRedis
from tests.faults.support import eventually, metric, wait_ready
from tests.support import ServerProcess, server_env, start_servers, stop_servers
from tests.system.realtime_support import committed_offsets, insert_events, open_socket, sign_up

WATCHDOG_S = 0.5


async def test_killed_subscriber_connections_are_detected_and_backfilled(
    database_url: str, own_redis: EmbeddedRedis
) -> None:
    env = server_env(database_url, own_redis.url)
    servers = start_servers(ServerProcess(env), ServerProcess(env))
    channel = "feed:client-kill"
    try:
        async with aiohttp.ClientSession() as http:
            user = await sign_up(http, servers[0])
            sockets = [await open_socket(http, server, user) for server in servers]
            for socket in sockets:
                await socket.subscribe(channel)
            redis = aioredis.Redis.from_url(own_redis.url)
            try:
                for _ in range(3):
                    await redis.client_kill_filter(_type="pubsub")
                    await insert_events(database_url, channel, 5)  # while they reconnect
            finally:
                await redis.aclose()
            for socket in sockets:
                await socket.wait_events(channel, 15, timeout=60)
                assert socket.offsets(channel) == await committed_offsets(database_url, channel)
    finally:
        stop_servers(*servers)


async def _events_check(http: aiohttp.ClientSession, server: ServerProcess) -> str:
    async with http.get(f"{server.url}/readyz") as response:
        body = orjson.loads(await response.read())
    if response.status == 200:
        return "ok"
    return str(body["checks"]["events"])


async def test_a_stalled_redis_is_noticed_by_the_watchdog_and_backfilled(
    database_url: str, own_redis: EmbeddedRedis
) -> None:
    env = server_env(
        database_url, own_redis.url, REDIS_WATCHDOG_INTERVAL=str(WATCHDOG_S), REDIS_TIMEOUT="1"
    )
    server = ServerProcess(env).start()
    channel = "feed:stalled"
    pid = own_redis.running_pid()
    assert pid is not None
    try:
        async with aiohttp.ClientSession() as http:
            user = await sign_up(http, server)
            socket = await open_socket(http, server, user)
            await socket.subscribe(channel)
            await insert_events(database_url, channel, 5)
            await socket.wait_events(channel, 5)

            os.kill(pid, signal.SIGSTOP)
            try:
                await insert_events(database_url, channel, 5, start=5)  # committed meanwhile

                # The subscription's own pings go unanswered: the instance knows it cannot
                # receive events (not only that a PING of its request pool failed).
                async def noticed() -> bool:
                    return await _events_check(http, server) == "error: event subscription down"

                await eventually(noticed, "the watchdog reports the subscription down")
            finally:
                os.kill(pid, signal.SIGCONT)
            await insert_events(database_url, channel, 5, start=10)
            await socket.wait_events(channel, 15, timeout=60)
            assert [e["data"]["n"] for e in socket.events[channel]] == list(range(15))
            assert socket.offsets(channel) == await committed_offsets(database_url, channel)
            await wait_ready(http, server)
            fills = await metric(http, server, "jangteo_hub_gap_fills_total")
            assert fills >= 1  # it read back what it may have missed after reconnecting
    finally:
        server.stop()
