"""The sampling gate: a request its sampler would not record never reaches the official
middleware, and one it would record is traced as before, in the same trace.

A probe app built as jangteo builds its own (``traced_application``) answers with the span
current in its handler; the real app shows the same for its feed read. Both on real sockets.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind

from jangteo.app import create_app
from server.settings import Settings
from server.tracing import official_middleware, sampling_gate, traced_application, tracer_provider
from tests.support import Client

AppClient = Callable[..., Awaitable[Client]]
Providers = Callable[[float], TracerProvider]
PROBE = "/probe"


@pytest.fixture
def providers(exporter: InMemorySpanExporter) -> Iterator[Providers]:
    """Providers sampling requests at a given ratio, all exporting to ``exporter``."""
    made: list[TracerProvider] = []

    def at(ratio: float) -> TracerProvider:
        made.append(tracer_provider(ratio, SimpleSpanProcessor(exporter)))
        return made[-1]

    yield at
    for provider in made:
        provider.shutdown()


async def probe(request: web.Request) -> web.Response:
    """The span current in the handler: none at all, or one and whether it records."""
    span = trace.get_current_span()
    context = span.get_span_context()
    if not context.is_valid:
        return web.json_response({"span": False})
    return web.json_response(
        {"span": True, "recording": span.is_recording(), "trace_id": f"{context.trace_id:032x}"}
    )


async def probe_client(aiohttp_client: AppClient, provider: TracerProvider) -> Client:
    app = traced_application(provider)
    app.router.add_get(PROBE, probe)
    return await aiohttp_client(app)


async def seen(client: Client, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await client.get(PROBE, headers=headers or {})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def traceparent(trace_id: int, span_id: int, *, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def fresh_ids() -> tuple[int, int]:
    return secrets.randbits(128) | 1, secrets.randbits(64) | 1


async def seen_under_parent(client: Client, *, sampled: bool) -> tuple[dict[str, Any], int, int]:
    """What the probe saw of a request from a fresh remote parent, and the parent's ids."""
    trace_id, span_id = fresh_ids()
    body = await seen(client, {"traceparent": traceparent(trace_id, span_id, sampled=sampled)})
    return body, trace_id, span_id


async def test_an_unsampled_request_gets_no_span_at_all(
    aiohttp_client: AppClient, providers: Providers, exporter: InMemorySpanExporter
) -> None:
    client = await probe_client(aiohttp_client, providers(0.0))
    for _ in range(20):
        assert await seen(client) == {"span": False}
    assert exporter.get_finished_spans() == ()


async def test_a_sampled_request_is_traced_by_the_official_middleware(
    aiohttp_client: AppClient, providers: Providers, exporter: InMemorySpanExporter
) -> None:
    client = await probe_client(aiohttp_client, providers(1.0))
    body = await seen(client, {"User-Agent": "probe-agent"})
    assert body["span"] and body["recording"]
    (span,) = exporter.get_finished_spans()
    assert span.name == f"GET {PROBE}"
    assert span.kind is SpanKind.SERVER
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" == body["trace_id"]
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == PROBE
    assert attributes["http.status_code"] == 200
    assert attributes["http.user_agent"] == "probe-agent"


async def test_a_sampled_parent_is_followed_whatever_the_ratio(
    aiohttp_client: AppClient, providers: Providers, exporter: InMemorySpanExporter
) -> None:
    client = await probe_client(aiohttp_client, providers(0.0))
    body, trace_id, span_id = await seen_under_parent(client, sampled=True)
    assert body == {"span": True, "recording": True, "trace_id": f"{trace_id:032x}"}
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == trace_id
    assert span.parent is not None
    assert (span.parent.span_id, span.parent.is_remote) == (span_id, True)


async def test_an_unsampled_parent_is_not_traced_whatever_the_ratio(
    aiohttp_client: AppClient, providers: Providers, exporter: InMemorySpanExporter
) -> None:
    client = await probe_client(aiohttp_client, providers(1.0))
    body, _, _ = await seen_under_parent(client, sampled=False)
    assert body == {"span": False}
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    "header", ["garbage", "00-00000000000000000000000000000000-b7ad6b7169203331-01"]
)
async def test_a_malformed_parent_is_no_parent(
    aiohttp_client: AppClient, providers: Providers, exporter: InMemorySpanExporter, header: str
) -> None:
    client = await probe_client(aiohttp_client, providers(1.0))
    body = await seen(client, {"traceparent": header})
    assert body["span"] and body["recording"]
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # a trace of its own, sampled at the ratio


async def test_the_ratio_is_applied_once_on_the_trace_id(
    aiohttp_client: AppClient, providers: Providers, exporter: InMemorySpanExporter
) -> None:
    ratio, requests = 0.25, 2000
    client = await probe_client(aiohttp_client, providers(ratio))
    bodies: list[dict[str, Any]] = []
    for _ in range(requests // 50):
        bodies += await asyncio.gather(*(seen(client) for _ in range(50)))
    traced = [body for body in bodies if body["span"]]
    # Every request that got a span records it: none is made only for the SDK to drop.
    assert all(body["recording"] for body in traced)
    # 500 expected, standard deviation about 19: these bounds are more than five of them.
    assert 400 <= len(traced) <= 600, len(traced)
    spans = exporter.get_finished_spans()
    assert sorted(f"{span.context.trace_id:032x}" for span in spans) == sorted(
        body["trace_id"] for body in traced
    )
    # The trace ids are those the SDK's own ratio sampler keeps: the decision is its own.
    bound = TraceIdRatioBased(ratio).bound
    assert all(span.context.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < bound for span in spans)


async def test_the_apps_unsampled_read_records_nothing_and_a_sampled_parent_everything(
    aiohttp_client: AppClient,
    providers: Providers,
    exporter: InMemorySpanExporter,
    settings: Settings,
) -> None:
    client = await aiohttp_client(create_app(settings, tracer_provider=providers(0.0)))
    for region in ("seoul-mapo", "seoul-gangnam", "busan-haeundae"):  # each read uncached
        response = await client.get(f"/api/v1/listings?region={region}")
        assert response.status == 200, await response.text()
    assert exporter.get_finished_spans() == ()

    trace_id, span_id = fresh_ids()
    headers = {"traceparent": traceparent(trace_id, span_id, sampled=True)}
    response = await client.get("/api/v1/listings?region=jeju-si", headers=headers)
    assert response.status == 200, await response.text()
    spans = exporter.get_finished_spans()
    (server,) = [span for span in spans if span.kind is SpanKind.SERVER]
    assert server.context.trace_id == trace_id
    assert server.name == "GET /api/v1/listings"
    children = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert children, [span.name for span in spans]  # its PostgreSQL or Redis calls
    assert all(span.context.trace_id == trace_id for span in children)


def test_the_gate_needs_a_provider_it_can_hand_its_trace_id_to() -> None:
    foreign = TracerProvider()
    try:
        with pytest.raises(TypeError, match="tracer_provider"):
            sampling_gate(foreign, official_middleware(foreign))
    finally:
        foreign.shutdown()
