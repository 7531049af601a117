"""Liveness, readiness and metrics endpoints (outside /api/v1)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge

from realtime.keys import broker_key, relay_key
from server import keys
from server.errors import ServiceUnavailable
from server.jsonio import json_response
from server.openapi import ApiSpec

CHECK_TIMEOUT = 1.0


class ReadinessGauges:
    """``jangteo_ready`` and ``jangteo_ready_check``: the readiness checks, run at each
    scrape, so that Prometheus sees every instance's readiness as a load balancer does."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ready = Gauge(
            "jangteo_ready", "1 when /readyz answers 200 (every check ok), else 0",
            registry=registry,
        )  # fmt: skip
        self.checks = Gauge(
            "jangteo_ready_check", "1 while a readiness check passes, by check", ["check"],
            registry=registry,
        )  # fmt: skip

    def record(self, report: dict[str, str]) -> None:
        for check, result in report.items():
            self.checks.labels(check).set(1 if result == "ok" else 0)
        self.ready.set(1 if all(result == "ok" for result in report.values()) else 0)


readiness_gauges_key = web.AppKey("readiness_gauges", ReadinessGauges)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when PostgreSQL and Redis answer within a second and events arrive, else 503."""
    report = await _readiness(request.app)
    if all(result == "ok" for result in report.values()):
        return json_response({"status": "ok", **report, "relay": _relay(request.app)})
    failing = ", ".join(name for name, result in report.items() if result != "ok")
    raise ServiceUnavailable(
        f"not ready: {failing}", retry_after=1, checks=report, relay=_relay(request.app)
    )


async def _readiness(app: web.Application) -> dict[str, str]:
    """Each check's result: "ok" or the reason it failed."""
    checks = await asyncio.gather(_check_postgres(app), _check_redis(app))
    return {"postgres": checks[0], "redis": checks[1], "events": _check_events(app)}


async def _check_postgres(app: web.Application) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await app[keys.pg_pool_key].fetchval("SELECT 1")
    except Exception as error:  # any failure means not ready; the reason is reported
        return f"error: {type(error).__name__}"
    return "ok"


async def _check_redis(app: web.Application) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await app[keys.redis_key].ping()
    except Exception as error:
        return f"error: {type(error).__name__}"
    return "ok"


def _check_events(app: web.Application) -> str:
    """Whether this instance receives events: its subscription's watchdog hears Redis."""
    broker = app.get(broker_key)
    if broker is None or broker.healthy:
        return "ok"
    return "error: event subscription down"


def _relay(app: web.Application) -> dict[str, object]:
    """Not a check: the relay partitions there are and those this instance leads."""
    relay = app.get(relay_key)
    if relay is None or relay.config is None:
        return {"partitions": None, "leading": []}
    return {"partitions": relay.config.partitions, "leading": relay.leading}


async def metrics(request: web.Request) -> web.Response:
    request.app[readiness_gauges_key].record(await _readiness(request.app))
    body = request.app[keys.metrics_key].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    app[readiness_gauges_key] = ReadinessGauges(app[keys.metrics_key].registry)
    spec.route(app, "GET", "/healthz", healthz, summary="The process is up", tag="ops")
    spec.route(
        app, "GET", "/readyz", readyz, summary="PostgreSQL and Redis are reachable",
        tag="ops", errors=(503,),
    )  # fmt: skip
    spec.route(
        app, "GET", "/metrics", metrics, summary="Prometheus metrics of this process",
        tag="ops", content_type="text/plain",
    )  # fmt: skip
