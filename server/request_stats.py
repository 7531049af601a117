"""Request latency and counts by route, and cache outcomes, kept where the event loop can
update them cheaply.

Every request updates a histogram and a counter, every cache lookup a counter.
prometheus_client's own metrics take a lock on each update (they may be shared between
threads), which showed up as a sizeable share of a cached read's time. Here one event loop
is the only writer, so plain lists and dicts suffice; a collector turns them into the same
Prometheus families when scraped (without the ``_created`` samples).
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


class RouteStats:
    """One route and method's latency histogram and response counts by status."""

    __slots__ = ("bounds", "buckets", "statuses")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets: list[float] = [0] * (len(bounds) + 2)  # per bucket (not cumulative), sum
        self.statuses: dict[int, int] = {}

    def observe(self, status: int, seconds: float) -> None:
        buckets = self.buckets
        buckets[bisect_left(self.bounds, seconds)] += 1  # the first bucket with le >= seconds
        buckets[-1] += seconds
        self.statuses[status] = self.statuses.get(status, 0) + 1


class RequestStats(Collector):
    """``jangteo_http_request_duration_seconds`` and ``jangteo_http_requests_total``."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        # As prometheus_client writes them: 0.001, 2.5, 5.0
        self.labels = [repr(float(bound)) for bound in self.bounds] + ["+Inf"]
        self._routes: dict[tuple[str, str], RouteStats] = {}

    def route(self, method: str, route: str) -> RouteStats:
        """The stats of one route, to observe without looking them up each time."""
        found = self._routes.get((method, route))
        if found is None:
            found = self._routes[(method, route)] = RouteStats(self.bounds)
        return found

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.route(method, route).observe(status, seconds)

    def collect(self) -> Iterator[Metric]:
        durations = HistogramMetricFamily(
            DURATION_NAME, "HTTP request latency by route", labels=["method", "route"]
        )
        counts = CounterMetricFamily(
            REQUESTS_NAME,
            "HTTP responses by route and status",
            labels=["method", "route", "status"],
        )
        for (method, route), stats in self._routes.items():
            cumulative = list(accumulate(stats.buckets[:-1]))
            durations.add_metric(
                [method, route], list(zip(self.labels, cumulative, strict=True)), stats.buckets[-1]
            )
            for status, value in stats.statuses.items():
                counts.add_metric([method, route, str(status)], value)
        yield durations
        yield counts


class LoopCount:
    """One labelled child of a ``LoopCounter``: ``inc()`` as prometheus_client's."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class LoopCounter(Collector):
    """A labelled counter (``name_total``) that only the event loop updates."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], LoopCount] = {}

    def labels(self, *values: str) -> LoopCount:
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = LoopCount()
        return found

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        yield family
