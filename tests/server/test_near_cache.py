"""The per-process near cache: guarded fills, invalidation by pub/sub, off while unsubscribed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from server import keys
from server.embedded.process import free_port
from server.embedded.redis import EmbeddedRedis
from server.listings.cache import ListingCache
from server.listings.invalidation import (
    SUBSCRIBER_NAME,
    channel_name,
    listen_for_invalidations,
    redis_database,
    stop,
)
from server.listings.near_cache import NearCache
from server.metrics import Metrics
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.support import sign_up


def test_entries_are_kept_and_dropped_by_base() -> None:
    near = NearCache()
    near.reset(enabled=True)
    near.put("cache:listing:1", "", b"one", near.epoch)
    near.put("cache:feed:seoul-mapo", "limit20", b"feed", near.epoch)
    assert near.get("cache:listing:1") == b"one"
    assert near.get("cache:feed:seoul-mapo", "limit20") == b"feed"
    near.invalidate(["cache:feed:seoul-mapo"])
    assert near.get("cache:feed:seoul-mapo", "limit20") is None
    assert near.get("cache:listing:1") == b"one"


def test_a_value_fetched_across_an_invalidation_is_not_kept() -> None:
    near = NearCache()
    near.reset(enabled=True)
    epoch = near.epoch
    near.invalidate(["cache:listing:9"])  # a change lands while the value was being fetched
    near.put("cache:listing:1", "", b"maybe stale", epoch)
    assert near.get("cache:listing:1") is None


def test_nothing_is_served_or_kept_while_disabled() -> None:
    near = NearCache()
    near.put("cache:listing:1", "", b"x", near.epoch)
    assert near.get("cache:listing:1") is None
    near.reset(enabled=True)
    near.put("cache:listing:1", "", b"x", near.epoch)
    near.reset(enabled=False)
    assert near.get("cache:listing:1") is None


def test_size_is_bounded_least_recently_used_first() -> None:
    near = NearCache(max_entries=2)
    near.reset(enabled=True)
    for n in range(3):
        near.put(f"cache:listing:{n}", "", b"%d" % n, near.epoch)
    assert near.get("cache:listing:0") is None
    assert near.get("cache:listing:2") == b"2"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", free_port())
    server.ensure_running()
    yield server
    server.stop()


async def _until(condition: object, attempts: int = 100) -> bool:
    for _ in range(attempts):
        if callable(condition) and condition():
            return True
        await asyncio.sleep(0.05)
    return False


async def _subscriber_ids(redis: aioredis.Redis) -> list[str]:
    clients = await redis.client_list(_type="pubsub")
    return [client["id"] for client in clients if client.get("name") == SUBSCRIBER_NAME]


async def test_listener_applies_messages_and_follows_the_connection(
    own_redis: EmbeddedRedis,
) -> None:
    near = NearCache()
    listener = asyncio.create_task(listen_for_invalidations(own_redis.url, near))
    publisher = aioredis.Redis.from_url(own_redis.url)
    try:
        assert await _until(lambda: near.enabled)
        near.put("cache:listing:5", "", b"five", near.epoch)
        message = "ack:1 cache:listing:5 cache:feed:x"
        receivers = await publisher.publish(channel_name("0"), message)
        assert receivers == 1
        assert await _until(lambda: near.get("cache:listing:5") is None)
        acked = await publisher.blpop(["ack:1"], timeout=5)
        assert acked is not None
        _, client_id = acked
        assert [client_id.decode() if isinstance(client_id, bytes) else client_id] == (
            await _subscriber_ids(publisher)
        )

        near.put("cache:listing:6", "", b"six", near.epoch)
        own_redis.stop()
        assert await _until(lambda: not near.enabled)
        assert near.get("cache:listing:6") is None  # emptied: messages may have been missed

        own_redis.ensure_running()
        assert await _until(lambda: near.enabled)
    finally:
        await stop(listener)
        await publisher.aclose()


async def test_app_serves_local_copies_and_drops_them_on_change(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(settings)
    near = client.app[keys.listing_cache_key].near
    assert await _until(lambda: near.enabled)
    seller = await sign_up(client)
    created = await client.post(
        "/api/v1/listings",
        json={"title": "lamp", "price": 5000, "category": "furniture"},
        headers=seller.auth,
    )
    listing = await created.json()
    path = f"/api/v1/listings/{listing['id']}"
    await client.get(path)
    assert near.get(f"cache:listing:{listing['id']}") is not None
    patched = await client.patch(
        path, json={"price": 4000}, headers={**seller.auth, "If-Match": created.headers["ETag"]}
    )
    assert patched.status == 200
    assert near.get(f"cache:listing:{listing['id']}") is None
    assert (await (await client.get(path)).json())["price"] == 4000


def _disconnections(cache: ListingCache) -> float | None:
    return cache.metrics.registry.get_sample_value("jangteo_cache_silent_subscribers_total")


async def test_a_change_returns_only_once_every_process_dropped_its_copy(
    own_redis: EmbeddedRedis,
) -> None:
    processes = [NearCache() for _ in range(3)]
    listeners = [
        asyncio.create_task(listen_for_invalidations(own_redis.url, near)) for near in processes
    ]
    redis = aioredis.Redis.from_url(own_redis.url)
    # A generous timeout: on a starved machine a live process must not count as silent.
    cache = ListingCache(redis, Metrics(), near=processes[0], ack_timeout_s=5)
    try:
        assert await _until(lambda: all(near.enabled for near in processes))
        for round_number in range(50):
            for near in processes:
                near.put("cache:listing:7", "", b"v%d" % round_number, near.epoch)
            await cache.changed(7, "seoul-mapo")
            # No waiting here: the write has returned, so no process may still hold a copy.
            assert [near.get("cache:listing:7") for near in processes] == [None, None, None]
        assert await redis.keys("cache:ack:*") == []
        assert _disconnections(cache) == 0
    finally:
        for listener in listeners:
            await stop(listener)
        await redis.aclose()


async def test_a_process_that_does_not_confirm_is_disconnected(own_redis: EmbeddedRedis) -> None:
    near = NearCache()
    listener = asyncio.create_task(listen_for_invalidations(own_redis.url, near))
    redis = aioredis.Redis.from_url(own_redis.url)
    # A stalled process: subscribed under the subscribers' name, but never answering.
    stalled = aioredis.Redis.from_url(own_redis.url, client_name=SUBSCRIBER_NAME)
    stalled_pubsub = stalled.pubsub()
    cache = ListingCache(redis, Metrics(), near=near, ack_timeout_s=1.5)
    try:
        await stalled_pubsub.subscribe(channel_name("0"))
        assert await _until(lambda: near.enabled)
        assert len(await _subscriber_ids(redis)) == 2
        near.put("cache:listing:8", "", b"old", near.epoch)

        await cache.changed(8, "seoul-mapo")

        assert near.get("cache:listing:8") is None
        assert len(await _subscriber_ids(redis)) == 1  # the stalled one is gone, ours stays
        assert near.enabled
        assert _disconnections(cache) == 1
    finally:
        await stop(listener)
        await stalled_pubsub.aclose()  # type: ignore[no-untyped-call]
        await stalled.aclose()
        await redis.aclose()


def test_a_closing_subscription_stops_serving_before_it_is_reported_lost() -> None:
    near = NearCache()
    near.reset(enabled=True)
    near.put("cache:listing:1", "", b"x", near.epoch)
    closing = False
    near.bind(lambda: closing)
    assert near.get("cache:listing:1") == b"x"
    closing = True
    assert near.get("cache:listing:1") is None


async def test_deployments_on_other_databases_of_one_server_are_left_alone(
    own_redis: EmbeddedRedis,
) -> None:
    ours, theirs = NearCache(), NearCache()
    server = f"redis://127.0.0.1:{own_redis.port}"
    listeners = [
        asyncio.create_task(listen_for_invalidations(f"{server}/3", ours)),
        asyncio.create_task(listen_for_invalidations(f"{server}/0", theirs)),
    ]
    redis = aioredis.Redis.from_url(f"{server}/3")
    cache = ListingCache(redis, Metrics(), near=ours, database="3", ack_timeout_s=5)
    try:
        assert await _until(lambda: ours.enabled and theirs.enabled)
        subscribers = await _subscriber_ids(redis)
        for near in (ours, theirs):
            near.put("cache:listing:4", "", b"four", near.epoch)
        await cache.changed(4, "seoul-mapo")
        assert ours.get("cache:listing:4") is None
        assert theirs.get("cache:listing:4") == b"four"  # another deployment's listing 4
        assert await _subscriber_ids(redis) == subscribers  # nobody disconnected
        assert _disconnections(cache) == 0
    finally:
        for listener in listeners:
            await stop(listener)
        await redis.aclose()


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("redis://127.0.0.1:6379", "0"),
        ("redis://127.0.0.1:6379/0", "0"),
        ("redis://:secret@127.0.0.1:6379/7", "7"),
        ("redis://127.0.0.1:6379?db=5", "5"),
    ],
)
def test_the_database_is_read_from_the_url(url: str, database: str) -> None:
    assert redis_database(url) == database
