"""Prometheus metrics of one process, in a registry of its own (one per app)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Info, generate_latest

from server.gc_pauses import GcPauses
from server.request_stats import LoopCounter, RequestStats
from server.settings import PURCHASE_STRATEGIES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The metrics jangteo records; each app owns an instance, so tests never share one."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Workers of `jangteo serve --workers N` share a port, so a scrape reaches one of
        # them: the pid says which one answered.
        Info(
            "jangteo_process", "The process that answered this scrape", registry=self.registry
        ).info({"pid": str(os.getpid())})
        self.request_stats = RequestStats(LATENCY_BUCKETS)
        self.registry.register(self.request_stats)
        self.gc_pauses = GcPauses()  # fed while the app runs (``watch_gc``)
        self.registry.register(self.gc_pauses)
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

        # Counted on every cached read, so without prometheus_client's lock (request_stats.py).
        self.cache = LoopCounter(
            "jangteo_cache_lookups",
            "Cache lookups by kind and outcome (local, hit, miss = rebuilt here, waited, bypass)",
            ["kind", "outcome"],
        )
        self.registry.register(self.cache)
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
        # Every strategy's series from the start (at 0): a dashboard compares them, and a
        # rate() over a series that first appears at 1 misses that first retry.
        for strategy in PURCHASE_STRATEGIES:
            self.purchase_retries.labels(strategy)
        self.transaction_retries = Counter(
            "jangteo_transaction_retries",
            "Transactions run again after a deadlock or serialization failure",
            ["reason"],
            registry=self.registry,
        )

    def transaction_retried(self, reason: str) -> None:
        self.transaction_retries.labels(reason).inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.request_stats.observe(method, route, status, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
