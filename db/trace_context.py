"""The trace context an outbox row carries: the W3C ``traceparent`` of the current span.

The change's transaction stores it with its events, so that the relay's publish and each
instance's delivery can link to the trace of the request that made the change. With
tracing off there is no current span, and nothing is stored.
"""

from __future__ import annotations

from opentelemetry import trace

_VERSION = "00"


def current_traceparent() -> str | None:
    """The current span's ``traceparent``, or None when there is no sampled span (tracing
    off, or this trace not sampled): only a trace that is recorded is worth linking to."""
    context = trace.get_current_span().get_span_context()
    if not context.trace_flags.sampled:
        return None
    return f"{_VERSION}-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def span_context_of(traceparent: str) -> trace.SpanContext | None:
    """The remote span a stored ``traceparent`` names; None for anything malformed."""
    parts = traceparent.split("-")
    if len(parts) != 4 or parts[0] != _VERSION:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    context = trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(flags))
    return context if context.is_valid else None
