"""Prometheus metrics of the event streams, beside the sockets' ones (``metrics.py``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Gauge(
            "jangteo_sse_streams", "Open Server-Sent Events streams", registry=registry
        )
        self.closes = Counter(
            "jangteo_sse_closes", "Event streams ended by the server, by reason",
            ["reason"], registry=registry,
        )  # fmt: skip
