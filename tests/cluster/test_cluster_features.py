"""Everything else jangteo keeps in Redis, on a real Redis Cluster: the listing cache and
its near-cache invalidations, rate limits, WebSocket tickets, presence and typing,
purchase locks, revoked sessions, and a circuit breaker per node.

Each test runs two instances on the cluster: real ``jangteo serve`` processes where the
instances' own processes matter (read-your-writes through the near caches), otherwise
two apps in this process, each with its own cluster client, near cache, gateway and
locks. Every wait is for a condition; timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import cast

import aiohttp
import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from realtime.keys import gateway_key
from rediswire.codec import redis_database
from rediswire.slots import SlotMap, read_slot_map
from server import keys
from server.embedded.redis_cluster import EmbeddedRedisCluster
from server.errors import PROBLEM_CONTENT_TYPE
from server.listings.invalidation import channel_name
from server.orders.locks import fence_key
from server.redis_breaker import RedisUnavailable
from server.settings import RateLimit, Settings
from tests.conftest import ClientFactory
from tests.faults.support import eventually, metric, wait_ready
from tests.orders_support import (
    STRATEGIES,
    TOPUP,
    check_invariants,
    fund,
    keyed,
    listing_body,
    purchase_url,
    quick_account,
    quick_accounts,
)
from tests.realtime.test_chat_socket import new_room
from tests.realtime.test_chat_socket import open_socket as open_test_socket
from tests.realtime.test_gateway import (
    BAD_TICKET,
    SESSION_ENDED,
    closed_with,
    connect,
    log_in,
    new_ticket,
    ping,
    ticket_key,
)
from tests.server.listings_support import cache_counts, served
from tests.support import Client, sign_up, two_server_processes
from tests.system.realtime_support import Socket, create_listing, set_price
from tests.system.realtime_support import sign_up as sign_up_on
from tests.system.test_chat_instances import _next_op as next_op
from tests.system.test_purchase_race import allowed_refusals

WAIT_S = 60.0  # a loaded 2-core machine; only ever reached when something hangs


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
async def cluster_redis(redis_cluster: EmbeddedRedisCluster) -> AsyncIterator[RedisCluster]:
    """A cluster client of the test's own, to look at what the instances stored."""
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def slots(cluster_redis: RedisCluster) -> SlotMap:
    return await read_slot_map(cast(aioredis.Redis, cluster_redis))


