"""RequestStats and LoopCounter export exactly what prometheus_client's own Histogram and
Counter would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from server.metrics import LATENCY_BUCKETS
from server.request_stats import DURATION_NAME, REQUESTS_NAME, LoopCounter, RequestStats


def _samples(text: bytes) -> set[str]:
    """The sample lines (no comments, no _created timestamps), sums rounded."""
    lines = set()
    for line in text.decode().splitlines():
        if line.startswith("#") or "_created" in line:
            continue
        name, value = line.rsplit(" ", 1)
        lines.add(f"{name} {round(float(value), 9)}")
    return lines


def test_the_same_observations_give_the_same_samples_as_prometheus_client() -> None:
    reference = CollectorRegistry()
    histogram = Histogram(
        DURATION_NAME, "h", ["method", "route"], buckets=LATENCY_BUCKETS, registry=reference
    )
    counter = Counter(REQUESTS_NAME, "c", ["method", "route", "status"], registry=reference)
    ours = CollectorRegistry()
    stats = RequestStats(LATENCY_BUCKETS)
    ours.register(stats)
    chosen = random.Random(7)
    # Bucket bounds themselves, values just around them, zero and far beyond the last.
    edges = [b for bound in LATENCY_BUCKETS for b in (bound, bound * 0.999, bound * 1.001)]
    values = [*edges, 0.0, 60.0, *(chosen.expovariate(20) for _ in range(500))]
    for seconds in values:
        method, route = chosen.choice([("GET", "/a"), ("POST", "/b/{id}")])
        status = chosen.choice([200, 404, 503])
        histogram.labels(method, route).observe(seconds)
        counter.labels(method, route, str(status)).inc()
        stats.observe(method, route, status, seconds)
    assert _samples(generate_latest(ours)) == _samples(generate_latest(reference))


def test_nothing_observed_exports_empty_families() -> None:
    registry = CollectorRegistry()
    registry.register(RequestStats(LATENCY_BUCKETS))
    text = generate_latest(registry).decode()
    assert f"# TYPE {DURATION_NAME} histogram" in text
    assert f"# TYPE {REQUESTS_NAME}_total counter" in text
    assert "_bucket" not in text


def test_a_loop_counter_gives_the_samples_of_a_prometheus_counter() -> None:
    reference = CollectorRegistry()
    counter = Counter("jangteo_cache_lookups", "c", ["kind", "outcome"], registry=reference)
    ours = CollectorRegistry()
    loop_counter = LoopCounter("jangteo_cache_lookups", "c", ["kind", "outcome"])
    ours.register(loop_counter)
    chosen = random.Random(11)
    for _ in range(300):
        labels = chosen.choice([("detail", "local"), ("detail", "hit"), ("feed", "miss")])
        amount = chosen.choice([1, 1, 2.5])
        counter.labels(*labels).inc(amount)
        loop_counter.labels(*labels).inc(amount)
    assert _samples(generate_latest(ours)) == _samples(generate_latest(reference))
    assert "# TYPE jangteo_cache_lookups_total counter" in generate_latest(ours).decode()
