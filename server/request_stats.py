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


def bucket_labels(bounds: Sequence[float]) -> list[str]:
    """Bucket bounds as prometheus_client writes them (0.001, 2.5, 5.0), then +Inf."""
    return [repr(float(bound)) for bound in bounds] + ["+Inf"]


class LoopHistogram:
    """One histogram's count per bucket (not cumulative) and its sum, updated without a
    lock by the only code that observes it."""

    __slots__ = ("bounds", "buckets")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets: list[float] = [0] * (len(bounds) + 2)  # per bucket, then the sum

    def observe(self, seconds: float) -> None:
        buckets = self.buckets
        buckets[bisect_left(self.bounds, seconds)] += 1  # the first bucket with le >= seconds
        buckets[-1] += seconds

    def add_to(self, family: HistogramMetricFamily, values: list[str], labels: list[str]) -> None:
        """Add this histogram to ``family`` as its series ``values`` (``labels``: the
        buckets' ``le``, from ``bucket_labels``)."""
        cumulative = list(accumulate(self.buckets[:-1]))
        family.add_metric(values, list(zip(labels, cumulative, strict=True)), self.buckets[-1])


class RouteStats(LoopHistogram):
    """One route and method's latency histogram and response counts by status."""

    __slots__ = ("statuses",)

    def __init__(self, bounds: tuple[float, ...]) -> None:
        super().__init__(bounds)
        self.statuses: dict[int, int] = {}

    def count(self, status: int, seconds: float) -> None:
        self.observe(seconds)
        self.statuses[status] = self.statuses.get(status, 0) + 1


class RequestStats(Collector):
    """``jangteo_http_request_duration_seconds`` and ``jangteo_http_requests_total``."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.labels = bucket_labels(self.bounds)
        self._routes: dict[tuple[str, str], RouteStats] = {}

    def route(self, method: str, route: str) -> RouteStats:
        """The stats of one route, to observe without looking them up each time."""
        found = self._routes.get((method, route))
        if found is None:
            found = self._routes[(method, route)] = RouteStats(self.bounds)
        return found

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.route(method, route).count(status, seconds)

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
            stats.add_to(durations, [method, route], self.labels)
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
