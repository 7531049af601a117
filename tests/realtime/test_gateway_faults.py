"""The WebSocket gateway when something fails underneath it: a bug in a handler,
PostgreSQL refusing connections, an instance that cannot hear Redis, a client on a slow
link resuming a long history.

The real app in-process with real PostgreSQL, Redis and relay, and real sockets. Every
wait is on a condition; timeouts only turn a hang into a failure, and no test asserts how
long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType

from db.queries.outbox import SESSIONS_CHANNEL
from loadtests.chaos.proxy import TcpProxy
from realtime import setup as realtime_setup
from realtime.broker_redis import RedisBroker
from realtime.channels import Caller
from realtime.connection import Connection
from realtime.disconnect import CUT_OFF
from realtime.keys import broker_key, gateway_key, relay_key
from realtime.protocol import ClientFrame
from server.chats import service as chat_service
from server.embedded.process import free_port
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.realtime.test_chat_socket import new_room
from tests.realtime.test_chat_socket import subscribed as room_subscribed
from tests.realtime.test_gateway import (
    SESSION_ENDED,
    TIMEOUT,
    JsonObject,
    error,
    eventually,
    log_in,
    open_socket,
    ping,
    published,
    send,
    subscribe,
    subscribed,
)
from tests.support import Client, sign_up

# -- an unexpected error after the upgrade ---------------------------------------------------


class Explode(ClientFrame):
    """A client op whose handler has a bug."""

    op: Literal["explode"]


async def explode(connection: Connection, frame: ClientFrame) -> None:
    raise RuntimeError("a bug in an op handler")


async def explode_on_check(caller: Caller, key: str) -> None:
    raise RuntimeError("a bug in a channel rule")


@pytest.mark.parametrize("where", ["op", "subscribe"])
async def test_an_unexpected_error_after_the_upgrade_closes_that_socket_with_1011(
    client: Client, where: str
) -> None:
    gateway = client.app[gateway_key]
    gateway.add_op("explode", Explode, explode)
    gateway.rules.add("explode", explode_on_check)
    account = await sign_up(client)
    bystander = await open_socket(client, account)
    ws = await open_socket(client, account)

    if where == "op":
        await send(ws, {"op": "explode"})
    else:
        await send(ws, {"op": "subscribe", "channel": "explode:1"})
    # A close frame with its code: not an HTTP response read as a corrupt frame (1002),
    # not a dropped connection (1006).
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is WSMsgType.CLOSE, (message, ws.close_code)
    assert (message.data, message.extra) == (1011, "internal error")

    await ping(bystander)  # the other sockets are served on
    await ping(await open_socket(client, account))  # and new ones too


# -- PostgreSQL failing while a room is subscribed -------------------------------------------


async def test_a_room_subscribe_while_postgres_refuses_connections_answers_unavailable(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = await new_room(client)
    ws = await open_socket(client, room.buyer)
    # The room's members are looked up through a pool whose server refuses connections: the
    # driver's own error, as when PostgreSQL is down or restarting.
    refusing = await asyncpg.create_pool(
        host="127.0.0.1", port=free_port(), user="nobody", database="none", min_size=0
    )
    is_participant = chat_service.is_participant

    async def through_refusing_pool(pool: asyncpg.Pool, room_id: int, user_id: int) -> bool:
        return await is_participant(refusing, room_id, user_id)

    monkeypatch.setattr(chat_service, "is_participant", through_refusing_pool)
    try:
        assert await subscribe(ws, room.channel) == error(
            "unavailable", "try again shortly", room.channel
        )
        await ping(ws)  # the socket stays open and served
    finally:
        monkeypatch.setattr(chat_service, "is_participant", is_participant)
        await refusing.close()
    await room_subscribed(ws, room.channel)  # PostgreSQL back: the same socket subscribes


# -- revocation while the instance cannot hear Redis -----------------------------------------


@pytest.fixture
async def deaf_client(
    make_client: ClientFactory, settings: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Client, TcpProxy]]:
    """The app with its event subscription (only) behind a proxy that can black-hole it:
    it still publishes, issues tickets and reads and writes Redis, but receives nothing."""
    port = urlsplit(redis_url).port
    assert port is not None
    proxy = TcpProxy(port).start()

    class BrokerBehindProxy(RedisBroker):
        def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(proxy.url(url), *args, **kwargs)

    monkeypatch.setattr(realtime_setup, "RedisBroker", BrokerBehindProxy)
    try:
        # A short watchdog: the subscription notices the silence soon.
        yield await make_client(settings.replace(redis_watchdog_interval=0.2)), proxy
    finally:
        proxy.stop()


async def test_a_logout_closes_the_sessions_sockets_while_the_instance_cannot_hear_redis(
    deaf_client: tuple[Client, TcpProxy], db: asyncpg.Connection
) -> None:
    client, proxy = deaf_client
    broker, relay = client.app[broker_key], client.app[relay_key]
    account = await sign_up(client)
    other_session = await log_in(client, account)
    ws = await open_socket(client, account)
    other = await open_socket(client, other_session)

    async def leading() -> bool:
        return relay.is_leader

    await eventually(leading, "this instance leads the relay")
    proxy.blackhole()

    async def deaf() -> bool:
        return not broker.healthy

    await eventually(deaf, "the subscription is down")
    # No relay numbers anything from here on (as when the relay that would is gone too):
    # the revocation below never reaches the event log, so no event can close the socket.
    relay.stopping = True
    for leader in relay.leaders.values():
        leader.stopping = True
        leader.wake.set()

    async def stopped() -> bool:
        return not relay.is_leader

    await eventually(stopped, "the relay stopped")

    response = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": account.refresh_token}
    )
    assert response.status == 204
    try:
        # One bound for the whole wait (the server's pings would restart receive's own).
        async with asyncio.timeout(3 * TIMEOUT):
            message = await ws.receive()
    except TimeoutError:
        pytest.fail("the socket of the logged-out session is still open")
    assert message.type is WSMsgType.CLOSE, (message, ws.close_code)
    assert (message.data, message.extra) == SESSION_ENDED
    await ping(other)  # the other session's socket stays open

    # Closed by asking PostgreSQL, not by the event: that one is still waiting for a relay.
    revocations = await db.fetch("SELECT position FROM outbox WHERE channel = $1", SESSIONS_CHANNEL)
    assert revocations, "the logout wrote its revocation event"
    assert all(row["position"] is None for row in revocations), revocations


async def test_an_instance_that_reaches_neither_redis_nor_postgres_closes_its_sockets(
    deaf_client: tuple[Client, TcpProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its sockets would stay open and silent; closed (1013), they resume elsewhere."""
    client, proxy = deaf_client
    broker, gateway = client.app[broker_key], client.app[gateway_key]
    account = await sign_up(client)
    ws = await open_socket(client, account)
    proxy.blackhole()

    async def deaf() -> bool:
        return not broker.healthy

    await eventually(deaf, "the subscription is down")
    refusing = await asyncpg.create_pool(
        host="127.0.0.1", port=free_port(), user="nobody", database="none", min_size=0
    )
    monkeypatch.setattr(gateway, "pool", refusing)
    try:
        async with asyncio.timeout(3 * TIMEOUT):
            message = await ws.receive()
    except TimeoutError:
        pytest.fail("the socket of an instance that can deliver nothing is still open")
    finally:
        await refusing.close()
    assert message.type is WSMsgType.CLOSE, (message, ws.close_code)
    assert (message.data, message.extra) == (CUT_OFF.code, CUT_OFF.reason)


