"""The listing cache: reads see writes at once (across processes), hits, stampedes, Redis down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from server.embedded.process import free_port
from server.listings.cache import ListingCache
from server.metrics import Metrics
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.server.listings_support import (
    LISTINGS,
    JsonObject,
    cache_counts,
    create_listing,
    get_listing,
    item_url,
    patch_listing,
    quick_accounts,
    read_cache_counts,
    served,
)
from tests.support import Account, Client, ServerProcess


@pytest.fixture
async def seller(db: asyncpg.Connection, settings: Settings) -> Account:
    return (await quick_accounts(db, settings, 1))[0]


async def region_feed(client: Client, region: str = "seoul-mapo") -> JsonObject:
    response = await client.get(LISTINGS, params={"region": region})
    assert response.status == 200, await response.text()
    body: JsonObject = await response.json()
    return body


async def test_a_write_is_seen_by_the_next_read(
    client: Client, db: asyncpg.Connection, settings: Settings, seller: Account
) -> None:
    listing = await create_listing(client, seller, price=1_000)
    listing_id = listing["id"]
    etag = f'"{listing_id}-1-0"'
    for n in range(1, 16):
        assert (await get_listing(client, listing_id))[1] == etag  # the entry is warm
        response = await patch_listing(client, seller, listing_id, etag, {"price": 1_000 + n})
        assert response.status == 200, await response.text()
        etag = response.headers["ETag"]
        body, read_etag = await get_listing(client, listing_id)
        assert body["price"] == 1_000 + n
        assert body["version"] == n + 1
        assert read_etag == etag
    # Likes are writes too.
    fan = (await quick_accounts(db, settings, 1))[0]
    assert (await client.put(item_url(listing_id) + "/like", headers=fan.auth)).status == 204
    body, read_etag = await get_listing(client, listing_id)
    assert body["like_count"] == 1
    assert read_etag == f'"{listing_id}-16-1"'
    # And hiding: the cached representation must not outlive it.
    response = await client.delete(item_url(listing_id), headers={**seller.auth, "If-Match": "*"})
    assert response.status == 204
    assert (await client.get(item_url(listing_id))).status == 404


async def test_the_second_read_is_a_cache_hit(client: Client, seller: Account) -> None:
    listing = await create_listing(client, seller)
    before = await read_cache_counts(client)
    first, _ = await get_listing(client, listing["id"])
    second, _ = await get_listing(client, listing["id"])
    assert first == second
    after = await read_cache_counts(client)
    assert after[("detail", "miss")] - before[("detail", "miss")] == 1
    assert served(after, "detail") - served(before, "detail") == 1

    # A change starts a new generation: one rebuild, then hits again.
    response = await patch_listing(client, seller, listing["id"], "*", {"title": "renamed"})
    assert response.status == 200
    assert (await get_listing(client, listing["id"]))[0]["title"] == "renamed"
    assert (await get_listing(client, listing["id"]))[0]["title"] == "renamed"
    last = await read_cache_counts(client)
    assert last[("detail", "miss")] - after[("detail", "miss")] == 1
    assert served(last, "detail") - served(after, "detail") == 1
    assert last[("detail", "bypass")] == 0


async def test_unknown_listings_are_cached_as_absent(client: Client) -> None:
    for _ in range(3):
        assert (await client.get(item_url(777))).status == 404
    counts = await read_cache_counts(client)
    assert (counts[("detail", "miss")], served(counts, "detail")) == (1, 2)


async def test_a_cold_listing_read_100_times_at_once_is_built_once(
    client: Client, seller: Account
) -> None:
    listing = await create_listing(client, seller, title="Popular item")
    before = await read_cache_counts(client)
    responses = await asyncio.gather(*(client.get(item_url(listing["id"])) for _ in range(100)))
    assert [response.status for response in responses] == [200] * 100
    bodies = [await response.json() for response in responses]
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["title"] == "Popular item"
    assert {response.headers["ETag"] for response in responses} == {f'"{listing["id"]}-1-0"'}
    after = await read_cache_counts(client)
    delta = after - before
    assert delta[("detail", "miss")] == 1, delta
    assert served(delta, "detail") + delta[("detail", "waited")] == 99, delta
    assert delta[("detail", "bypass")] == 0


class GatedLocks:
    """Forwards to Redis, but holds every rebuild-lock attempt after the first until released."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.attempts = 0
        self.second_attempt = asyncio.Event()
        self.release = asyncio.Event()

    async def set(self, name: str, value: Any, **options: Any) -> Any:
        if options.get("nx"):
            self.attempts += 1
            if self.attempts > 1:
                self.second_attempt.set()
                await self.release.wait()
        return await self.redis.set(name, value, **options)

    async def get(self, name: str) -> Any:
        return await self.redis.get(name)

    async def delete(self, *names: str) -> Any:
        return await self.redis.delete(*names)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_reader_that_gets_the_lock_after_a_rebuild_uses_that_entry(
    database_url: str, redis_client: aioredis.Redis
) -> None:
    """A reader misses, then takes the rebuild lock only after another finished: no rebuild."""
    metrics = Metrics()
    cache = ListingCache(redis_client, metrics)
    gate = GatedLocks(redis_client)
    cache.redis = cast(aioredis.Redis, gate)
    builds: list[str] = []
    building = asyncio.Event()
    finish = asyncio.Event()

    async def slow_build() -> bytes:
        builds.append("first")
        building.set()
        await finish.wait()
        return b"built once"

    async def second_build() -> bytes:
        builds.append("second")
        return b"built twice"

    first = asyncio.create_task(cache.detail(5, slow_build))
    await building.wait()  # the first reader holds the lock and is building
    second = asyncio.create_task(cache.detail(5, second_build))
    await gate.second_attempt.wait()  # the second reader missed and now wants the lock
    finish.set()
    assert await first == b"built once"  # stored, lock released
    gate.release.set()  # now the second reader gets the lock
    assert await second == b"built once"
    assert builds == ["first"]
    counts = cache_counts(metrics.render().decode())
    assert counts[("detail", "miss")] == 1
    assert counts[("detail", "hit")] + counts[("detail", "waited")] == 1


