"""Redis black-holed (it accepts connections and never answers) under REST and realtime load.

The circuit breaker keeps every request from waiting out the Redis timeout once Redis
has stopped answering: requests degrade as documented (cache bypassed, rate limits and
the revocation check fail open, tickets 503) and none waits more than twice the Redis
timeout, although a write alone makes three Redis calls. Acknowledged writes are in
PostgreSQL once each, and their events reach a subscriber once Redis is back.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import aiohttp
import asyncpg
import orjson
import pytest

from loadtests.chaos.proxy import TcpProxy
from server.embedded.redis import EmbeddedRedis
from tests.faults.support import (
    GENEROUS_LIMIT,
    Timed,
    eventually,
    metric,
    ready_status,
    timed,
    wait_ready,
)
from tests.orders_support import fund
from tests.support import PASSWORD, ServerProcess, server_env
from tests.system.realtime_support import (
    User,
    committed_offsets,
    create_listing,
    open_socket,
    sign_up,
)

REDIS_TIMEOUT_S = 1.0
WORKERS = 6
OUTAGE_S = 4 * REDIS_TIMEOUT_S  # several breaker cooldowns, so probes happen meanwhile


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    database_url: str,
    own_redis: EmbeddedRedis,
    redis_proxy: TcpProxy,
) -> Iterator[ServerProcess]:
    """One instance whose Redis is behind the proxy; its purchase strategy may be a param."""
    env = server_env(
        database_url,
        redis_proxy.url(own_redis.url),
        REDIS_TIMEOUT=str(REDIS_TIMEOUT_S),
        REDIS_BREAKER_COOLDOWN="0.5",
        # On, so that their Redis calls are part of every write and login.
        RATE_LIMITS="on",
        RATE_LIMIT_WRITES=GENEROUS_LIMIT,
        RATE_LIMIT_AUTH_IP=GENEROUS_LIMIT,
        RATE_LIMIT_AUTH_EMAIL=GENEROUS_LIMIT,
        PURCHASE_STRATEGY=getattr(request, "param", "atomic"),
    )
    process = ServerProcess(env).start()
    yield process
    process.stop()


async def _work(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    user: User,
    listing_id: int,
    stop: asyncio.Event,
    acked_prices: list[int],
) -> list[Timed]:
    """Reads, edits and logins until told to stop; records every answer."""
    done: list[Timed] = []
    base = f"{server.url}/api/v1"
    for n in itertools.count(1):
        if stop.is_set():
            return done
        done.append(await timed(http, "me", "GET", f"{base}/me", headers=user.auth))
        done.append(await timed(http, "listing", "GET", f"{base}/listings/{listing_id}"))
        price = 1000 + n
        edit = await timed(
            http, "edit", "PATCH", f"{base}/listings/{listing_id}",
            json={"price": price}, headers={**user.auth, "If-Match": "*"},
        )  # fmt: skip
        done.append(edit)
        if edit.status == 200:
            acked_prices.append(price)
        if n % 5 == 1:  # argon2 is heavy on two cores: now and then
            login = {"email": user.email, "password": PASSWORD}
            done.append(await timed(http, "login", "POST", f"{base}/auth/login", json=login))
        await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


async def test_a_silent_redis_costs_no_request_more_than_twice_its_timeout(
    server: ServerProcess, redis_proxy: TcpProxy, db: asyncpg.Connection, database_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        await wait_ready(http, server)
        users = [await sign_up(http, server) for _ in range(WORKERS)]
        listings = [await create_listing(http, server, user) for user in users]
        watcher = await open_socket(http, server, users[0])
        channel = f"listing:{listings[0]}"
        start = await watcher.subscribe(channel)

        redis_proxy.blackhole()
        stop = asyncio.Event()
        acked: list[list[int]] = [[] for _ in users]
        workers = [
            asyncio.create_task(_work(http, server, user, listing, stop, prices))
            for user, listing, prices in zip(users, listings, acked, strict=True)
        ]
        await wait_ready(http, server, 503)

        async def breaker_reported() -> bool:  # /readyz names the open breaker
            async with http.get(f"{server.url}/readyz") as response:
                body = orjson.loads(await response.read())
            return bool(body.get("checks", {}).get("redis") == "error: RedisUnavailable")

        await eventually(breaker_reported, "/readyz reports the open breaker")
        ticket = await timed(
            http, "ticket", "POST", f"{server.url}/api/v1/ws/ticket", headers=users[0].auth
        )
        await asyncio.sleep(OUTAGE_S)  # the outage lasts this long while the workers run
        stop.set()
        answers = [answer for done in await asyncio.gather(*workers) for answer in done]
        opened = await metric(http, server, "jangteo_redis_breaker_opened_total")
        rejected = await metric(http, server, "jangteo_redis_breaker_rejected_total")
        bypassed = await metric(
            http, server, 'jangteo_cache_lookups_total{kind="detail",outcome="bypass"}'
        )
        redis_proxy.restore()
        await wait_ready(http, server)

        # Degraded, not down: reads bypass the cache, rate limits and the revocation
        # check fail open; only the ticket, which lives in Redis, is refused.
        assert {(a.what, a.status) for a in answers} == {
            ("me", 200), ("listing", 200), ("edit", 200), ("login", 200),
        }, [a for a in answers if a.status != 200][:3]  # fmt: skip
        assert (ticket.status, ticket.retry_after) == (503, "2"), ticket
        # Logins are left out: hashing a password on two busy cores may itself take seconds.
        slowest = max([a for a in answers if a.what != "login"] + [ticket], key=lambda a: a.seconds)
        assert slowest.seconds < 2 * REDIS_TIMEOUT_S, slowest
        assert opened >= 1 and rejected > 0, (opened, rejected)
        assert bypassed > 0  # listing reads went to PostgreSQL, not to a stale copy

        # Every acknowledged edit is in PostgreSQL once, with its event.
        for listing_id, prices in zip(listings, acked, strict=True):
            assert prices, "no edit was acknowledged during the outage"
            assert (
                await db.fetchval("SELECT price FROM listings WHERE id = $1", listing_id)
                == (prices[-1])
            )
            changes = await db.fetch(
                "SELECT data FROM outbox WHERE channel = $1 AND type = 'listing.price_changed'"
                " ORDER BY id",
                f"listing:{listing_id}",
            )
            assert [orjson.loads(row["data"])["price"] for row in changes] == prices
        # ...and reached the subscriber once Redis was back, in order, once each.
        await watcher.wait_events(channel, len(acked[0]), timeout=60)
        assert watcher.offsets(channel) == await committed_offsets(database_url, channel, start)
        assert [e["data"]["price"] for e in watcher.events[channel]] == acked[0]
        assert await ready_status(http, server) == 200


@pytest.mark.parametrize("server", ["redis_lock", "queue"], indirect=True)
async def test_purchases_that_need_redis_fail_fast_and_closed_while_redis_is_silent(
    server: ServerProcess, redis_proxy: TcpProxy, db: asyncpg.Connection
) -> None:
    async with aiohttp.ClientSession() as http:
        await wait_ready(http, server)
        seller = await sign_up(http, server)
        buyer = await sign_up(http, server)
        await fund(db, buyer.user_id, 10_000)
        listing_id = await create_listing(http, server, seller)
        url = f"{server.url}/api/v1/listings/{listing_id}/purchase"
        headers = {**buyer.auth, "Idempotency-Key": "bought-once"}

        redis_proxy.blackhole()
        refused = [
            await timed(http, "purchase", "POST", url, json={"quantity": 1}, headers=headers)
            for _ in range(5)
        ]
        for answer in refused:  # closed: no purchase without its lock or log, no long wait
            assert (answer.status, answer.retry_after) == (503, "2"), answer
            assert answer.seconds < 2 * REDIS_TIMEOUT_S, answer
        assert await db.fetchval("SELECT count(*) FROM orders") == 0

        redis_proxy.restore()
        await wait_ready(http, server)
        bought = await timed(http, "purchase", "POST", url, json={"quantity": 1}, headers=headers)
        assert bought.status == 201, bought
        assert await db.fetchval("SELECT count(*) FROM orders") == 1
