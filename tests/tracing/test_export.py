"""Tracing turned on by the settings alone: spans reach an OTLP/HTTP collector."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from jangteo.app import create_app
from server.settings import Settings
from tests.support import Client

AppClient = Callable[..., Awaitable[Client]]
SERVER = Span.SpanKind.SPAN_KIND_SERVER


class Collector(ThreadingHTTPServer):
    """A collector's OTLP/HTTP trace endpoint, keeping what it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.requests: list[ExportTraceServiceRequest] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Receiver(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


async def test_spans_are_exported_over_otlp_when_an_endpoint_is_set(
    collector: Collector, aiohttp_client: AppClient, settings: Settings
) -> None:
    traced = settings.replace(otel_endpoint=collector.url, otel_service_name="jangteo-test")
    client = await aiohttp_client(create_app(traced))
    response = await client.get("/api/v1/listings?region=seoul-mapo")
    assert response.status == 200, await response.text()
    await client.close()  # the app's provider sends what it holds as the app stops

    spans = [
        (resource.resource, span)
        for request in collector.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    servers = [(resource, span) for resource, span in spans if span.kind == SERVER]
    assert len(servers) == 1, [span.name for _, span in spans]
    resource, server = servers[0]
    assert server.name.startswith("GET")
    names = {attribute.key: attribute.value.string_value for attribute in resource.attributes}
    assert names["service.name"] == "jangteo-test"
    # The request's statements are spans of its trace.
    assert any(
        span.trace_id == server.trace_id and span.span_id != server.span_id for _, span in spans
    )
