"""One cleanup context per resource, registered in dependency order (torn down in reverse)."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import Gauge

from db.pool import create_pool
from db.queries.listings import listings_by_id
from db.read_batches import ReadBatches
from rediswire.codec import redis_database
from server import keys
from server.auth.revocations import SessionRevocations
from server.listings.cache import ListingCache
from server.listings.invalidation import listen_for_invalidations
from server.listings.invalidation import stop as stop_listener
from server.listings.near_cache import NearCache
from server.orders.locks import PurchaseLocks
from server.orders.queue import PurchaseQueue, QueueSettings
from server.orders.queue_consumer import QueueConsumers
from server.ratelimit import RateLimiter
from server.redis_client import open_redis


async def gc_pauses_ctx(app: web.Application) -> AsyncIterator[None]:
    """This process's collection pauses, counted while the app runs."""
    pauses = app[keys.metrics_key].gc_pauses
    pauses.install()
    try:
        yield
    finally:
        pauses.uninstall()


async def pg_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """The PostgreSQL pool; created lazily-connecting so the app starts while PG is down."""
    settings = app[keys.settings_key]
    assert settings.database_url is not None, "resolve the database URL first"
    pool = await create_pool(
        settings.database_url,
        min_size=settings.pg_pool_min,
        max_size=settings.pg_pool_max,
        connect_timeout=settings.pg_connect_timeout,
        acquire_timeout=settings.pg_acquire_timeout,
        statement_timeout=settings.pg_statement_timeout,
    )
    app[keys.pg_pool_key] = pool
    listing_reads = ReadBatches(functools.partial(listings_by_id, pool))
    app[keys.listing_reads_key] = listing_reads
    metrics = app[keys.metrics_key]
    gauge = Gauge(
        "jangteo_pg_pool_connections", "PostgreSQL pool connections", ["state"],
        registry=metrics.registry,
    )  # fmt: skip
    gauge.labels("open").set_function(pool.get_size)
    gauge.labels("idle").set_function(pool.get_idle_size)
    gauge.labels("max").set_function(pool.get_max_size)
    waiting = Gauge(
        "jangteo_pg_pool_waiters", "Requests waiting for a pooled PostgreSQL connection",
        registry=metrics.registry,
    )  # fmt: skip
    waiting.set_function(pool.get_waiting)
    yield
    await listing_reads.close()
    await pool.close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Redis client (connects on first use, reconnects by itself, fails fast behind a
    circuit breaker while Redis is unreachable) and what uses it: rate limits, cache, locks."""
    settings = app[keys.settings_key]
    assert settings.redis_url is not None, "resolve the Redis URL first"
    client = open_redis(settings, app[keys.metrics_key].registry)
    app[keys.redis_key] = client
    cluster = client if settings.redis_mode == "cluster" else None
    app[keys.rate_limiter_key] = RateLimiter(
        client, app[keys.metrics_key], enabled=settings.rate_limits_enabled
    )
    near = NearCache()
    app[keys.listing_cache_key] = ListingCache(
        client,
        app[keys.metrics_key],
        enabled=settings.cache_enabled,
        near=near,
        database=redis_database(settings.redis_url),
        deployment=settings.deployment,
        sharded=cluster is not None,
    )
    app[keys.purchase_locks_key] = PurchaseLocks(client)
    app[keys.session_revocations_key] = SessionRevocations(client)
    listener = asyncio.create_task(
        listen_for_invalidations(settings.redis_url, near, settings.deployment, cluster),
        name="jangteo-cache-invalidations",
    )
    yield
    await app[keys.listing_cache_key].close()
    await app[keys.session_revocations_key].close()
    await stop_listener(listener)
    await client.aclose()


async def purchase_queue_ctx(app: web.Application) -> AsyncIterator[None]:
    """The queue strategy's log, outcome listener and consumers (only under it)."""
    settings = app[keys.settings_key]
    if settings.purchase_strategy != "queue":
        yield
        return
    assert settings.database_url is not None, "resolve the database URL first"
    queue_settings = QueueSettings(
        settings.database_url,
        settings.deployment,
        partitions=settings.purchase_queue_partitions,
        batch=settings.purchase_queue_batch,
        timeout=settings.purchase_queue_timeout,
    )
    instance = uuid.uuid4().hex
    queue = PurchaseQueue(queue_settings, app[keys.redis_key], instance)
    consumers = QueueConsumers(queue_settings, app[keys.redis_key], instance)
    app[keys.purchase_queue_key] = queue
    queue.start()
    consumers.start()
    yield
    await consumers.stop()
    await queue.stop()