async def test_the_region_feed_shows_changes_at_once(
    client: Client, db: asyncpg.Connection, settings: Settings, seller: Account
) -> None:
    old = await create_listing(client, seller, title="Old")
    elsewhere = (await quick_accounts(db, settings, 1, region="busan-haeundae"))[0]
    assert [item["id"] for item in (await region_feed(client))["items"]] == [old["id"]]
    assert [item["id"] for item in (await region_feed(client))["items"]] == [old["id"]]
    counts = await read_cache_counts(client)
    assert (counts[("feed", "miss")], served(counts, "feed")) == (1, 1)

    new = await create_listing(client, seller, title="New")
    assert [item["id"] for item in (await region_feed(client))["items"]] == [new["id"], old["id"]]
    # A listing in another region does not show, and the busan feed has it at once.
    far = await create_listing(client, elsewhere, title="Far")
    assert [i["id"] for i in (await region_feed(client))["items"]] == [new["id"], old["id"]]
    assert [i["id"] for i in (await region_feed(client, "busan-haeundae"))["items"]] == [far["id"]]

    response = await patch_listing(client, seller, old["id"], "*", {"price": 1})
    assert response.status == 200
    items = (await region_feed(client))["items"]
    assert [(item["id"], item["price"]) for item in items][1] == (old["id"], 1)
    assert (await client.put(item_url(new["id"]) + "/like", headers=elsewhere.auth)).status == 204
    assert (await region_feed(client))["items"][0]["like_count"] == 1
    response = await client.delete(item_url(new["id"]), headers={**seller.auth, "If-Match": "*"})
    assert response.status == 204
    assert [item["id"] for item in (await region_feed(client))["items"]] == [old["id"]]
    # Each limit is its own entry, and fresh as well.
    limited = await client.get(LISTINGS, params={"region": "seoul-mapo", "limit": "1"})
    assert [item["id"] for item in (await limited.json())["items"]] == [old["id"]]