@contextlib.asynccontextmanager
async def on_node(node: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client of one node ("host:port"): what that very node holds."""
    host, _, port = node.rpartition(":")
    client = aioredis.Redis(host=host, port=int(port))
    try:
        yield client
    finally:
        await client.aclose()


def one_per_master(slots: SlotMap, name: Callable[[int], str]) -> dict[str, str]:
    """For every master, the first of ``name(0)``, ``name(1)``... its slots hold."""
    found: dict[str, str] = {}
    for n in range(10_000):
        owner = slots.owner(name(n))
        assert owner is not None
        found.setdefault(owner, name(n))
        if len(found) == len(slots.masters):
            return found
    raise AssertionError(f"no key for every master: {found}")


async def app_ready(client: Client) -> None:
    """Its event links to every master and its Redis and PostgreSQL answer."""

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await eventually(ready, "the app is ready", WAIT_S)


async def two_apps(
    make_client: ClientFactory, settings: Settings, other: Settings | None = None
) -> tuple[Client, Client]:
    """Two instances of the app on the cluster (``other``: the second's own settings)."""
    first = await make_client(settings)
    second = await make_client(other or settings)
    for client in (first, second):
        await app_ready(client)
    return first, second


async def metrics_text(client: Client) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """A metric's samples on a metrics page, by their sorted labels."""
    return {
        tuple(sorted(found.labels.items())): found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name
    }


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a metrics page, 0 when absent."""
    return samples(text, name).get(tuple(sorted(labels.items())), 0.0)


async def problem_slug(response: aiohttp.ClientResponse) -> str:
    assert response.content_type == PROBLEM_CONTENT_TYPE, await response.text()
    body = await response.json(content_type=None)
    return str(body["type"]).rsplit("/", 1)[-1]


# -- 1. the listing cache and the near caches --------------------------------------------------


async def test_listing_reads_are_cached_and_each_write_is_read_at_once_on_the_other_instance(
    cluster_env: dict[str, str], redis_cluster: EmbeddedRedisCluster, slots: SlotMap
) -> None:
    invalidations = channel_name(redis_database(redis_cluster.url))
    shard = slots.owner(invalidations)
    assert shard is not None
    with two_server_processes(cluster_env) as servers:
        async with aiohttp.ClientSession() as http:
            for server in servers:
                await wait_ready(http, server)
            seller = await sign_up_on(http, servers[0])
            listing_id = await create_listing(http, servers[0], seller)

            async def price_on(n: int) -> tuple[int, int]:
                """The price by the listing's own page and by the feed, on instance n."""
                server = servers[n % 2]
                detail = await http.get(f"{server.url}/api/v1/listings/{listing_id}")
                feed = await http.get(f"{server.url}/api/v1/listings?region=seoul-mapo")
                return (await detail.json())["price"], (await feed.json())["items"][0]["price"]

            async def counts(n: int) -> Counter[tuple[str, str]]:
                response = await http.get(f"{servers[n].url}/metrics")
                return cache_counts(await response.text())

            # Read again and again, each instance ends up serving its own copy: it is
            # subscribed to the invalidations (SSUBSCRIBE on their shard's master).
            for n in (0, 1):
                before = await counts(n)

                async def from_its_copy(n: int = n) -> bool:
                    assert await price_on(n) == (1000, 1000)
                    return (await counts(n))[("detail", "local")] > 0

                await eventually(from_its_copy, f"instance {n} serves its near copy", WAIT_S)
                after = await counts(n)
                assert served(after, "detail") > served(before, "detail")
                assert served(after, "feed") > served(before, "feed")

            # Both listen on the master of the invalidations' slot: every write waits for
            # their acks there.
            async with on_node(shard) as node:
                answer = await node.execute_command("PUBSUB", "SHARDNUMSUB", invalidations)  # type: ignore[no-untyped-call]
            assert answer[1] >= 2, answer

            # Each write through one instance is what the very next read on the other sees.
            stale = []
            for n, price in enumerate(range(1001, 1021)):
                await set_price(http, servers[n % 2], seller, listing_id, price)
                seen = await price_on(n + 1)
                if seen != (price, price):
                    stale.append((price, seen))
            assert stale == []

            for server in servers:
                for name in ("unconfirmed_invalidations", "failed_invalidations"):
                    assert await metric(http, server, f"jangteo_cache_{name}_total") == 0, (
                        name,
                        server.output()[-3000:],
                    )


# -- 2. rate limits ------------------------------------------------------------------------------


async def test_rate_limits_count_across_instances_for_users_on_every_master(
    make_client: ClientFactory,
    cluster_settings: Settings,
    db: asyncpg.Connection,
    slots: SlotMap,
) -> None:
    limited = cluster_settings.replace(
        rate_limit_writes=RateLimit(3, 60), rate_limit_auth_email=RateLimit(2, 60)
    )
    apps = await two_apps(make_client, limited)
    accounts = await quick_accounts(db, limited, 40)
    by_master: dict[str, list[int]] = {}
    for n, account in enumerate(accounts):
        owner = slots.owner(f"ratelimit:writes:{account.user_id}")
        assert owner is not None
        if len(by_master.setdefault(owner, [])) < 3:
            by_master[owner].append(n)
    assert len(by_master) == 3, by_master
    chosen = [accounts[n] for group in by_master.values() for n in group]

    async def four_top_ups(n: int) -> list[tuple[int, str | None]]:
        """Four writes of one user, alternating instances: (status, Retry-After) each."""
        answers = []
        for attempt in range(4):
            response = await apps[(n + attempt) % 2].post(
                TOPUP, json={"amount": 1}, headers=keyed(chosen[n])
            )
            answers.append((response.status, response.headers.get("Retry-After")))
        return answers

    results = await asyncio.gather(*(four_top_ups(n) for n in range(len(chosen))))
    for answers in results:
        assert [status for status, _ in answers] == [200, 200, 200, 429], answers
        retry_after = answers[-1][1]
        assert retry_after is not None and 1 <= int(retry_after) <= 60

    # Each user's counter is on the master of its slot, with the window's expiry.
    for master, group in by_master.items():
        async with on_node(master) as node:
            for n in group:
                key = f"ratelimit:writes:{accounts[n].user_id}"
                assert await node.get(key) == b"4"
                assert 0 < await node.ttl(key) <= 60
    pages = [await metrics_text(app) for app in apps]
    refused = sum(sample(page, "jangteo_rate_limited_total", limit="writes") for page in pages)
    assert refused == len(chosen)

    # The per-email login limit too (its key and the per-address one: two slots).
    email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    statuses = []
    for attempt in range(3):
        response = await apps[attempt % 2].post(
            "/api/v1/auth/login", json={"email": email, "password": "wrong password"}
        )
        statuses.append(response.status)
    assert statuses == [401, 401, 429]
    assert await problem_slug(response) == "rate-limited"


# -- 3. WebSocket tickets -------------------------------------------------------------------------


async def test_a_ticket_issued_on_one_instance_opens_one_socket_on_the_other_and_expires(
    make_client: ClientFactory,
    cluster_settings: Settings,
    cluster_redis: RedisCluster,
    slots: SlotMap,
) -> None:
    first, second = await two_apps(
        make_client, cluster_settings, cluster_settings.replace(ws_ticket_ttl=1)
    )
    account = await sign_up(first)

    # Nonces are random: issue until every master would hold one once spent.
    tickets: dict[str, str] = {}
    for _ in range(200):
        ticket = await new_ticket(first, account)
        owner = slots.owner(ticket_key(ticket))
        assert owner is not None
        tickets.setdefault(owner, ticket)
        if len(tickets) == len(slots.masters):
            break
    assert len(tickets) == 3, tickets

    for master, ticket in tickets.items():
        assert await cluster_redis.exists(ticket_key(ticket)) == 0  # issued: nothing stored
        ws = await connect(second, ticket)
        await ping(ws)  # redeemed on the other instance
        async with on_node(master) as node:
            assert await node.exists(ticket_key(ticket)) == 1  # spent on its own master
        for again in (second, first):  # single use, wherever it is tried again
            assert await closed_with(await connect(again, ticket)) == BAD_TICKET
        await ws.close()

    # A ticket of the second instance (1 s) runs out and opens nothing on the first.
    short = await new_ticket(second, account)
    read = second.app[gateway_key].tickets.read(short)
    assert read is not None

    async def expired() -> bool:
        return first.app[gateway_key].tickets.clock() >= read.expires_at

    await eventually(expired, "the ticket expired", WAIT_S)
    assert await closed_with(await connect(first, short)) == BAD_TICKET
    assert await cluster_redis.exists(ticket_key(short)) == 0  # refused: nothing spent


# -- 4. presence, typing and chat -----------------------------------------------------------------


async def test_presence_typing_and_messages_between_two_instances(
    make_client: ClientFactory, cluster_settings: Settings
) -> None:
    first, second = await two_apps(make_client, cluster_settings)
    room = await new_room(first)
    channel = room.channel
    seller = Socket(await open_test_socket(first, room.seller))
    await seller.subscribe(channel)
    await next_op(seller, "presence", online=[room.seller.user_id])

    buyer = Socket(await open_test_socket(second, room.buyer))
    await buyer.subscribe(channel)
    both = sorted([room.seller.user_id, room.buyer.user_id])
    await next_op(seller, "presence", online=both, typing=[])
    await next_op(buyer, "presence", online=both, typing=[])

    await buyer.send(op="typing", room=room.id)
    await next_op(seller, "presence", online=both, typing=[room.buyer.user_id])
    await next_op(seller, "presence", online=both, typing=[])  # it runs out by itself

    # Messages from both sides, each acked, reach both sockets once and in order.
    bodies = [f"message {n}" for n in range(8)]
    for n, body in enumerate(bodies):
        sender = (buyer, seller)[n % 2]
        client_id = str(uuid.uuid4())
        await sender.send(op="send", room=room.id, body=body, client_id=client_id)
        ack = await next_op(sender, "ack", client_id=client_id)
        assert ack["message"]["id"] == n + 1
    # One more over REST: the next event after the eight must be it, not a repeat.
    last = await first.post(
        f"/api/v1/chats/{room.id}/messages",
        json={"body": "the last", "client_id": str(uuid.uuid4())},
        headers=room.seller.auth,
    )
    assert last.status == 201, await last.text()
    for socket in (seller, buyer):
        await socket.wait_events(channel, len(bodies) + 1, timeout=WAIT_S)
        events = socket.events[channel]
        assert [event["data"]["id"] for event in events] == list(range(1, len(bodies) + 2))
        assert [event["data"]["body"] for event in events] == [*bodies, "the last"]
        offsets = socket.offsets(channel)
        assert offsets == sorted(set(offsets))

    await buyer.ws.close()
    await next_op(seller, "presence", online=[room.seller.user_id])
    await seller.ws.close()


# -- 5. purchases under every strategy ------------------------------------------------------------

STOCK = 12
PRICE = 1_000
BUYERS = 30
ATTEMPTS = 60


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_buyers_racing_over_two_instances_never_oversell(
    make_client: ClientFactory,
    cluster_settings: Settings,
    db: asyncpg.Connection,
    cluster_redis: RedisCluster,
    strategy: str,
) -> None:
    # Dozens of requests queue for the pooled connections: correctness, not load shedding.
    settings = cluster_settings.replace(purchase_strategy=strategy, pg_acquire_timeout=60.0)
    apps = await two_apps(make_client, settings)
    seller = await quick_account(db, settings)
    buyers = await quick_accounts(db, settings, BUYERS)
    for n, buyer in enumerate(buyers):  # 500 to 3,500: some can buy two, some none
        await fund(db, buyer.user_id, PRICE // 2 + PRICE * (n % 4))
    created = await apps[0].post(
        "/api/v1/listings", json=listing_body(PRICE, STOCK), headers=seller.auth
    )
    assert created.status == 201, await created.text()
    listing_id = (await created.json())["id"]

    async def buy(n: int) -> tuple[int, str]:
        buyer = buyers[n % BUYERS]
        response = await apps[n % 2].post(
            purchase_url(listing_id), json={"quantity": 1 + n // 2 % 2}, headers=keyed(buyer)
        )
        slug = await problem_slug(response) if response.status != 201 else ""
        return response.status, slug

    replies = await asyncio.gather(*(buy(n) for n in range(ATTEMPTS)))
    statuses = Counter(status for status, _ in replies)
    assert set(statuses) <= {201, 409}, replies
    refusals = Counter(slug for status, slug in replies if status == 409)
    assert set(refusals) <= allowed_refusals(strategy), refusals
    assert statuses[201] > 0
    assert refusals["insufficient-stock"] > 0  # demand was well above the stock
    await check_invariants(db, listing_id, STOCK)

    # The strategy asked for is the one that sold.
    pages = [await metrics_text(app) for app in apps]
    paid = [
        sample(page, "jangteo_purchases_total", strategy=strategy, outcome="paid") for page in pages
    ]
    assert sum(paid) == statuses[201]
    if strategy == "redis_lock":
        # Every sale was written under a lease of the listing's lock, with a fencing
        # token the cluster handed out.
        fence = await cluster_redis.get(fence_key(listing_id))
        written = await db.fetchval("SELECT fence FROM listings WHERE id = $1", listing_id)
        assert fence is not None and 1 <= written <= int(fence)


# -- 6. revoked sessions -------------------------------------------------------------------------


async def test_a_session_logged_out_on_one_instance_is_refused_on_the_other(
    make_client: ClientFactory, cluster_settings: Settings, cluster_redis: RedisCluster
) -> None:
    first, second = await two_apps(make_client, cluster_settings)
    account = await sign_up(first)
    other = await log_in(first, account)  # a second session of the same user
    socket = await open_test_socket(second, account)
    assert (await second.get("/api/v1/me", headers=account.auth)).status == 200

    logout = await first.post("/api/v1/auth/logout", json={"refresh_token": account.refresh_token})
    assert logout.status == 204

    for app in (second, first):
        refused = await app.get("/api/v1/me", headers=account.auth)
        assert refused.status == 401
        assert await problem_slug(refused) == "invalid-token"
    sid = jwt.decode(account.access_token, options={"verify_signature": False})["sid"]
    assert (
        0 < await cluster_redis.ttl(f"revoked-session:{sid}") <= cluster_settings.access_token_ttl
    )
    assert (await second.get("/api/v1/me", headers=other.auth)).status == 200
    # The socket of that session on the other instance is closed too.
    assert await closed_with(socket) == SESSION_ENDED


# -- 7. a circuit breaker per node ----------------------------------------------------------------


def breakers(page: str) -> dict[str, float]:
    """``jangteo_redis_breaker_open`` by node: 1 while that node's breaker refuses calls."""
    return {
        dict(labels)["node"]: value
        for labels, value in samples(page, "jangteo_redis_breaker_open").items()
    }


async def test_a_stalled_master_opens_only_its_own_breaker(
    make_client: ClientFactory, cluster_settings: Settings, slots: SlotMap
) -> None:
    client = await make_client(cluster_settings.replace(redis_breaker_cooldown=1.0))
    await app_ready(client)
    redis = client.app[keys.redis_key]
    key_on = one_per_master(slots, lambda n: f"breaker-check:{n}")
    for key in key_on.values():
        await redis.set(key, "before")
    states = breakers(await metrics_text(client))
    assert {master: states.get(master) for master in key_on} == dict.fromkeys(key_on, 0.0)

    victim, *others = sorted(key_on)
    async with on_node(victim) as pauser:
        # Writes wait on that master (its reads, CLUSTER SLOTS among them, go on), and no
        # failover starts: the cluster bus still hears it.
        await pauser.execute_command("CLIENT", "PAUSE", str(int(WAIT_S * 1000)), "WRITE")  # type: ignore[no-untyped-call]
        try:
            with pytest.raises((RedisConnectionError, RedisTimeoutError)):
                await redis.set(key_on[victim], "during")

            async def refused_at_once() -> bool:
                try:
                    await redis.set(key_on[victim], "during")
                except RedisUnavailable:
                    return True
                except (RedisConnectionError, RedisTimeoutError):
                    return False  # a probe after the cooldown: it waited, and opened it again
                raise AssertionError("a paused master took a write")

            await eventually(refused_at_once, "the stalled master's calls fail fast", WAIT_S)
            states = breakers(await metrics_text(client))
            assert {master: states[master] for master in key_on} == {
                victim: 1.0,
                **dict.fromkeys(others, 0.0),
            }
            for master in others:  # the other masters go on
                await redis.set(key_on[master], "during")
                assert await redis.get(key_on[master]) == b"during"
        finally:
            await pauser.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]

    async def closed_again() -> bool:
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            await redis.set(key_on[victim], "after")
            return breakers(await metrics_text(client))[victim] == 0.0
        return False

    await eventually(closed_again, "the master's breaker closed again", WAIT_S)
