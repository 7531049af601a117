"""Realtime across two real `jangteo serve` processes on one PostgreSQL and one Redis.

What a client must see holds for both transports: the scenarios marked with ``transport``
run over a socket and over an event stream."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import aiohttp
import asyncpg
import pytest

from tests.realtime.sse_support import insert_big_events
from tests.support import PASSWORD, ServerProcess, start_servers, stop_servers
from tests.system.realtime_support import (
    User,
    committed_offsets,
    create_listing,
    insert_events,
    metric,
    open_socket,
    set_price,
    sign_up,
)
from tests.system.transports import TRANSPORTS, Receivers, Transport

each_transport = pytest.mark.parametrize("transport", TRANSPORTS)


@each_transport
async def test_an_edit_through_one_instance_reaches_a_subscriber_on_the_other(
    two_servers: tuple[ServerProcess, ServerProcess], transport: Transport
) -> None:
    first, second = two_servers
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
    two_servers: tuple[ServerProcess, ServerProcess], database_url: str, transport: Transport
) -> None:
    first, second = two_servers
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
        kept = await peers.open(first, other_session, transport, {"feed:logout-test": None})

        logout = await http.post(
            f"{second.url}/api/v1/auth/logout", json={"refresh_token": user.refresh_token}
        )
        assert logout.status == 204
        assert await doomed.wait_close() == 4401
        await insert_events(database_url, "feed:logout-test", 1)
        await kept.wait_events("feed:logout-test", 1)  # the other session's socket lives on


@each_transport
async def test_resume_on_the_other_instance_gets_exactly_the_missed_events(
    two_servers: tuple[ServerProcess, ServerProcess], database_url: str, transport: Transport
) -> None:
    first, second = two_servers
    channel = "feed:resume-test"
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
    two_servers: tuple[ServerProcess, ServerProcess], database_url: str
) -> None:
    first, _ = two_servers
    channel = "feed:late-commit"
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
    two_servers: tuple[ServerProcess, ServerProcess], database_url: str
) -> None:
    first, _ = two_servers
    channel = "feed:idle-xid"
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


async def test_clients_that_drop_and_resume_at_random_miss_nothing_and_see_nothing_twice(
    two_servers: tuple[ServerProcess, ServerProcess], database_url: str
) -> None:
    servers = two_servers
    channels = [f"feed:random-{n}" for n in range(3)]
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
    two_servers: tuple[ServerProcess, ServerProcess], database_url: str, transport: Transport
) -> None:
    first, second = two_servers
    pruned, kept = "feed:resync-pruned", "feed:resync-kept"
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