# -- a long replay to a client on a slow link ------------------------------------------------

REPLAYED = 3000
EVENT_BLOB = 3000  # bytes per event: chat messages run to kilobytes
SEND_QUEUE = 32


async def wait_numbered(db: asyncpg.Connection, channel: str, count: int) -> None:
    async def numbered() -> bool:
        row = await db.fetchrow(
            "SELECT count(*) AS total, count(position) AS numbered FROM outbox WHERE channel = $1",
            channel,
        )
        assert row is not None
        return bool(row["total"] == row["numbered"] == count)

    await eventually(numbered, f"the relay numbered the {count} events of {channel}")


def pause_reading(ws: ClientWebSocketResponse) -> Callable[[], None]:
    """Stop reading the socket (the kernel's buffers, then the server's, fill up);
    returns the function that reads again."""
    connection = ws._response.connection
    assert connection is not None and connection.transport is not None
    transport = connection.transport
    transport.pause_reading()
    return transport.resume_reading


async def test_a_slow_client_resuming_a_long_history_gets_all_of_it_and_is_not_closed(
    make_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    client = await make_client(settings.replace(ws_send_queue=SEND_QUEUE))
    gateway = client.app[gateway_key]
    account = await sign_up(client)
    channel = "feed:long-history"
    await db.execute(
        "INSERT INTO outbox (channel, type, data) SELECT $1, 'test.big',"
        " jsonb_build_object('n', n, 'blob', repeat('x', $3::int))"
        " FROM generate_series(1, $2::int) AS n",
        channel,
        REPLAYED,
        EVENT_BLOB,
    )
    await wait_numbered(db, channel, REPLAYED)
    expected = await published(db, channel)

    ws = await open_socket(client, account)
    (connection,) = gateway.connections
    resume_reading = pause_reading(ws)
    await send(ws, {"op": "subscribe", "channel": channel, "since": 0})

    async def server_backed_up() -> bool:
        # Frames wait in the socket's own queue: the kernel's buffers and the transport's
        # are full. (Or the socket is closing already.)
        return bool(connection.writer.queue) or connection.closing is not None

    await eventually(server_backed_up, "the server has more to send than the client reads")
    await asyncio.sleep(0.5)  # and the client goes on not reading for a moment
    resume_reading()

    answer = await ws.receive(timeout=TIMEOUT)
    assert answer.type is WSMsgType.TEXT, (answer, ws.close_code)
    assert orjson.loads(answer.data) == {
        "op": "subscribed",
        "channel": channel,
        "offset": expected[-1]["offset"],
    }
    received: list[JsonObject] = []
    while len(received) < REPLAYED:
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type is WSMsgType.TEXT, (len(received), message, ws.close_code)
        received.append(orjson.loads(message.data))
        if len(received) % 20 == 0:
            await asyncio.sleep(0.002)  # a slow reader
    assert received == expected  # every event once, in order
    prevs = [0] + [event["offset"] for event in received[:-1]]
    assert [event["prev"] for event in received] == prevs
    await ping(ws)  # still open, and nothing more came
    assert await subscribed(ws, "listing:1") == 0
