"""The app's Redis client: one server's pool, or a cluster client, behind circuit breakers.

Every command, pipeline, script and lock of the app goes through this client. With
``JANGTEO_REDIS_MODE=cluster`` it is redis-py's cluster client, which reads the slot map
from any node named by ``JANGTEO_REDIS_URL``, sends each command to the master owning its
key, follows ``MOVED``/``ASK`` answers and re-reads the map after a failover; every node
has a breaker of its own (``NodeBreakers``), so one failed master fails fast for its own
slots only. The cluster client speaks the same commands as the single-server client, and
the app's code is written once against that (keys a script or transaction touches
together share a hash tag, so they live in one slot).
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from rediswire.codec import address
from server.redis_breaker import (
    BreakerMetrics,
    NodeBreakers,
    RedisBreaker,
    guarded_pool,
    node_breaker_connection,
)
from server.settings import Settings

# After a MOVED, a failover or a refused node, the cluster client re-reads the slot map
# and tries again at once, this many times; more would only make callers wait longer
# while a master is down (the breaker makes each try fail fast meanwhile).
CLUSTER_RETRIES = 2


def open_redis(settings: Settings, registry: CollectorRegistry) -> aioredis.Redis:
    """A client that connects on first use and reconnects by itself."""
    assert settings.redis_url is not None, "resolve the Redis URL first"
    metrics = BreakerMetrics(registry)

    def breaker(node: str) -> RedisBreaker:
        return RedisBreaker(
            failures=settings.redis_breaker_failures,
            cooldown=settings.redis_breaker_cooldown,
            # A probe may connect, handshake and run its command: each within the timeout.
            probe_timeout=3 * settings.redis_timeout,
            enabled=settings.redis_breaker,
            metrics=metrics,
            node=node,
        )

    if settings.redis_mode != "cluster":
        host, port = address(settings.redis_url)
        pool = guarded_pool(
            settings.redis_url,
            breaker(f"{host}:{port}"),
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_timeout,
        )
        return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    cluster = RedisCluster.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        retry=Retry(NoBackoff(), CLUSTER_RETRIES),
    )
    # The cluster client takes no connection class of its own (it always uses redis-py's
    # plain one): give it to the node it starts from and to every node it discovers later.
    connection_class = node_breaker_connection(NodeBreakers(breaker))
    cluster.nodes_manager.connection_kwargs["connection_class"] = connection_class
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = connection_class
    # The same commands under another class; the app's code is written against Redis's.
    return cast(aioredis.Redis, cluster)
