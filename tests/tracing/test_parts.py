"""The parts on their own: the stored context, the broker's trace mark, sampling, settings."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, SpanKind

from db.trace_context import current_traceparent, span_context_of
from realtime.broker import encode_message, encode_traced
from realtime.event import Delivery
from realtime.frames import event_json
from server.settings import Settings, SettingsError
from server.tracing import RootSampler, tracer_provider_from

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_current_sampled_span_is_what_a_row_stores(provider: TracerProvider) -> None:
    assert current_traceparent() is None  # no span: tracing off, or outside any request
    with provider.get_tracer(__name__).start_as_current_span("request") as span:
        context = span.get_span_context()
        stored = current_traceparent()
    flags = context.trace_flags
    assert flags.sampled
    assert stored == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    assert span_context_of(stored) == trace.SpanContext(
        context.trace_id, context.span_id, True, flags
    )


def test_a_span_not_sampled_is_not_stored() -> None:
    unsampled = trace.SpanContext(1, 2, True, trace.TraceFlags(0))
    with trace.use_span(trace.NonRecordingSpan(unsampled)):
        assert current_traceparent() is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # unknown version
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # short trace id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333z-01",  # not hex
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # invalid trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # invalid span id
    ],
)
def test_a_malformed_context_links_to_nothing(text: str) -> None:
    assert span_context_of(text) is None


def test_the_trace_mark_is_taken_off_before_any_frame() -> None:
    json = event_json("listing:42", 1301, 1290, 1764590000123, "listing.updated", '{"id":42}')
    plain = Delivery.from_message("listing:42", encode_message(1301, 1290, json))
    traced = Delivery.from_message(
        "listing:42", encode_traced(TRACEPARENT, encode_message(1301, 1290, json))
    )
    assert plain.trace is None
    assert traced.trace == TRACEPARENT
    assert (traced.offset, traced.prev, traced.json, traced.frame) == (
        plain.offset,
        plain.prev,
        plain.json,
        plain.frame,
    )


@pytest.mark.parametrize("payload", [b"@", b"@" + TRACEPARENT.encode(), b"@x 1 0"])
def test_a_malformed_traced_message_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the hub logs and drops any ValueError
        Delivery.from_message("listing:42", payload)


def sampled(sampler: RootSampler, kind: SpanKind, links: list[Link] | None = None) -> bool:
    trace_id = 0xFFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF_FFFF  # above any ratio's bound but 1
    decision = sampler.should_sample(None, trace_id, "span", kind, links=links).decision
    return decision is Decision.RECORD_AND_SAMPLE


def test_roots_are_sampled_by_what_they_are() -> None:
    link = Link(trace.SpanContext(1, 2, True, trace.TraceFlags(1)))
    assert sampled(RootSampler(1.0), SpanKind.SERVER)
    assert not sampled(RootSampler(0.5), SpanKind.SERVER)  # this trace id is outside half
    assert sampled(RootSampler(0.0), SpanKind.PRODUCER, [link])  # links to a sampled change
    assert not sampled(RootSampler(1.0), SpanKind.CLIENT)  # a poll's statement, on its own


def test_tracing_is_off_unless_an_endpoint_is_named() -> None:
    assert Settings.from_env({}).otel_endpoint is None
    assert tracer_provider_from(Settings.from_env({})) is None
    settings = Settings.from_env(
        {
            "JANGTEO_OTEL_ENDPOINT": "http://collector:4318/v1/traces",
            "JANGTEO_OTEL_SERVICE_NAME": "jangteo-eu",
            "JANGTEO_OTEL_SAMPLE_RATIO": "0.25",
        }
    )
    provider = tracer_provider_from(settings)
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "jangteo-eu"
        assert "0.25" in provider.sampler.get_description()
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JANGTEO_OTEL_ENDPOINT", "collector:4318"),
        ("JANGTEO_OTEL_ENDPOINT", "ftp://collector/v1/traces"),
        ("JANGTEO_OTEL_SAMPLE_RATIO", "1.5"),
        ("JANGTEO_OTEL_SAMPLE_RATIO", "-0.1"),
        ("JANGTEO_OTEL_SAMPLE_RATIO", "half"),
    ],
)
def test_bad_tracing_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("/api/v1/ws?ticket=abc-123_XYZ", "/api/v1/ws?ticket=REDACTED"),
        ("http://h:1/api/v1/sse?channel=x&ticket=abc&since=3", None),
        ("/api/v1/listings?region=seoul-mapo", "/api/v1/listings?region=seoul-mapo"),
        ("/api/v1/listings?noticket=1", "/api/v1/listings?noticket=1"),
    ],
)
def test_a_ticket_in_a_url_never_leaves_the_process(
    provider: TracerProvider, exporter: InMemorySpanExporter, url: str, redacted: str | None
) -> None:
    tracer = provider.get_tracer(__name__)
    with tracer.start_as_current_span("GET", kind=SpanKind.SERVER, attributes={"http.url": url}):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    expected = redacted or "http://h:1/api/v1/sse?channel=x&ticket=REDACTED&since=3"
    assert span.attributes["http.url"] == expected
