"""Near-cache invalidation through a real Redis: acks, leases, stalled and silent processes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from rediswire.codec import redis_database
from server.embedded.redis import EmbeddedRedis
from server.listings.cache import ListingCache, detail_base
from server.listings.invalidation import (
    SUBSCRIBER_NAME,
    channel_name,
    listen_for_invalidations,
    stop,
)
from server.listings.near_cache import NearCache
from server.metrics import Metrics


async def _until(condition: Callable[[], bool], attempts: int = 200) -> bool:
    for _ in range(attempts):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


def _leased(near: NearCache) -> Callable[[], bool]:
    return lambda: near.enabled and near.lease_until > time.monotonic()


async def _subscriber_ids(redis: aioredis.Redis) -> list[str]:
    clients = await redis.client_list(_type="pubsub")
    return [client["id"] for client in clients if client.get("name") == SUBSCRIBER_NAME]


def _unconfirmed(cache: ListingCache) -> float | None:
    return cache.metrics.registry.get_sample_value("jangteo_cache_unconfirmed_invalidations_total")


class ThreadedProcess:
    """A near cache and its subscription on an event loop of their own, which can be stalled."""

    def __init__(self, redis_url: str) -> None:
        self.near = NearCache()
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.stalled = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(redis_url,), daemon=True)
        self.thread.start()
        self.started.wait(10)

    def _run(self, redis_url: str) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(listen_for_invalidations(redis_url, self.near))
        self.loop.call_soon(self.started.set)
        self.loop.run_forever()

    def stall(self, seconds: float) -> None:
        """Block its loop, as a long synchronous call in a handler would; wait until it has."""

        def block() -> None:
            self.stalled.set()
            time.sleep(seconds)

        self.loop.call_soon_threadsafe(block)
        assert self.stalled.wait(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(stop(self.task), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


Subscribe = Callable[..., Awaitable[NearCache]]


@pytest.fixture
async def redis(own_redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


@pytest.fixture
async def subscribe(own_redis: EmbeddedRedis) -> AsyncIterator[Subscribe]:
    """Start a process's near cache and subscription (on database 0 unless a URL is given)."""
    listeners: list[asyncio.Task[None]] = []

    async def start(url: str = own_redis.url) -> NearCache:
        near = NearCache()
        listeners.append(asyncio.create_task(listen_for_invalidations(url, near)))
        assert await _until(_leased(near))
        return near

    yield start
    for listener in listeners:
        await stop(listener)


async def test_listener_applies_messages_acks_them_and_follows_the_connection(
    own_redis: EmbeddedRedis, redis: aioredis.Redis, subscribe: Subscribe
) -> None:
    near = await subscribe()
    near.put(detail_base(5), "", b"five", near.epoch)
    message = f"ack:1 {detail_base(5)} cache:{{feed:x}}"
    assert await redis.publish(channel_name("0"), message) == 1
    acked = await redis.blpop(["ack:1"], timeout=5)
    assert acked is not None
    assert detail_base(5) not in near  # dropped before the ack was sent
    _, client_id = acked
    assert [client_id.decode() if isinstance(client_id, bytes) else client_id] == (
        await _subscriber_ids(redis)
    )

    near.put(detail_base(6), "", b"six", near.epoch)
    own_redis.stop()
    assert await _until(lambda: not near.enabled)
    assert detail_base(6) not in near  # emptied: messages may have been missed

    own_redis.ensure_running()
    assert await _until(_leased(near))


async def test_a_change_returns_only_once_every_process_dropped_its_copy(
    redis: aioredis.Redis, subscribe: Subscribe
) -> None:
    processes = [await subscribe() for _ in range(3)]
    # A generous timeout: on a starved machine a live process must not count as silent.
    writer = ListingCache(redis, Metrics(), near=NearCache(), ack_timeout_s=5)
    for round_number in range(50):
        for near in processes:
            near.put(detail_base(7), "", b"v%d" % round_number, near.epoch)
        await writer.changed(7, "seoul-mapo")
        # No waiting here: the write has returned, so no process may still hold a copy.
        assert [detail_base(7) in near for near in processes] == [False, False, False]
    assert await redis.keys("*:ack:*") == []
    assert _unconfirmed(writer) == 0


