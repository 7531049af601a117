"""Faults that hit the relay leader alone: cut off from Redis, or paused.

Another instance takes the lead within seconds, and no instance's subscribers go without
the events that committed meanwhile: the healthy instance's through Redis, the cut-off
one's from PostgreSQL (its hub polls the log while it cannot hear Redis), the paused
one's once it runs again.
"""

from __future__ import annotations

import os
import signal

import aiohttp

from loadtests.chaos.proxy import TcpProxy
from server.embedded.redis import EmbeddedRedis
from tests.faults.support import eventually, metric, wait_ready
from tests.support import ServerProcess, server_env, start_servers, stop_servers
from tests.system.realtime_support import (
    Socket,
    User,
    committed_offsets,
    create_listing,
    open_socket,
    set_price,
    sign_up,
)


async def leader_index(http: aiohttp.ClientSession, servers: list[ServerProcess]) -> int:
    """The index of the one server that leads the relay (waiting until exactly one does)."""
    found: list[int] = []

    async def one_leads() -> bool:
        flags = [await metric(http, server, "jangteo_relay_leader") for server in servers]
        found[:] = [index for index, flag in enumerate(flags) if flag == 1]
        return len(found) == 1

    await eventually(one_leads, "exactly one relay leader")
    return found[0]


async def watch(
    http: aiohttp.ClientSession, servers: list[ServerProcess], user: User, channel: str
) -> list[Socket]:
    sockets = [await open_socket(http, server, user) for server in servers]
    for socket in sockets:
        await socket.subscribe(channel)
    return sockets


async def edit_prices(
    http: aiohttp.ClientSession, server: ServerProcess, user: User, listing: int, prices: range
) -> None:
    for price in prices:
        await set_price(http, server, user, listing, price)


async def all_received(sockets: list[Socket], channel: str, database_url: str) -> None:
    committed = await committed_offsets(database_url, channel)
    for socket in sockets:
        await socket.wait_events(channel, len(committed), timeout=60)
        assert socket.offsets(channel) == committed


async def test_a_leader_cut_off_from_redis_hands_over_and_every_instance_keeps_receiving(
    own_postgres: str, own_redis: EmbeddedRedis
) -> None:
    proxies = [TcpProxy(own_redis.port).start() for _ in range(2)]
    settings = {"REDIS_WATCHDOG_INTERVAL": "0.5", "REDIS_TIMEOUT": "1"}
    servers = start_servers(
        *(
            ServerProcess(server_env(own_postgres, proxy.url(own_redis.url), **settings))
            for proxy in proxies
        )
    )
    try:
        async with aiohttp.ClientSession() as http:
            for server in servers:
                await wait_ready(http, server)
            leader = await leader_index(http, servers)
            other = servers[1 - leader]
            user = await sign_up(http, other)
            listing = await create_listing(http, other, user)
            channel = f"listing:{listing}"
            sockets = await watch(http, servers, user, channel)

            proxies[leader].blackhole()
            await edit_prices(http, other, user, listing, range(1000, 1005))
            # Everyone gets them while the cut lasts: the cut-off instance from PostgreSQL.
            await all_received(sockets, channel, own_postgres)
            assert await leader_index(http, servers) == 1 - leader
            assert await metric(http, servers[leader], "jangteo_relay_step_downs_total") >= 1
            await wait_ready(http, servers[leader], 503)  # it cannot hear Redis

            proxies[leader].restore()
            await wait_ready(http, servers[leader])
            await edit_prices(http, other, user, listing, range(2000, 2002))
            await all_received(sockets, channel, own_postgres)
    finally:
        stop_servers(*servers)
        for proxy in proxies:
            proxy.stop()


async def test_a_paused_leader_loses_the_lock_and_events_flow_on(
    own_postgres: str, own_redis: EmbeddedRedis
) -> None:
    env = server_env(own_postgres, own_redis.url, RELAY_LOCK_TIMEOUT="3")
    servers = start_servers(ServerProcess(env), ServerProcess(env))
    paused: int | None = None
    try:
        async with aiohttp.ClientSession() as http:
            for server in servers:
                await wait_ready(http, server)
            leader = await leader_index(http, servers)
            other = servers[1 - leader]
            user = await sign_up(http, other)
            listing = await create_listing(http, other, user)
            channel = f"listing:{listing}"
            sockets = await watch(http, servers, user, channel)

            process = servers[leader].process
            assert process is not None
            paused = process.pid
            os.kill(paused, signal.SIGSTOP)
            await edit_prices(http, other, user, listing, range(1000, 1004))
            await all_received([sockets[1 - leader]], channel, own_postgres)

            async def other_leads() -> bool:
                return await metric(http, other, "jangteo_relay_leader") == 1

            await eventually(other_leads, "the other instance leads")
            os.kill(paused, signal.SIGCONT)
            paused = None
            await wait_ready(http, servers[leader])
            assert await leader_index(http, servers) == 1 - leader
            await edit_prices(http, other, user, listing, range(2000, 2002))
            await all_received(sockets, channel, own_postgres)  # the paused one's too
    finally:
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        stop_servers(*servers)
