"""Realtime across two real `jangteo serve` processes that each test starts for itself: one
is killed, or both run with a setting of the test's own.

Kept apart from ``test_realtime_instances.py``, whose two instances serve all its tests and
run until its last: one of them could hold the relay's lock that a test here means to kill
on an instance of its own."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import asyncpg

from tests.realtime.sse_support import insert_big_events
from tests.support import ServerProcess, start_servers, stop_servers
from tests.system.realtime_support import (
    committed_offsets,
    insert_events,
    metric,
    open_socket,
    sign_up,
)
from tests.system.transports import Receivers, Transport, each_transport


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


async def slow_closes(http: aiohttp.ClientSession, server: ServerProcess, name: str) -> float:
    text = await (await http.get(f"{server.url}/metrics")).text()
    for line in text.splitlines():
        if line.startswith(name + '{reason="slow"} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@each_transport
async def test_a_reader_that_stops_is_ended_with_1013_and_resumes_on_the_other_instance(
    server_env: dict[str, str], database_url: str, transport: Transport
) -> None:
    env = {**server_env, "JANGTEO_WS_SEND_QUEUE": "4"}
    first, second = start_servers(ServerProcess(env), ServerProcess(env))
    channel = "feed:slow-reader"
    closes = "jangteo_ws_closes_total" if transport == "websocket" else "jangteo_sse_closes_total"
    try:
        async with aiohttp.ClientSession() as http, Receivers(http) as peers:
            user = await sign_up(http, first)
            slow = await peers.open(first, user, transport, {channel: None})
            reader = await peers.open(first, user, transport, {channel: None})
            paused = slow.pause_reading()
            conn = await asyncpg.connect(database_url)
            try:
                sent = 0
                while await slow_closes(http, first, closes) < 1:
                    sent += await insert_big_events(conn, channel, sent)
                    await reader.wait_events(channel, sent)  # the other one keeps up
                    assert sent < 4000, "the reader that stopped was never ended"
            finally:
                await conn.close()
            paused.resume_reading()
            assert await slow.wait_close(timeout=60) == 1013
            expected = await committed_offsets(database_url, channel)
            assert reader.offsets(channel) == expected
            got = slow.offsets(channel)
            assert 0 < len(got) < len(expected)
            assert got == expected[: len(got)]  # a gapless prefix, so it resumes after it

            resumed = await peers.open(second, user, transport, {channel: got[-1]})
            await resumed.wait_events(channel, len(expected) - len(got))
            assert got + resumed.offsets(channel) == expected
    finally:
        stop_servers(first, second)
