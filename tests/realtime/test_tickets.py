"""Signed tickets: issued without Redis, spent once by a SET NX of their nonce, anywhere.

In-process apps on the real PostgreSQL and Redis for what a ticket may not be (forged,
expired, altered, malformed, too long, spent), and two real ``jangteo serve`` processes
for single use across instances.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from realtime.keys import gateway_key
from realtime.tickets import (
    CLOCK_SKEW_S,
    TICKET_CHARS,
    Ticket,
    TicketHolder,
    Tickets,
    derive_ticket_secret,
    spent_key,
)
from server.redis_breaker import BreakerPool
from tests.realtime.test_gateway import (
    BAD_TICKET,
    TICKET,
    TIMEOUT,
    closed_with,
    connect,
    new_ticket,
    ping,
)
from tests.support import Client, ServerProcess, sign_up
from tests.system.realtime_support import User
from tests.system.realtime_support import sign_up as sign_up_on

SSE = "/api/v1/sse"


def tickets_of(client: Client) -> Tickets:
    tickets: Tickets = client.app[gateway_key].tickets
    return tickets


def read(client: Client, ticket: str) -> Ticket:
    found = tickets_of(client).read(ticket)
    assert found is not None, ticket
    return found


def raw(ticket: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4)))


def encoded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def is_spent(client: Client, ticket: str) -> bool:
    redis = client.app[gateway_key].redis
    return bool(await redis.exists(spent_key(read(client, ticket).nonce)))


async def refused(client: Client, ticket: str) -> None:
    """The socket is closed with 1008 and the event stream answered 401."""
    assert await closed_with(await connect(client, ticket)) == BAD_TICKET, ticket
    response = await client.get(SSE, params={"ticket": ticket, "channel": "listing:1"})
    assert response.status == 401, (ticket, await response.text())


# -- what a ticket is ------------------------------------------------------------------------


async def test_a_ticket_is_issued_without_redis_and_spent_once_with_the_rest_of_its_life(
    client: Client,
) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    assert len(ticket) == TICKET_CHARS <= 100
    found = read(client, ticket)
    assert found.holder.user_id == account.user_id
    assert not await is_spent(client, ticket)  # issuing wrote nothing

    await ping(await connect(client, ticket))
    redis = client.app[gateway_key].redis
    left = await redis.ttl(spent_key(found.nonce))
    assert 0 < left <= client.app[gateway_key].settings.ws_ticket_ttl + 1 + CLOCK_SKEW_S, left
    await refused(client, ticket)


async def test_every_ticket_has_a_nonce_of_its_own(client: Client) -> None:
    account = await sign_up(client)
    issued = [await new_ticket(client, account) for _ in range(20)]
    assert len({read(client, ticket).nonce for ticket in issued}) == 20
    for ticket in issued[:3]:
        await ping(await connect(client, ticket))  # one spent does not spend another


async def test_a_ticket_opens_one_socket_even_when_raced_on_redeem(client: Client) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    won = await asyncio.gather(*(tickets_of(client).redeem(ticket) for _ in range(10)))
    assert [holder for holder in won if holder is not None] == [read(client, ticket).holder]


# -- what a ticket may not be --------------------------------------------------------------


async def test_a_forged_signature_opens_nothing(client: Client) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    data = raw(ticket)
    data[-1] ^= 0x01
    await refused(client, encoded(bytes(data)))
    # Signed with another deployment's key: every field right, the key wrong.
    other = Tickets(client.app[gateway_key].redis, derive_ticket_secret("another secret"), 30)
    await refused(client, other.issue(read(client, ticket).holder))
    await ping(await connect(client, ticket))  # the real one was not spent by any of it


async def test_an_altered_user_or_session_opens_nothing(client: Client) -> None:
    account = await sign_up(client)
    other = await sign_up(client)
    ticket = await new_ticket(client, account)
    data = raw(ticket)
    data[1:9] = struct.pack(">Q", other.user_id)  # the signature stays the first user's
    await refused(client, encoded(bytes(data)))
    data = raw(ticket)
    data[9:25] = uuid.uuid4().bytes
    await refused(client, encoded(bytes(data)))
    await ping(await connect(client, ticket))


async def test_an_expired_ticket_opens_nothing_and_spends_nothing(client: Client) -> None:
    account = await sign_up(client)
    holder = read(client, await new_ticket(client, account)).holder
    tickets = tickets_of(client)
    expired = tickets.issue(holder, issued_at=tickets.clock() - tickets.ttl - 2)
    await refused(client, expired)
    assert not await is_spent(client, expired)


async def test_a_ticket_whose_session_ended_opens_nothing(client: Client) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    logout = await client.post("/api/v1/auth/logout", json={"refresh_token": account.refresh_token})
    assert logout.status == 204, await logout.text()
    ws = await connect(client, ticket)
    assert await closed_with(ws) == (4401, "session ended")


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[:-1], id="one character short"),
        pytest.param(lambda t: t + "A", id="one character more"),
        pytest.param(lambda t: "*" + t[1:], id="not base64url"),
        pytest.param(lambda t: t[:40] + "%20" + t[43:], id="a space inside"),
        pytest.param(lambda t: "가" + t[1:], id="not ascii"),
        pytest.param(lambda t: "A" * len(t), id="the right length of nothing"),
        pytest.param(lambda t: "a" * 101, id="too long"),
        pytest.param(lambda t: "a" * 4000, id="far too long"),
    ],
)
async def test_a_malformed_ticket_opens_nothing(client: Client, mangle: object) -> None:
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    assert callable(mangle)
    mangled = mangle(ticket)
    assert await closed_with(await connect(client, mangled)) == BAD_TICKET
    await ping(await connect(client, ticket))  # the real one is untouched


async def test_another_version_is_refused_even_when_signed(client: Client) -> None:
    account = await sign_up(client)
    tickets = tickets_of(client)
    data = raw(await new_ticket(client, account))
    data[0] = 2
    body = bytes(data[:-16])
    await refused(client, encoded(body + tickets._tag(body)))


async def test_a_ticket_is_refused_for_a_redis_it_cannot_reach(client: Client) -> None:
    """Redemption cannot spend the ticket: 503 before the upgrade, and the ticket still
    opens a socket once Redis answers again."""
    account = await sign_up(client)
    ticket = await new_ticket(client, account)
    gateway = client.app[gateway_key]
    reachable = gateway.tickets.redis
    gateway.tickets.redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # refused
    try:
        response = await client.get(f"/api/v1/ws?ticket={ticket}")
        assert response.status == 503, await response.text()
    finally:
        await gateway.tickets.redis.aclose()
        gateway.tickets.redis = reachable
    await ping(await connect(client, ticket))


async def test_no_ticket_is_issued_while_the_redis_breaker_fails_fast(client: Client) -> None:
    """A ticket could not be spent then: 503 with Retry-After, as any Redis failure."""
    account = await sign_up(client)
    pool = client.app[gateway_key].redis.connection_pool
    assert isinstance(pool, BreakerPool) and pool.breaker is not None
    breaker = pool.breaker
    breaker.failed(timed_out=True)  # as after a call that waited out the Redis timeout
    try:
        response = await client.post(TICKET, headers=account.auth)
        assert response.status == 503, await response.text()
        assert response.headers["Retry-After"]
    finally:
        breaker.succeeded()
    await ping(await connect(client, await new_ticket(client, account)))


# -- across instances ------------------------------------------------------------------------


REFUSED = f"{BAD_TICKET[0]} {BAD_TICKET[1]}"


async def test_a_ticket_is_spent_once_across_instances_even_when_raced(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_servers
    async with aiohttp.ClientSession() as http:
        user = await sign_up_on(http, first)
        for issuer, redeemer in ((first, second), (second, first)):
            ticket = await _ticket(http, issuer, user)
            async with http.ws_connect(_ws_url(redeemer, ticket)) as ws:
                await ws.send_str('{"op":"ping"}')
                assert (await ws.receive(timeout=TIMEOUT)).data == '{"op":"pong"}'
                # Again on each instance while the first socket is open, then as a stream.
                assert [await _opened(http, s, ticket) for s in two_servers] == [REFUSED] * 2
                stream = await http.get(
                    f"{issuer.url}{SSE}", params={"ticket": ticket, "channel": "listing:1"}
                )
                assert stream.status == 401

        # Raced on both instances at once: one socket opens, the others are refused.
        ticket = await _ticket(http, first, user)
        outcomes = await asyncio.gather(*(_opened(http, s, ticket) for s in two_servers * 4))
        assert sorted(outcomes) == sorted(["open"] + [REFUSED] * 7), outcomes


async def _opened(http: aiohttp.ClientSession, server: ServerProcess, ticket: str) -> str:
    """ "open" when the ticket opened a socket on ``server`` that answers a ping; else the
    close code and reason it got."""
    async with http.ws_connect(_ws_url(server, ticket)) as ws:
        await ws.send_str('{"op":"ping"}')
        message = await ws.receive(timeout=TIMEOUT)
        return "open" if message.data == '{"op":"pong"}' else f"{message.data} {message.extra}"


async def _ticket(http: aiohttp.ClientSession, server: ServerProcess, user: User) -> str:
    response = await http.post(f"{server.url}{TICKET}", headers=user.auth)
    assert response.status == 201, await response.text()
    ticket: str = (await response.json())["ticket"]
    return ticket


def _ws_url(server: ServerProcess, ticket: str) -> str:
    return f"ws://127.0.0.1:{server.port}/api/v1/ws?ticket={ticket}"


def test_the_ticket_key_is_derived_and_needs_a_secret() -> None:
    assert derive_ticket_secret("a") != derive_ticket_secret("b")
    assert derive_ticket_secret("a") == derive_ticket_secret("a") != b"a"
    with pytest.raises(ValueError, match="JWT secret"):
        derive_ticket_secret("")
    holder = TicketHolder(1, uuid.uuid4())
    assert (
        Tickets(None, derive_ticket_secret("a"), 30).read(  # type: ignore[arg-type]
            Tickets(None, derive_ticket_secret("b"), 30).issue(holder)  # type: ignore[arg-type]
        )
        is None
    )
