"""The bare aiohttp reference: the frame it fans out, as it is or stamped with the time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from loadtests.benchmarks.crowd import BARE_EVENT
from loadtests.references.ws import make_app

AiohttpClient = Callable[[web.Application], Awaitable[Any]]


async def test_a_stamped_fanout_sends_the_frame_with_the_time_it_started(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(make_app(BARE_EVENT, heartbeat=None))
    ws = await client.ws_connect("/ws")
    before = time.time() * 1000
    answer = await (await client.post("/fanout?count=2&stamp=1")).json()
    after = time.time() * 1000
    frames = [orjson.loads(await ws.receive_str(timeout=5)) for _ in range(2)]
    assert answer["sockets"] == 1 and answer["frames"] == 2
    original = orjson.loads(BARE_EVENT)
    for frame in frames:
        assert int(before) <= frame["ts"] <= after
        assert {**frame, "ts": original["ts"]} == original  # nothing else changed
    await ws.close()


async def test_an_unstamped_fanout_sends_the_frame_byte_for_byte(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(make_app(BARE_EVENT, heartbeat=None))
    ws = await client.ws_connect("/ws")
    await client.post("/fanout?count=1")
    assert (await ws.receive_str(timeout=5)).encode() == BARE_EVENT
    await ws.close()
