"""Market traffic that keeps flowing through a fault, and the "nothing lost" audit after it.

Three writers run until told to stop: a seller editing a price, a buyer purchasing with
an Idempotency-Key (a failed purchase is retried with the same key until it answers, so
no attempt is left half-known), and a chatter sending messages over a socket (a message
not acknowledged is sent again with the same client_id). Every answer is recorded with
how long it took. Watchers on the other instance subscribe to every channel written.

The audit then checks that every acknowledged write is in PostgreSQL exactly once, that
every committed event of the watched channels reached the watchers once, in order, and
that money and stock add up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson

from tests.faults.support import Timed, eventually, timed
from tests.orders_support import check_money, check_order_events, fund
from tests.support import ServerProcess
from tests.system.realtime_support import (
    Socket,
    User,
    committed_offsets,
    create_listing,
    open_socket,
    sign_up,
)

PRICE = 10
STOCK = 10_000
PAUSE_S = 0.05  # between writes of one writer; after a refusal, before trying again
# Well under the socket's frame rate (20/s): frames beyond it are refused, and refusals
# count towards the 1008 close for abuse.
CHAT_PAUSE_S = 0.1
ACK_TIMEOUT_S = 30.0
FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


@dataclass
class Market:
    """Who writes where, what was acknowledged, and every answer on the way."""

    servers: tuple[ServerProcess, ServerProcess]
    seller: User
    buyer: User
    edited: int  # the listing whose price the seller edits
    sold: int  # the listing the buyer buys from
    room: int
    sender: Socket  # the buyer's socket that sends chat messages
    watchers: list[tuple[Socket, str, int]] = field(default_factory=list)  # socket, channel, start
    prices: list[int] = field(default_factory=list)  # acknowledged edits, in order
    attempted: list[int] = field(default_factory=list)  # every edit sent
    orders: dict[str, int] = field(default_factory=dict)  # Idempotency-Key -> order id
    messages: dict[str, int] = field(default_factory=dict)  # client_id -> message id
    answers: list[Timed] = field(default_factory=list)
    chat_refusals: int = 0
    chat_disconnects: int = 0

    def logs(self) -> str:
        """The end of both instances' logs, for failure messages."""
        return "\n".join(server.output()[-3000:] for server in self.servers)

    def url(self, n: int, path: str) -> str:
        return self.servers[n % 2].url + "/api/v1" + path

    def channels(self) -> list[str]:
        return [
            f"listing:{self.edited}", f"listing:{self.sold}", f"room:{self.room}",
            f"user:{self.buyer.user_id}", f"user:{self.seller.user_id}",
        ]  # fmt: skip


async def open_market(
    http: aiohttp.ClientSession,
    servers: tuple[ServerProcess, ServerProcess],
    db: asyncpg.Connection,
) -> Market:
    """Accounts, listings, a room, the sender socket on the first instance and watchers on
    the second (and, when asked, the first)."""
    first, second = servers
    seller = await sign_up(http, first)
    buyer = await sign_up(http, second)
    await fund(db, buyer.user_id, PRICE * STOCK)
    edited = await create_listing(http, first, seller)
    async with http.post(
        f"{first.url}/api/v1/listings",
        json={"title": "chair", "price": PRICE, "quantity": STOCK, "category": "sports"},
        headers=seller.auth,
    ) as response:
        assert response.status == 201, await response.text()
        sold = (await response.json())["id"]
    async with http.post(
        f"{second.url}/api/v1/listings/{edited}/chats", headers=buyer.auth
    ) as response:
        assert response.status == 201, await response.text()
        room = (await response.json())["id"]
    sender = await open_socket(http, first, buyer)
    market = Market(servers, seller, buyer, edited, sold, room, sender)
    return market


def _progress(market: Market) -> tuple[int, int, int]:
    return len(market.prices), len(market.orders), len(market.messages)


async def more_writes(market: Market) -> None:
    """Until each writer had a few more writes acknowledged than now."""
    before = _progress(market)

    async def advanced() -> bool:
        return all(now >= then + 3 for now, then in zip(_progress(market), before, strict=True))

    try:
        await eventually(advanced, f"more writes acknowledged than {before}")
    except AssertionError as error:
        raise AssertionError(f"{error}: {market.answers[-3:]}\n{market.logs()}") from None


async def watch(http: aiohttp.ClientSession, market: Market, server: ServerProcess) -> None:
    """A watcher socket on ``server`` for every channel the traffic writes to."""
    for channel in market.channels():
        user = market.seller if channel == f"user:{market.seller.user_id}" else market.buyer
        socket = await open_socket(http, server, user)
        start = await socket.subscribe(channel)
        market.watchers.append((socket, channel, start))


async def _edit(http: aiohttp.ClientSession, market: Market, stop: asyncio.Event) -> None:
    for n in itertools.count(1):
        if stop.is_set():
            return
        price = 1000 + n
        market.attempted.append(price)
        with contextlib.suppress(*FAILURES):
            answer = await timed(
                http, "edit", "PATCH", market.url(n, f"/listings/{market.edited}"),
                json={"price": price}, headers={**market.seller.auth, "If-Match": "*"},
            )  # fmt: skip
            market.answers.append(answer)
            if answer.status == 200:
                market.prices.append(price)
        await asyncio.sleep(PAUSE_S)


