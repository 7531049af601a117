"""OpenTelemetry tracing, off unless ``JANGTEO_OTEL_ENDPOINT`` names an OTLP collector.

On, each app gets the official aiohttp server middleware (a server span per request,
continuing an incoming ``traceparent``) behind a sampling gate of jangteo's own, which lets
only requests that will be sampled reach it, and the process gets the official asyncpg and
Redis instrumentations (a client span per statement and command inside a traced span). The
realtime path adds spans of its own (realtime/tracing.py). Off, none of it is installed:
no middleware, no patched client, nothing to check on any request. docs/tracing.md says
what is traced and what it costs.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_server import (
    AioHttpServerInstrumentor,
    create_aiohttp_middleware,
    getter,
)
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.propagate import extract, get_global_textmap
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
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
        resource=Resource.create({"service.name": service_name}),
        sampler=sampler(ratio),
        id_generator=GateTraceIds(),
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
    """A ``web.Application`` whose outermost middleware is the sampling gate in front of
    the official server middleware; ``provider`` must come from ``tracer_provider``."""
    official = official_middleware(provider)
    middlewares = [sampling_gate(provider, official), *options.pop("middlewares", ())]
    return web.Application(middlewares=middlewares, **options)


def official_middleware(provider: TracerProvider) -> Middleware:
    """The official server middleware, tracing into ``provider``.

    Instrumenting sets the instrumentation's own settings (excluded URLs, semantic
    conventions, its request metrics) and replaces ``web.Application`` process-wide; the
    middleware is taken and the class put back at once, so other apps are left as they are.
    """
    instrumentor = AioHttpServerInstrumentor()
    with warnings.catch_warnings():
        # Its way in is a subclass of web.Application, which aiohttp warns about.
        warnings.filterwarnings("ignore", "Inheritance class", DeprecationWarning)
        instrumentor.instrument(tracer_provider=provider)
    try:
        middleware: Middleware = create_aiohttp_middleware(provider)
    finally:
        instrumentor.uninstrument()
    return middleware


# The trace id the gate drew for a request it sends on as a new trace, until its span takes it.
_drawn_trace_id: ContextVar[int | None] = ContextVar("jangteo_drawn_trace_id", default=None)


class GateTraceIds(RandomIdGenerator):
    """Trace ids as the SDK's default makes them, except that a request's server span gets
    the id the sampling gate drew and decided on: the SDK's sampler, deciding again on the
    same id, comes to the same answer, so the ratio is applied once, not twice."""

    def draw(self) -> int:
        """A fresh random trace id, never the one waiting for a span."""
        return super().generate_trace_id()

    def generate_trace_id(self) -> int:
        drawn = _drawn_trace_id.get()
        if drawn is None:
            return self.draw()
        _drawn_trace_id.set(None)  # one span, the request's, takes it
        return drawn


def sampling_gate(provider: TracerProvider, official: Middleware) -> Middleware:
    """Sends a request through ``official`` only when its span would be recorded.

    The official middleware builds its span's attributes (URL redacted and parsed, method
    sanitized, route resolved) and updates its request metrics before the sampler decides:
    about 120 µs of CPU per request, sampled or not. The gate asks the provider's own
    sampler first, as the SDK would ask it: with the parent the official middleware would
    extract (the propagators' headers, looked for first: none is the common case) and a
    trace id drawn here, which a new trace then keeps (``GateTraceIds``). A request not
    sampled goes straight to the app: no span object at all, so nothing is current in it,
    as outside any request. The span's attributes are not built for the gate's question
    (the method stands in for the span's name): jangteo's sampler looks at neither.
    """
    ids = provider.id_generator
    if not isinstance(ids, GateTraceIds):
        raise TypeError("the sampling gate needs a provider made by tracer_provider()")
    decide, fields = provider.sampler.should_sample, tuple(get_global_textmap().fields)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        parent = extract(request, getter=getter) if any(f in headers for f in fields) else None
        trace_id = ids.draw()
        decision = decide(parent or Context(), trace_id, request.method, SpanKind.SERVER).decision
        if decision is Decision.DROP:
            return await handler(request)
        if parent is not None and get_current_span(parent).get_span_context().is_valid:
            return await official(request, handler)  # the parent's trace id is the span's
        token = _drawn_trace_id.set(trace_id)
        try:
            return await official(request, handler)
        finally:
            _drawn_trace_id.reset(token)

    return gate


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
