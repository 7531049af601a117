"""The WebSocket's security: who may open one, with what, and for how long.

tests/realtime/test_gateway.py covers the protocol (and the same-origin and configured
origin cases, expiry of a ticket, session expiry); this file adds what an attacker would
try: look-alike origins, racing one ticket, a token or a stolen Redis dump instead of a
ticket (it holds only spent nonces), other people's channels, and a socket left open
after its session ended.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientWebSocketResponse, WSServerHandshakeError

from realtime.tickets import CLOCK_SKEW_S
from tests.realtime.test_gateway import (
    BAD_TICKET,
    SESSION_ENDED,
    TICKET,
    closed_with,
    connect,
    handshake_status,
    new_ticket,
    open_socket,
    ping,
    receive,
    subscribe,
)
from tests.security.support import open_market
from tests.support import Client, sign_up

LOOKALIKES = (
    "https://evil.example",
    "http://{host}.evil.example:{port}",
    "http://{host}:{port}@evil.example",
    "http://evil.example/{host}:{port}",
    "null",
    "file://",
)


@pytest.mark.parametrize("origin", LOOKALIKES)
async def test_a_cross_site_origin_is_refused_before_the_upgrade(
    client: Client, origin: str
) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    forged = origin.format(host=client.host, port=client.port)
    assert await handshake_status(client, ticket, forged) == 403


async def test_a_ticket_opens_one_socket_even_when_raced(client: Client) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)

    async def attempt() -> ClientWebSocketResponse:
        ws = await connect(client, ticket)
        await ws.send_str('{"op":"ping"}')
        return ws

    sockets = await asyncio.gather(*(attempt() for _ in range(8)))
    outcomes = []
    for ws in sockets:
        message = await ws.receive(timeout=10)
        outcomes.append("open" if message.data == '{"op":"pong"}' else message.data)
    assert outcomes.count("open") == 1, outcomes
    assert outcomes.count(BAD_TICKET[0]) == 7, outcomes
    for ws in sockets:
        await ws.close()


async def test_tickets_are_signed_and_redis_holds_only_spent_nonces(
    client: Client, redis_url: str
) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await redis.keys("ws-ticket:*") == []  # issuing one stores nothing
        await ping(await connect(client, ticket))
        keys = [str(key) for key in await redis.keys("ws-ticket:*")]
        assert len(keys) == 1 and ticket not in keys[0]
        assert 0 < await redis.ttl(keys[0]) <= 30 + 1 + CLOCK_SKEW_S
        # What a dump of Redis holds does not open a socket.
        stolen = keys[0].removeprefix("ws-ticket:")
        assert await closed_with(await connect(client, stolen)) == BAD_TICKET
    finally:
        await redis.aclose()
    assert await closed_with(await connect(client, ticket)) == BAD_TICKET  # spent


async def test_a_token_is_no_ticket(client: Client) -> None:
    account = await sign_up(client)
    for query in (f"?ticket={account.access_token}", f"?ticket={account.refresh_token}", ""):
        ws = await client.ws_connect("/api/v1/ws" + query, headers=account.auth)
        assert await closed_with(ws) == BAD_TICKET, query


async def test_a_socket_reaches_only_its_users_channels(
    client: Client, db: asyncpg.Connection
) -> None:
    market = await open_market(client, db)
    ws = await open_socket(client, market.stranger)
    for channel in (f"user:{market.buyer.user_id}", f"room:{market.room_id}"):
        answer = await subscribe(ws, channel)
        assert (answer["op"], answer["code"]) == ("error", "forbidden"), answer
    await ws.send_json(
        {
            "op": "send",
            "room": market.room_id,
            "body": "hi",
            "client_id": "3f2b0f7e-9c1a-4a51-8f00-5d2a1b7c9e10",
        }
    )
    answer = await receive(ws)
    assert (answer["op"], answer["code"]) == ("error", "not_found"), answer
    mine = await subscribe(ws, f"user:{market.stranger.user_id}")
    assert mine["op"] == "subscribed"


async def test_no_socket_outlives_its_session(client: Client) -> None:
    """Logout closes the session's sockets (4401), a ticket from before it opens none, and
    the logged-out token gets no new ticket."""
    account = await sign_up(client)
    ws = await open_socket(client, account)
    spare = await new_ticket(client, account)
    logout = await client.post("/api/v1/auth/logout", json={"refresh_token": account.refresh_token})
    assert logout.status == 204
    assert await closed_with(ws) == SESSION_ENDED
    assert await closed_with(await connect(client, spare)) == SESSION_ENDED
    assert (await client.post(TICKET, headers=account.auth)).status == 401


async def test_a_refused_handshake_says_nothing_about_the_ticket(client: Client) -> None:
    """A forged Origin is refused before the ticket is looked at: 403 for good and bad
    tickets alike, so a cross-site page cannot probe which tickets exist."""
    account = await sign_up(client)
    good = await new_ticket(client, account)
    for ticket in (good, "no-such-ticket"):
        with pytest.raises(WSServerHandshakeError) as refused:
            await connect(client, ticket, headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
    await ping(await connect(client, good))
