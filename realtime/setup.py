"""The realtime path wired into the app: broker, hub, relay and gateway, in one cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from db.pool import TimedPool
from realtime.broker_redis import RedisBroker
from realtime.broker_redis_cluster import ClusterBroker
from realtime.chat import ChatOps
from realtime.gateway import Gateway
from realtime.hub import Hub
from realtime.keys import broker_key, gateway_key, relay_key
from realtime.log import PostgresEventLog
from realtime.metrics import GatewayMetrics, HubMetrics, RelayMetrics
from realtime.presence import Presence
from realtime.relay import OutboxRelay, RelaySettings
from realtime.sse_metrics import StreamMetrics
from realtime.tracing import EventTracing
from server import keys
from server.tracing import tracer_provider_key


async def realtime_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.settings_key]
    assert settings.redis_url is not None and settings.database_url is not None
    registry = app[keys.metrics_key].registry
    instance = uuid.uuid4().hex[:12]  # names this instance's relay and its spans
    provider = app.get(tracer_provider_key)
    tracing = None if provider is None else EventTracing(provider.get_tracer(__name__), instance)
    broker_class = ClusterBroker if settings.redis_mode == "cluster" else RedisBroker
    broker = broker_class(
        settings.redis_url,
        app[keys.redis_key],
        watchdog_interval=settings.redis_watchdog_interval,
        deployment=settings.deployment,
    )
    hub = Hub(
        broker,
        PostgresEventLog(app[keys.pg_pool_key]),
        HubMetrics(registry),
        replay_limit=settings.ws_replay_limit,
        recent_size=settings.ws_resume_window,
        recent_age=settings.ws_resume_window_age,
        tracing=tracing,
    )
    relay = OutboxRelay(
        RelaySettings(
            database_url=settings.database_url,
            batch_size=settings.relay_batch_size,
            poll_interval=settings.relay_poll_interval,
            retention_seconds=settings.event_retention,
            step_down=settings.relay_step_down,
            lock_timeout=settings.relay_lock_timeout,
        ),
        broker,
        RelayMetrics(registry),
        instance,
        tracing,
    )
    presence = Presence(app[keys.redis_key], broker)
    gateway = Gateway(
        settings,
        hub,
        app[keys.redis_key],
        app[keys.pg_pool_key],
        GatewayMetrics(registry),
        presence,
        stream_metrics=StreamMetrics(registry),
    )
    ChatOps(gateway, app[keys.pg_pool_key], app[keys.rate_limiter_key], settings.rate_limit_writes)
    app[broker_key] = broker
    app[relay_key] = relay
    app[gateway_key] = gateway
    # Start ready when Redis is there; start anyway (not ready) when it is not.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings.redis_timeout):
            await broker.wait_live()
    pool = app[keys.pg_pool_key]
    waker = pool.waker if isinstance(pool, TimedPool) else None
    if waker is not None:  # a commit wakes a leader of this process directly
        waker.wake_here = relay.wake_here
    relay_task = asyncio.create_task(relay.run(), name="jangteo-relay")
    hub.start()
    presence.start()
    sessions_task = asyncio.create_task(gateway.follow_sessions(), name="jangteo-sessions")
    expiry_task = asyncio.create_task(gateway.expire_sessions(), name="jangteo-session-expiry")
    deaf_task = asyncio.create_task(gateway.check_sessions_while_deaf(), name="jangteo-deaf")
    heartbeat_task = asyncio.create_task(gateway.beat_streams(), name="jangteo-sse-heartbeat")
    with contextlib.suppress(TimeoutError):  # sockets are refused (503) until it is done
        async with asyncio.timeout(settings.pg_connect_timeout):
            await asyncio.shield(sessions_task)
    yield
    await gateway.close_all()  # normally done already by on_shutdown
    await relay.stop(relay_task)  # publishes what committed, then hands leadership over
    if waker is not None:
        waker.wake_here = None
    for task in (sessions_task, expiry_task, deaf_task, heartbeat_task, *gateway.background):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await gateway.session_states.close()
    await gateway.tickets.close()
    await presence.close()
    await hub.close()
    await broker.close()


async def close_sockets_on_shutdown(app: web.Application) -> None:
    """on_shutdown: every socket and stream gets 1001 before in-flight requests are awaited."""
    if gateway_key in app:
        await app[gateway_key].close_all()


def setup_realtime(app: web.Application) -> None:
    app.cleanup_ctx.append(realtime_ctx)
    app.on_shutdown.append(close_sockets_on_shutdown)
