"""Request latency and counts by route, kept where the event loop can update them cheaply.

Every request updates a histogram and a counter. prometheus_client's own metrics take a
lock on each update (they may be shared between threads), which showed up as a sizeable
share of a cached read's time. Here one event loop is the only writer, so plain lists and
dicts suffice; a collector turns them into the same Prometheus families when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

DURATION_NAME = "jangteo_http_request_duration_seconds"
REQUESTS_NAME = "jangteo_http_requests"


class RequestStats(Collector):
    """``jangteo_http_request_duration_seconds`` and ``jangteo_http_requests_total``."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        # As prometheus_client writes them: 0.001, 2.5, 5.0
        self.labels = [repr(float(bound)) for bound in self.bounds] + ["+Inf"]
        # (method, route) -> observations per bucket (not cumulative), then the sum
        self._durations: dict[tuple[str, str], list[float]] = {}
        self._counts: dict[tuple[str, str, str], int] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        entry = self._durations.get((method, route))
        if entry is None:
            entry = self._durations[(method, route)] = [0] * (len(self.bounds) + 2)
        entry[bisect_left(self.bounds, seconds)] += 1  # the first bucket with le >= seconds
        entry[-1] += seconds
        key = (method, route, str(status))
        self._counts[key] = self._counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        durations = HistogramMetricFamily(
            DURATION_NAME, "HTTP request latency by route", labels=["method", "route"]
        )
        for (method, route), entry in self._durations.items():
            cumulative = list(accumulate(entry[:-1]))
            durations.add_metric(
                [method, route], list(zip(self.labels, cumulative, strict=True)), entry[-1]
            )
        yield durations
        counts = CounterMetricFamily(
            REQUESTS_NAME,
            "HTTP responses by route and status",
            labels=["method", "route", "status"],
        )
        for labels, value in self._counts.items():
            counts.add_metric(list(labels), value)
        yield counts
