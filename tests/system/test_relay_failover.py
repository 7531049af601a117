"""The relay's leader killed mid-stream, on two real `jangteo serve` processes the test
starts for itself: no instance of another test may hold the relay's lock meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp

from tests.support import ServerProcess, start_servers, stop_servers
from tests.system.realtime_support import (
    committed_offsets,
    insert_events,
    metric,
    open_socket,
    sign_up,
)


async def test_the_relay_leader_killed_mid_stream_loses_and_doubles_nothing(
    server_env: dict[str, str], database_url: str
) -> None:
    first, second = start_servers(ServerProcess(server_env), ServerProcess(server_env))
    channel = "feed:failover"
    try:
        async with aiohttp.ClientSession() as http:
            leader, follower = first, second
            for _ in range(200):
                if await metric(http, first, "jangteo_relay_leader") == 1.0:
                    break
                if await metric(http, second, "jangteo_relay_leader") == 1.0:
                    leader, follower = second, first
                    break
                await asyncio.sleep(0.05)
            user = await sign_up(http, follower)
            socket = await open_socket(http, follower, user)
            await socket.subscribe(channel)

            writer = asyncio.create_task(insert_events(database_url, channel, 300))
            await socket.wait_events(channel, 50)
            assert leader.process is not None
            os.kill(leader.process.pid, signal.SIGKILL)
            await writer
            await socket.wait_events(channel, 300, timeout=60)
            assert await metric(http, follower, "jangteo_relay_leader") == 1.0
            assert socket.offsets(channel) == await committed_offsets(database_url, channel)
            assert [e["data"]["n"] for e in socket.events[channel]] == list(range(300))
    finally:
        stop_servers(first, second)
