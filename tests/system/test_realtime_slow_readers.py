"""A reader that stops reading is ended with 1013 and resumes on the other instance, over
either transport, on two real `jangteo serve` processes with a send queue of four frames.

The two transports' tests share the module's instances (``small_queue_servers``), each on a
channel of its own, counting its own close."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from tests import support
from tests.realtime.sse_support import insert_big_events
from tests.support import ServerProcess, two_server_processes
from tests.system.realtime_support import committed_offsets, own_channel, sign_up
from tests.system.transports import Receivers, Transport, each_transport


@pytest.fixture(autouse=True)
def clean_state(emptied_after_module: None) -> None:
    """The shared instances outlive each test: the state is emptied after the module."""


@pytest.fixture(scope="module")
def small_queue_servers(
    emptied_after_module: None, database_url: str, redis_url: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two instances whose connections queue at most four frames for a client."""
    env = support.server_env(database_url, redis_url, WS_SEND_QUEUE="4")
    with two_server_processes(env) as pair:
        yield pair


async def slow_closes(http: aiohttp.ClientSession, server: ServerProcess, name: str) -> float:
    text = await (await http.get(f"{server.url}/metrics")).text()
    for line in text.splitlines():
        if line.startswith(name + '{reason="slow"} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@each_transport
async def test_a_reader_that_stops_is_ended_with_1013_and_resumes_on_the_other_instance(
    small_queue_servers: tuple[ServerProcess, ServerProcess],
    database_url: str,
    transport: Transport,
) -> None:
    first, second = small_queue_servers
    channel = own_channel("slow-reader")
    closes = "jangteo_ws_closes_total" if transport == "websocket" else "jangteo_sse_closes_total"
    async with aiohttp.ClientSession() as http, Receivers(http) as peers:
        closed_before = await slow_closes(http, first, closes)  # by the instances' earlier tests
        user = await sign_up(http, first)
        slow = await peers.open(first, user, transport, {channel: None})
        reader = await peers.open(first, user, transport, {channel: None})
        paused = slow.pause_reading()
        conn = await asyncpg.connect(database_url)
        try:
            sent = 0
            while await slow_closes(http, first, closes) == closed_before:
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