async def _buy(http: aiohttp.ClientSession, market: Market, stop: asyncio.Event) -> None:
    purchase = f"/listings/{market.sold}/purchase"
    for n in itertools.count(1):
        if stop.is_set():
            return
        key = uuid.uuid4().hex
        # One key until it answers 201: a 503 may or may not have bought, and only the
        # same key can tell without buying twice.
        for attempt in itertools.count(n):
            try:
                answer = await timed(
                    http, "purchase", "POST", market.url(attempt, purchase),
                    json={"quantity": 1}, headers={**market.buyer.auth, "Idempotency-Key": key},
                )  # fmt: skip
            except FAILURES:
                await asyncio.sleep(PAUSE_S)
                continue
            market.answers.append(answer)  # the test checks every status afterwards
            if answer.status == 201:
                market.orders[key] = orjson.loads(answer.body)["id"]
                break
            await asyncio.sleep(PAUSE_S)
        await asyncio.sleep(PAUSE_S)


async def _chat(http: aiohttp.ClientSession, market: Market, stop: asyncio.Event) -> None:
    for n in itertools.count(1):
        if stop.is_set():
            return
        client_id = str(uuid.uuid4())
        while True:  # the same client_id until acknowledged
            try:
                await market.sender.send(
                    op="send", room=market.room, body=f"m{n}", client_id=client_id
                )
                frame = await _reply(market.sender, client_id)
            except FAILURES:
                market.chat_disconnects += 1
                market.sender = await _reopen(http, market)
                continue
            if frame["op"] == "ack":
                market.messages[client_id] = frame["message"]["id"]
                break
            market.chat_refusals += 1
            await asyncio.sleep(CHAT_PAUSE_S)
        await asyncio.sleep(CHAT_PAUSE_S)


async def _reopen(http: aiohttp.ClientSession, market: Market) -> Socket:
    """A new sender socket, once the instance gives tickets again."""
    while True:
        try:
            return await open_socket(http, market.servers[0], market.buyer)
        except (AssertionError, *FAILURES):
            await asyncio.sleep(CHAT_PAUSE_S)


async def _reply(socket: Socket, client_id: str) -> dict[str, Any]:
    async with asyncio.timeout(ACK_TIMEOUT_S):
        while True:
            frame = await socket.next_frame(ACK_TIMEOUT_S)
            if frame.get("client_id") == client_id:
                return frame


class Traffic:
    """The three writers as tasks: start, then stop and wait for the last answers."""

    def __init__(self, http: aiohttp.ClientSession, market: Market, *, chat: bool = True) -> None:
        self.stop_event = asyncio.Event()
        self.tasks = [
            asyncio.create_task(_edit(http, market, self.stop_event)),
            asyncio.create_task(_buy(http, market, self.stop_event)),
        ]
        if chat:
            self.tasks.append(asyncio.create_task(_chat(http, market, self.stop_event)))
        self.started = time.monotonic()

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.gather(*self.tasks)


async def audit(market: Market, db: asyncpg.Connection, database_url: str) -> None:
    """Nothing lost: acknowledged writes stored once, committed events delivered once."""
    assert market.prices and market.orders, (len(market.prices), len(market.orders))
    changes = await db.fetch(
        "SELECT data->>'price' AS price FROM outbox WHERE channel = $1"
        " AND type = 'listing.price_changed' ORDER BY id",
        f"listing:{market.edited}",
    )
    stored = [int(row["price"]) for row in changes]
    # Every acknowledged edit is stored, once, in order. An edit whose connection broke
    # during its COMMIT may have been stored without an answer: only sent ones, once.
    assert set(market.prices) <= set(stored), sorted(set(market.prices) - set(stored))
    assert stored == sorted(set(stored)) and set(stored) <= set(market.attempted)
    price = await db.fetchval("SELECT price FROM listings WHERE id = $1", market.edited)
    assert price == stored[-1]

    rows = await db.fetch(
        "SELECT o.id FROM orders o WHERE o.buyer_id = $1 ORDER BY o.id", market.buyer.user_id
    )
    assert sorted(row["id"] for row in rows) == sorted(market.orders.values())  # one per key
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == len(market.orders)
    quantity = await db.fetchval("SELECT quantity FROM listings WHERE id = $1", market.sold)
    assert quantity == STOCK - len(market.orders)
    await check_money(db)
    await check_order_events(db)

    messages = await db.fetch(
        "SELECT client_id::text AS client_id, id FROM chat_messages WHERE room_id = $1",
        market.room,
    )
    assert {row["client_id"]: row["id"] for row in messages} == market.messages  # once each

    await wait_relayed(db)
    for socket, channel, start in market.watchers:
        expected = await committed_offsets(database_url, channel, start)
        await socket.wait_events(channel, len(expected), timeout=60)
        expected = await committed_offsets(database_url, channel, start)
        assert socket.offsets(channel) == expected, channel


async def wait_relayed(db: asyncpg.Connection, timeout: float = 60.0) -> None:
    """Until the relay has published every committed outbox row."""

    async def relayed() -> bool:
        return not await db.fetchval("SELECT count(*) FROM outbox WHERE position IS NULL")

    await eventually(relayed, "every outbox row published", timeout)