async def test_concurrent_changes_share_rounds_and_each_returns_after_its_own(
    redis: aioredis.Redis, subscribe: Subscribe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many writers at once: fewer rounds than changes, and still, when a change returns,
    no process holds a copy it put before that change."""
    processes = [await subscribe() for _ in range(2)]
    writer = ListingCache(redis, Metrics(), near=NearCache(), ack_timeout_s=5)
    published = 0
    publish = redis.publish

    async def counting_publish(channel: str, message: str) -> int:
        nonlocal published
        published += 1
        return await publish(channel, message)

    monkeypatch.setattr(redis, "publish", counting_publish)

    async def change(listing_id: int) -> None:
        for near in processes:
            near.put(detail_base(listing_id), "", b"before", near.epoch)
        await writer.changed(listing_id, "seoul-mapo")
        assert [detail_base(listing_id) in near for near in processes] == [False, False]

    await asyncio.gather(*(change(listing_id) for listing_id in range(100, 160)))
    assert 1 <= published < 60
    assert _unconfirmed(writer) == 0


async def test_a_stalled_process_stops_serving_before_the_write_answers(
    own_redis: EmbeddedRedis, redis: aioredis.Redis
) -> None:
    stalled = ThreadedProcess(own_redis.url)
    writer = ListingCache(redis, Metrics(), near=NearCache(), ack_timeout_s=0.3)
    try:
        assert await _until(_leased(stalled.near))
        stalled.near.put(detail_base(3), "", b"old", stalled.near.epoch)
        assert stalled.near.get(detail_base(3)) == b"old"
        stalled.stall(2.5)

        await writer.changed(3, "seoul-mapo")

        # Its loop has not run since: it still holds the copy, but may not serve it.
        assert detail_base(3) in stalled.near
        assert stalled.near.get(detail_base(3)) is None
        assert _unconfirmed(writer) == 1
        assert await _subscriber_ids(redis) == []  # disconnected, so the next write won't wait
    finally:
        stalled.close()


async def test_a_silent_subscriber_is_disconnected_and_the_others_kept(
    own_redis: EmbeddedRedis, redis: aioredis.Redis, subscribe: Subscribe
) -> None:
    near = await subscribe()
    # Subscribed under the subscribers' name, but never answering.
    silent = aioredis.Redis.from_url(own_redis.url, client_name=SUBSCRIBER_NAME)
    silent_pubsub = silent.pubsub()
    writer = ListingCache(redis, Metrics(), near=NearCache(), ack_timeout_s=1.5)
    try:
        await silent_pubsub.subscribe(channel_name("0"))
        assert len(await _subscriber_ids(redis)) == 2
        near.put(detail_base(8), "", b"old", near.epoch)

        await writer.changed(8, "seoul-mapo")

        assert detail_base(8) not in near
        assert len(await _subscriber_ids(redis)) == 1  # the silent one is gone, ours stays
        assert near.enabled
        assert _unconfirmed(writer) == 1
    finally:
        await silent_pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        await silent.aclose()


async def test_copies_are_not_served_while_redis_does_not_answer(
    redis: aioredis.Redis, subscribe: Subscribe
) -> None:
    near = await subscribe()
    near.put(detail_base(2), "", b"two", near.epoch)
    await redis.client_pause(2500, all=True)  # pings go unanswered
    assert await _until(lambda: near.get(detail_base(2)) is None)
    assert near.enabled  # still subscribed: only the lease ran out
    assert await _until(lambda: near.get(detail_base(2)) == b"two")  # answered again


async def test_a_message_jangteo_never_sends_switches_the_near_cache_off_until_resubscribed(
    redis: aioredis.Redis, subscribe: Subscribe
) -> None:
    near = await subscribe()
    before = await _subscriber_ids(redis)
    near.put(detail_base(1), "", b"one", near.epoch)
    await redis.publish(channel_name("0"), b"\xff\xfe")
    assert await _until(lambda: detail_base(1) not in near)
    after = before
    for _ in range(200):  # then it subscribes again, on a new connection
        after = await _subscriber_ids(redis)
        if len(after) == 1 and after != before and _leased(near)():
            break
        await asyncio.sleep(0.05)
    assert len(after) == 1 and after != before and _leased(near)()


async def test_deployments_on_other_databases_of_one_server_are_left_alone(
    own_redis: EmbeddedRedis, subscribe: Subscribe
) -> None:
    server = f"redis://127.0.0.1:{own_redis.port}"
    ours, theirs = await subscribe(f"{server}/3"), await subscribe(f"{server}/0")
    redis = aioredis.Redis.from_url(f"{server}/3")
    writer = ListingCache(redis, Metrics(), near=NearCache(), database="3", ack_timeout_s=5)
    try:
        subscribers = await _subscriber_ids(redis)
        for near in (ours, theirs):
            near.put(detail_base(4), "", b"four", near.epoch)
        await writer.changed(4, "seoul-mapo")
        assert detail_base(4) not in ours
        assert theirs.get(detail_base(4)) == b"four"  # another deployment's listing 4
        assert await _subscriber_ids(redis) == subscribers  # nobody disconnected
        assert _unconfirmed(writer) == 0
    finally:
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