async def test_everything_works_with_redis_unreachable(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.2)
    client = await make_client(down)
    seller, fan = await quick_accounts(db, down, 2)

    response = await client.post(
        LISTINGS, json={"title": "No cache", "price": 5, "category": "etc"}, headers=seller.auth
    )
    assert response.status == 201, await response.text()
    listing = await response.json()
    listing_id = listing["id"]
    body, etag = await get_listing(client, listing_id)
    assert body == listing
    assert (await client.get(item_url(listing_id), headers={"If-None-Match": etag})).status == 304

    response = await patch_listing(client, seller, listing_id, etag, {"price": 6})
    assert response.status == 200, await response.text()
    assert (await get_listing(client, listing_id))[0]["price"] == 6
    assert (await client.put(item_url(listing_id) + "/like", headers=fan.auth)).status == 204
    assert (await get_listing(client, listing_id))[0]["like_count"] == 1

    feed = await region_feed(client)
    assert [(item["id"], item["price"]) for item in feed["items"]] == [(listing_id, 6)]
    other = await client.get(LISTINGS, params={"q": "cache"})
    assert other.status == 200
    assert [item["id"] for item in (await other.json())["items"]] == [listing_id]

    response = await client.delete(item_url(listing_id), headers={**seller.auth, "If-Match": "*"})
    assert response.status == 204
    assert (await client.get(item_url(listing_id))).status == 404

    counts = await read_cache_counts(client)
    assert counts[("detail", "bypass")] == 5  # every GET of the listing went to PostgreSQL
    assert counts[("feed", "bypass")] == 1
    assert served(counts, "detail") + counts[("detail", "miss")] == 0
    assert served(counts, "feed") + counts[("feed", "miss")] == 0


# --- two real server processes sharing PostgreSQL and Redis ----------------------------------


async def remote_json(
    http: aiohttp.ClientSession, method: str, url: str, status: int, **options: Any
) -> tuple[Any, aiohttp.ClientResponse]:
    async with http.request(method, url, **options) as response:
        assert response.status == status, await response.text()
        body = await response.json() if response.content_length else None
        return body, response


async def test_a_write_on_one_instance_is_read_at_once_on_another(
    two_servers: tuple[ServerProcess, ServerProcess], db: asyncpg.Connection, settings: Settings
) -> None:
    first, second = two_servers
    seller = (await quick_accounts(db, settings, 1))[0]
    auth = seller.auth
    async with aiohttp.ClientSession() as http:
        listing, _ = await remote_json(
            http, "POST", first.url + LISTINGS, 201,
            json={"title": "Shared", "price": 100, "category": "books"}, headers=auth,
        )  # fmt: skip
        listing_id = listing["id"]
        url = item_url(listing_id)
        # Both instances read it (and warm the shared cache).
        for server in (second, first, second):
            body, _ = await remote_json(http, "GET", server.url + url, 200)
            assert body == listing
        feed, _ = await remote_json(
            http, "GET", second.url + LISTINGS, 200, params={"region": "seoul-mapo"}
        )
        assert [item["id"] for item in feed["items"]] == [listing_id]

        for n in range(1, 6):
            writer, reader = (first, second) if n % 2 else (second, first)
            _, response = await remote_json(
                http, "PATCH", writer.url + url, 200,
                json={"price": 100 + n}, headers={**auth, "If-Match": "*"},
            )  # fmt: skip
            etag = response.headers["ETag"]
            body, read = await remote_json(http, "GET", reader.url + url, 200)
            assert body["price"] == 100 + n
            assert body["version"] == n + 1
            assert read.headers["ETag"] == etag
            feed, _ = await remote_json(
                http, "GET", reader.url + LISTINGS, 200, params={"region": "seoul-mapo"}
            )
            assert [(item["id"], item["price"]) for item in feed["items"]] == [
                (listing_id, 100 + n)
            ]

        newer, _ = await remote_json(
            http, "POST", first.url + LISTINGS, 201,
            json={"title": "Newer", "price": 1, "category": "books"}, headers=auth,
        )  # fmt: skip
        feed, _ = await remote_json(
            http, "GET", second.url + LISTINGS, 200, params={"region": "seoul-mapo"}
        )
        assert [item["id"] for item in feed["items"]] == [newer["id"], listing_id]

        await remote_json(http, "DELETE", second.url + url, 204, headers={**auth, "If-Match": "*"})
        await remote_json(http, "GET", first.url + url, 404)

        # The second instance served reads from the shared cache, too.
        async with http.get(second.url + "/metrics") as response:
            counts = cache_counts(await response.text())
        assert served(counts, "detail") >= 1
        assert counts[("feed", "hit")] + counts[("feed", "miss")] >= 1
