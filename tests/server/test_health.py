"""healthz, readyz, metrics and request ids."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from realtime.metrics import CLOSE_REASONS
from server.settings import PURCHASE_STRATEGIES, Settings
from tests.support import Client


async def test_healthz_is_ok(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_reports_dependencies_and_the_event_subscription(client: Client) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    relay = body.pop("relay")  # not a check: which partitions it leads (test_gateway.py)
    assert body == {"status": "ok", "postgres": "ok", "redis": "ok", "events": "ok"}
    assert set(relay) == {"partitions", "leading"}


async def test_request_id_is_generated_or_echoed(client: Client) -> None:
    generated = await client.get("/healthz")
    assert len(generated.headers["X-Request-ID"]) == 32
    echoed = await client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert echoed.headers["X-Request-ID"] == "trace-42"
    unsafe = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["X-Request-ID"] != "bad id\twith spaces"


async def test_metrics_has_latency_histogram_per_route(client: Client) -> None:
    await client.get("/healthz")
    await client.get("/no/such/route")
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert (
        'jangteo_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/healthz"}'
        in text
    )
    assert 'jangteo_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text


async def samples(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The /metrics samples by name and sorted labels."""
    response = await client.get("/metrics")
    assert response.status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


async def test_metrics_show_readiness_pool_limits_strategies_and_close_reasons(
    client: Client, settings: Settings
) -> None:
    found = await samples(client)
    assert found[("jangteo_ready", ())] == 1
    for check in ("postgres", "redis", "events"):
        assert found[("jangteo_ready_check", (("check", check),))] == 1, check
    assert found[("jangteo_pg_pool_connections", (("state", "max"),))] == settings.pg_pool_max
    assert found[("jangteo_pg_pool_waiters", ())] == 0
    for strategy in PURCHASE_STRATEGIES:
        assert found[("jangteo_purchase_retries_total", (("strategy", strategy),))] == 0
    assert "slow" in CLOSE_REASONS
    for reason in CLOSE_REASONS:
        assert found[("jangteo_ws_closes_total", (("reason", reason),))] == 0
