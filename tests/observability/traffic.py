"""A little traffic across two instances, so that every panel's series exist: reads and
writes, a refused and a paid purchase, a socket receiving events (one resumed with
``since``), a refused ticket, and a gap in a channel's feed that the hub fills."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import redis.asyncio as aioredis

from realtime.broker import encode_message
from realtime.broker_redis import channel_prefix
from realtime.frames import event_json
from tests.orders_support import TOPUP, purchase_url
from tests.support import ServerProcess
from tests.system.realtime_support import (
    Socket,
    User,
    create_listing,
    metric,
    open_socket,
    set_price,
    sign_up,
)

DEPLOYMENT = "jangteo"  # the instances' JANGTEO_DEPLOYMENT (its default)
WAIT_TIMEOUT_S = 30.0


def keyed(user: User) -> dict[str, str]:
    return {**user.auth, "Idempotency-Key": uuid.uuid4().hex}


async def run_traffic(first: ServerProcess, second: ServerProcess, redis_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        seller = await sign_up(http, first)
        buyer = await sign_up(http, second)
        listing = await create_listing(http, first, seller)
        channel = f"listing:{listing}"
        socket = await open_socket(http, second, buyer)
        await socket.subscribe(channel, since=0)  # a resume: the hub's memory or the log
        await set_price(http, first, seller, listing, 900)
        await socket.wait_events(channel, 1)

        for url in (f"/api/v1/listings/{listing}", "/api/v1/listings", "/api/v1/listings/0"):
            await (await http.get(first.url + url, headers=buyer.auth)).read()
        refused = await http.post(
            second.url + purchase_url(listing), json={"quantity": 1}, headers=keyed(buyer)
        )
        assert refused.status >= 400, await refused.text()  # an empty wallet
        topped = await http.post(second.url + TOPUP, json={"amount": 5000}, headers=keyed(buyer))
        assert topped.status == 200, await topped.text()
        paid = await http.post(
            second.url + purchase_url(listing), json={"quantity": 1}, headers=keyed(buyer)
        )
        assert paid.status == 201, await paid.text()
        await socket.wait_events(channel, 2)

        refused_socket = await http.ws_connect(f"ws://127.0.0.1:{second.port}/api/v1/ws?ticket=x")
        await refused_socket.receive(timeout=15)  # closed: bad ticket
        await refused_socket.close()
        await feed_a_gap(socket, channel, redis_url)
        async with asyncio.timeout(WAIT_TIMEOUT_S):
            while True:  # the hub counts the fill as the message arrives
                if await metric(http, second, "jangteo_hub_gap_fills_total") >= 1:
                    break
                await asyncio.sleep(0.05)
        await socket.ws.close()


async def feed_a_gap(socket: Socket, channel: str, redis_url: str) -> None:
    """Publish, as a relay would, an event whose predecessor never came: the hub reads
    the channel back from PostgreSQL (a gap fill)."""
    offset = max(socket.offsets(channel)) + 1000  # past whatever else is on its way
    frame = event_json(channel, offset, offset - 1, int(time.time() * 1000), "test.gap", "{}")
    client = aioredis.Redis.from_url(redis_url)
    try:
        prefix = channel_prefix(DEPLOYMENT, redis_url)
        assert await client.publish(prefix + channel, encode_message(offset, offset - 1, frame))
    finally:
        await client.aclose()
