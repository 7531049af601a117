"""Prometheus metrics of one process, in a registry of its own (one per app)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The metrics jangteo records; each app owns an instance, so tests never share one."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_duration = Histogram(
            "jangteo_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "jangteo_http_requests",
            "HTTP responses by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "jangteo_rate_limited",
            "Requests refused by a rate limit",
            ["limit"],
            registry=self.registry,
        )
        self.dependency_errors = Counter(
            "jangteo_dependency_errors",
            "Requests answered 503 because a dependency failed",
            ["dependency"],
            registry=self.registry,
        )

        self.cache = Counter(
            "jangteo_cache_lookups",
            "Cache lookups by kind and outcome (local, hit, miss = rebuilt here, waited, bypass)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.unconfirmed_invalidations = Counter(
            "jangteo_cache_unconfirmed_invalidations",
            "Cache invalidations some subscriber did not confirm in time (the writer then"
            " disconnected it and waited out its lease)",
            registry=self.registry,
        )
        self.failed_invalidations = Counter(
            "jangteo_cache_failed_invalidations",
            "Cache invalidations that could not reach Redis after a committed change",
            registry=self.registry,
        )

        self.purchases = Counter(
            "jangteo_purchases",
            "Purchase requests by strategy and outcome (paid, replayed, or a problem type)",
            ["strategy", "outcome"],
            registry=self.registry,
        )
        self.purchase_retries = Counter(
            "jangteo_purchase_retries",
            "Optimistic purchase attempts that lost a version race and retried",
            ["strategy"],
            registry=self.registry,
        )
        self.transaction_retries = Counter(
            "jangteo_transaction_retries",
            "Transactions run again after a deadlock or serialization failure",
            ["reason"],
            registry=self.registry,
        )

        # Label children looked up once per (method, route[, status]), not on every request.
        self._durations: dict[tuple[str, str], Any] = {}
        self._counts: dict[tuple[str, str, int], Any] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        duration = self._durations.get((method, route))
        if duration is None:
            duration = self._durations[(method, route)] = self.request_duration.labels(
                method, route
            )
        duration.observe(seconds)
        count = self._counts.get((method, route, status))
        if count is None:
            count = self._counts[(method, route, status)] = self.requests.labels(
                method, route, str(status)
            )
        count.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
