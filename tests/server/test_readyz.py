"""/readyz follows Redis: 503 while it is stopped, 200 again once it is back, without a restart."""

from __future__ import annotations

import asyncio

from server.embedded.redis import EmbeddedRedis
from server.settings import Settings
from tests.conftest import ClientFactory


async def test_readyz_follows_redis(
    make_client: ClientFactory, settings: Settings, own_redis: EmbeddedRedis
) -> None:
    client = await make_client(settings.replace(redis_url=own_redis.url, redis_timeout=0.5))
    assert (await client.get("/readyz")).status == 200

    own_redis.stop()
    response = await client.get("/readyz")
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    body = await response.json()
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("error")
    metrics = await (await client.get("/metrics")).text()
    assert "\njangteo_ready 0.0\n" in metrics  # Prometheus sees it too
    assert 'jangteo_ready_check{check="redis"} 0.0' in metrics
    assert 'jangteo_ready_check{check="postgres"} 1.0' in metrics

    own_redis.ensure_running()
    statuses = []
    for _ in range(50):  # the client reconnects on its own; give it a few attempts
        statuses.append((await client.get("/readyz")).status)
        if statuses[-1] == 200:
            break
        await asyncio.sleep(0.1)
    assert statuses[-1] == 200, statuses
