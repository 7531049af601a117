"""OpenTelemetry tracing, off unless ``JANGTEO_OTEL_ENDPOINT`` names an OTLP collector.

On, each app gets the official aiohttp server middleware (a server span per request,
continuing an incoming ``traceparent``) and the process gets the official asyncpg and Redis
instrumentations (a client span per statement and command inside a traced span). The
realtime path adds spans of its own (realtime/tracing.py). Off, none of it is installed:
no middleware, no patched client, nothing to check on any request. docs/tracing.md says
what is traced and what it costs.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from server.settings import Settings

tracer_provider_key = web.AppKey("tracer_provider", TracerProvider)
EXPORT_TIMEOUT_S = 10.0


class RootSampler(Sampler):
    """How a span with no parent is sampled: a request by the configured ratio; a span
    that links to changes (a relay publish, a delivery) always, as it is made only for
    sampled ones; a database or Redis call outside any traced span (the relay's polls, the
    hub's checks) never, or every poll would be a trace of its own."""

    def __init__(self, ratio: float) -> None:
        self.requests = TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if links:
            decider: Sampler = ALWAYS_ON
        elif kind is SpanKind.CLIENT:
            decider = ALWAYS_OFF
        else:
            decider = self.requests
        return decider.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"JangteoRoot{{{self.requests.rate}}}"


def sampler(ratio: float) -> Sampler:
    """Children follow their parent's decision; roots are decided by ``RootSampler``."""
    return ParentBased(root=RootSampler(ratio))


class TicketRedactor(SpanProcessor):
    """Socket and stream tickets travel in the query string (a browser's WebSocket cannot
    send headers); a span records the URL, so the ticket is blanked as the span starts,
    before anything can export it. Logs leave it out for the same reason."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for key in URL_ATTRIBUTES:
            value = span.attributes.get(key) if span.attributes else None
            if isinstance(value, str) and "ticket=" in value:
                span.set_attribute(key, _TICKET.sub(r"\1REDACTED", value))


URL_ATTRIBUTES = ("http.url", "http.target", "url.full", "url.query")
_TICKET = re.compile(r"((?:^|[?&])ticket=)[^&#]*")


def tracer_provider(
    ratio: float, exporting: SpanProcessor, service_name: str = "jangteo"
) -> TracerProvider:
    """A provider sampling as ``sampler(ratio)`` says, tickets blanked, then ``exporting``."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), sampler=sampler(ratio)
    )
    provider.add_span_processor(TicketRedactor())
    provider.add_span_processor(exporting)
    return provider


def tracer_provider_from(settings: Settings) -> TracerProvider | None:
    """The provider exporting over OTLP/HTTP to ``otel_endpoint``; None while it is unset."""
    if settings.otel_endpoint is None:
        return None
    exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint, timeout=EXPORT_TIMEOUT_S)
    return tracer_provider(
        settings.otel_sample_ratio, BatchSpanProcessor(exporter), settings.otel_service_name
    )


def traced_application(provider: TracerProvider, **options: Any) -> web.Application:
    """A ``web.Application`` with the official server middleware as its outermost one.

    The instrumentor replaces ``web.Application`` process-wide while it is on; it is on
    only while this one app is made, so other apps of the process are left as they are.
    """
    instrumentor = AioHttpServerInstrumentor()
    with warnings.catch_warnings():
        # Its way in is a subclass of web.Application, which aiohttp warns about.
        warnings.filterwarnings("ignore", "Inheritance class", DeprecationWarning)
        instrumentor.instrument(tracer_provider=provider)
    try:
        return web.Application(**options)
    finally:
        instrumentor.uninstrument()


class ClientInstrumentation:
    """The asyncpg and Redis instrumentations patch the client classes of the whole process,
    so they are installed once for all its apps and removed with the last one."""

    def __init__(self) -> None:
        self.users = 0
        self.instrumentors: tuple[AsyncPGInstrumentor, RedisInstrumentor] = (
            AsyncPGInstrumentor(),  # type: ignore[no-untyped-call]
            RedisInstrumentor(),
        )

    def acquire(self, provider: TracerProvider) -> None:
        if self.users == 0:
            for instrumentor in self.instrumentors:
                instrumentor.instrument(tracer_provider=provider)
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            for instrumentor in self.instrumentors:
                instrumentor.uninstrument()


# Process-wide, as what it stands for (patched client classes) is process-wide.
_clients = ClientInstrumentation()


def instrumentation_ctx(owned: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context that instruments the clients for the app's lifetime; an ``owned``
    provider (made from the settings) is flushed and shut down after the app stops."""

    async def instrumented(app: web.Application) -> AsyncIterator[None]:
        provider = app[tracer_provider_key]
        _clients.acquire(provider)
        try:
            yield
        finally:
            _clients.release()
            if owned:  # its last spans are sent now, off the loop (a blocking HTTP post)
                await asyncio.to_thread(provider.shutdown)

    return instrumented


def setup_tracing(app: web.Application, provider: TracerProvider, *, owned: bool) -> None:
    """Record ``provider`` for the realtime path and instrument the clients before any
    other resource starts (so the pool's and Redis's first calls are covered) and until
    every one has stopped."""
    app[tracer_provider_key] = provider
    app.cleanup_ctx.insert(0, instrumentation_ctx(owned))
