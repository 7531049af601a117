"""Tracing on, into memory: the SDK's in-memory exporter behind a real provider."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.tracing import tracer_provider


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A provider sampling as the server's does (every request), exporting each span as it
    ends; shared by every app a test starts, as the apps of one process would share it."""
    provider = tracer_provider(1.0, SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()
