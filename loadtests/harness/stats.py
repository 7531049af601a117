"""The one percentile definition of every figure the benchmarks and the load test report.

A percentile is the nearest rank: the q-quantile of n samples is the smallest value with
at least ``ceil(q * n)`` samples at or below it (so p50 of 1..10 is 5, p99 of 100 samples is
the 99th smallest). Samples in seconds are reported in milliseconds; a histogram of
``{value: count}`` (the load clients' 1-ms bins, locust's rounded milliseconds) gives the
same answer as the samples it counts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

Histogram = Mapping[int, int] | Mapping[float, int]

POINTS = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("p99_9", 0.999))


def percentile(histogram: Histogram, q: float) -> float | None:
    """The q-quantile (0..1) of ``{value: count}`` by nearest rank; None when it is empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value, count in sorted(histogram.items()):
        seen += count
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def summary(histogram: Histogram, overflow: int = 0) -> dict[str, float | None]:
    """p50/p90/p95/p99/p99.9, max, mean and the count of a histogram (values as they are)."""
    total = sum(histogram.values())
    figures: dict[str, float | None] = {name: percentile(histogram, q) for name, q in POINTS}
    figures["max"] = float(max(histogram)) if histogram else None
    mean = sum(value * n for value, n in histogram.items()) / total if total else None
    figures["mean"] = None if mean is None else round(mean, 2)
    figures["samples"] = float(total)
    if overflow:
        figures["over_histogram"] = float(overflow)
    return figures


def summary_ms(seconds: Iterable[float]) -> dict[str, float | None]:
    """``summary`` of samples in seconds, in milliseconds (to 0.01 ms)."""
    return summary(Counter(round(value * 1000, 2) for value in seconds))


def bucket_quantile(cumulative: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile, in ms, estimated from a Prometheus histogram's cumulative buckets.

    Not a percentile of samples: the server exports only bucket counts, so this is
    Prometheus' own ``histogram_quantile`` (linear within the bucket holding the rank).
    """
    total = cumulative[-1][1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return round(lower_bound * 1000, 3)  # at least the largest finite bound
            span = count - lower_count
            fraction = (rank - lower_count) / span if span else 1.0
            return round((lower_bound + (bound - lower_bound) * fraction) * 1000, 3)
        lower_bound, lower_count = bound, count
    return None
