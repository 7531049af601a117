"""Realtime across two real `jangteo serve` processes on one PostgreSQL and one Redis.

What a client must see holds for both transports: the scenarios marked with ``transport``
run over a socket and over an event stream. The tests share the module's two instances
(``shared_servers``): each uses accounts, listings and channels of its own. The relay's
leader killed is in ``test_relay_failover.py``, a reader ended for falling behind (a
smaller send queue) in ``test_realtime_slow_readers.py``."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import asyncpg
import pytest

from tests.support import PASSWORD, ServerProcess
from tests.system.realtime_support import (
    User,
    committed_offsets,
    create_listing,
    insert_events,
    open_socket,
    own_channel,
    set_price,
    sign_up,
)
from tests.system.transports import Receivers, Transport, each_transport


@pytest.fixture(autouse=True)
def clean_state(emptied_after_module: None) -> None:
    """The shared instances outlive each test: the state is emptied after the module."""


@each_transport
async def test_an_edit_through_one_instance_reaches_a_subscriber_on_the_other(
    shared_servers: tuple[ServerProcess, ServerProcess], transport: Transport
) -> None:
    first, second = shared_servers
    async with aiohttp.ClientSession() as http, Receivers(http) as peers:
        seller = await sign_up(http, first)
        buyer = await sign_up(http, second)
        listing_id = await create_listing(http, first, seller)
        channel = f"listing:{listing_id}"
        watcher = await peers.open(second, buyer, transport, {channel: None})
        seller_socket = await peers.open(
            second, seller, transport, {f"user:{seller.user_id}": None}
        )
        start = watcher.answers[channel]["offset"]

        await set_price(http, first, seller, listing_id, 900)
        await watcher.wait_events(f"listing:{listing_id}", 1)
        event = watcher.events[f"listing:{listing_id}"][0]
        assert event["type"] == "listing.price_changed"
        assert event["data"]["price"] == 900
        assert event["offset"] > start
        assert isinstance(event["ts"], int)

        liked = await http.put(f"{first.url}/api/v1/listings/{listing_id}/like", headers=buyer.auth)
        assert liked.status == 204
        await seller_socket.wait_events(f"user:{seller.user_id}", 1)
        like = seller_socket.events[f"user:{seller.user_id}"][0]
        assert like["type"] == "listing.liked"
        assert like["data"]["listing_id"] == listing_id


@each_transport
async def test_logout_on_one_instance_closes_that_sessions_sockets_on_the_other(
    shared_servers: tuple[ServerProcess, ServerProcess], database_url: str, transport: Transport
) -> None:
    first, second = shared_servers
    async with aiohttp.ClientSession() as http, Receivers(http) as peers:
        user = await sign_up(http, first)
        login = await http.post(
            f"{first.url}/api/v1/auth/login", json={"email": user.email, "password": PASSWORD}
        )
        assert login.status == 200
        other_session = User(user.user_id, user.email, **{
            key: (await login.json())[key] for key in ("access_token", "refresh_token")
        })  # fmt: skip
        own = {f"user:{user.user_id}": None}
        doomed = await peers.open(first, user, transport, own)
        channel = own_channel("logout")
        kept = await peers.open(first, other_session, transport, {channel: None})

        logout = await http.post(
            f"{second.url}/api/v1/auth/logout", json={"refresh_token": user.refresh_token}
        )
        assert logout.status == 204
        assert await doomed.wait_close() == 4401
        await insert_events(database_url, channel, 1)
        await kept.wait_events(channel, 1)  # the other session's socket lives on


@each_transport
async def test_resume_on_the_other_instance_gets_exactly_the_missed_events(
    shared_servers: tuple[ServerProcess, ServerProcess], database_url: str, transport: Transport
) -> None:
    first, second = shared_servers
    channel = own_channel("resume")
    async with aiohttp.ClientSession() as http, Receivers(http) as peers:
        user = await sign_up(http, first)
        socket = await peers.open(first, user, transport, {channel: None})
        await insert_events(database_url, channel, 5)
        await socket.wait_events(channel, 5)
        last = socket.offsets(channel)[-1]
        await socket.close()

        await insert_events(database_url, channel, 7, start=5)
        resumed = await peers.open(second, user, transport, {channel: last})
        assert resumed.answers[channel]["op"] == "subscribed"
        await resumed.wait_events(channel, 7)
        await insert_events(database_url, channel, 2, start=12)
        await resumed.wait_events(channel, 9)
        assert resumed.offsets(channel) == await committed_offsets(database_url, channel, last)
        assert [e["data"]["n"] for e in resumed.events[channel]] == list(range(5, 14))


async def test_a_row_that_commits_late_is_delivered_and_a_resume_past_it_keeps_it(
    shared_servers: tuple[ServerProcess, ServerProcess], database_url: str
) -> None:
    first, _ = shared_servers
    channel = own_channel("late-commit")
    async with aiohttp.ClientSession() as http:
        user = await sign_up(http, first)
        socket = await open_socket(http, first, user)
        await socket.subscribe(channel)
        late = await asyncpg.connect(database_url)
        try:
            late_tx = late.transaction()
            await late_tx.start()
            # Takes its outbox id first...
            await late.execute(
                "INSERT INTO outbox (channel, type, data) VALUES ($1, 'test.late', '{}')", channel
            )
            # ...while a later row commits and is delivered.
            await insert_events(database_url, channel, 1)
            await socket.wait_events(channel, 1)
            delivered_first = socket.offsets(channel)[0]
            await late_tx.commit()
        finally:
            await late.close()
        await socket.wait_events(channel, 2)
        late_event = socket.events[channel][1]
        assert late_event["type"] == "test.late"
        assert late_event["offset"] > delivered_first
        assert late_event["prev"] == delivered_first

        await socket.ws.close()
        resumed = await open_socket(http, first, user)
        await resumed.subscribe(channel, since=delivered_first)
        await resumed.wait_events(channel, 1)
        assert resumed.events[channel][0]["type"] == "test.late"


async def test_an_idle_transaction_holding_an_xid_does_not_hold_events_back(
    shared_servers: tuple[ServerProcess, ServerProcess], database_url: str
) -> None:
    first, _ = shared_servers
    channel = own_channel("idle-xid")
    async with aiohttp.ClientSession() as http:
        user = await sign_up(http, first)
        socket = await open_socket(http, first, user)
        await socket.subscribe(channel)
        idle = await asyncpg.connect(database_url)
        try:
            async with idle.transaction():
                await idle.fetchval("SELECT pg_current_xact_id()")  # an xid, held open
                await idle.execute("CREATE TEMP TABLE scratch (n int)")
                await insert_events(database_url, channel, 3)
                # Delivered while the transaction is still open.
                await socket.wait_events(channel, 3, timeout=20)
        finally:
            await idle.close()


async def test_clients_that_drop_and_resume_at_random_miss_nothing_and_see_nothing_twice(
    shared_servers: tuple[ServerProcess, ServerProcess], database_url: str
) -> None:
    servers = shared_servers
    channels = [own_channel(f"random-{n}") for n in range(3)]
    rng = random.Random(7)
    async with aiohttp.ClientSession() as http:
        user = await sign_up(http, servers[0])
        writing = True

        async def write() -> None:
            conn = await asyncpg.connect(database_url)
            try:
                for n in range(240):
                    await conn.execute(
                        "INSERT INTO outbox (channel, type, data) VALUES ($1, 'test.tick', $2)",
                        rng.choice(channels),
                        f'{{"n": {n}}}',
                    )
                    if n % 20 == 0:
                        await asyncio.sleep(0.01)
            finally:
                await conn.close()

        async def client(seed: int) -> dict[str, tuple[int, list[int]]]:
            """Returns, per channel, its first subscribe offset and every offset received."""
            local = random.Random(seed)
            starts: dict[str, int] = {}
            received: dict[str, list[int]] = {channel: [] for channel in channels}
            while writing or local.random() < 0.5:
                socket = await open_socket(http, local.choice(servers), user)
                for channel in channels:
                    if channel in starts:
                        since = received[channel][-1] if received[channel] else starts[channel]
                        await socket.subscribe(channel, since=since)
                    else:
                        starts[channel] = await socket.subscribe(channel)
                for _ in range(local.randint(1, 40)):
                    try:
                        await socket.next_frame(timeout=0.2)
                    except TimeoutError:
                        if not writing:
                            break  # the writes are over: nothing more is coming to wait for
                await socket.ws.close()
                for channel in channels:  # recorded by the socket, replays included
                    received[channel] += socket.offsets(channel)
            # A last connection that stays until everything is in.
            socket = await open_socket(http, local.choice(servers), user)
            for channel in channels:
                since = received[channel][-1] if received[channel] else starts[channel]
                await socket.subscribe(channel, since=since)
            for channel in channels:
                expected = await committed_offsets(database_url, channel, starts[channel])
                missing = len(expected) - len(received[channel])
                await socket.wait_events(channel, missing, timeout=30)
                received[channel] += socket.offsets(channel)
            await socket.ws.close()
            return {channel: (starts[channel], received[channel]) for channel in channels}

        clients = [asyncio.create_task(client(seed)) for seed in range(6)]
        await write()
        writing = False
        results = await asyncio.gather(*clients)
        for result in results:
            for channel, (start, offsets) in result.items():
                assert offsets == await committed_offsets(database_url, channel, start), channel


@each_transport
async def test_a_resume_past_the_retention_window_gets_resync_and_the_rest_carries_on(
    shared_servers: tuple[ServerProcess, ServerProcess], database_url: str, transport: Transport
) -> None:
    first, second = shared_servers
    pruned, kept = own_channel("resync-pruned"), own_channel("resync-kept")
    async with aiohttp.ClientSession() as http, Receivers(http) as peers:
        user = await sign_up(http, first)
        await insert_events(database_url, pruned, 3)
        async with asyncio.timeout(30):  # the relay numbers them; polled in the database
            while len(offsets := await committed_offsets(database_url, pruned)) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        # What the relay's pruning does to events older than the retention window.
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("DELETE FROM outbox WHERE position = $1", offsets[0])
        finally:
            await conn.close()

        receiver = await peers.open(second, user, transport, {pruned: 0, kept: None})
        assert receiver.answers[pruned] == {
            "op": "error",
            "code": "resync",
            "detail": "events after offset 0 are past the retention window",
            "channel": pruned,
        }
        assert receiver.answers[kept] == {"op": "subscribed", "channel": kept, "offset": 0}
        await insert_events(database_url, pruned, 1, start=3)  # first: it would come first
        await insert_events(database_url, kept, 2)
        await receiver.wait_events(kept, 2)
        assert receiver.offsets(kept) == await committed_offsets(database_url, kept)
        assert pruned not in receiver.events
