"""How long this process's garbage collections stop its event loop, by generation.

A collection runs inside whatever allocation crossed its threshold and nothing else runs
meanwhile: no socket is read or written. In a worker holding tens of thousands of sockets
a young collection scans the objects renewed by every message (each socket's read wait,
its heartbeat timers) and a full one scans everything, so pauses are what an operator
looks at first when a tail latency jumps. ``gc.callbacks`` reports each collection's start
and end; the pause is counted as ``jangteo_gc_pause_seconds{generation}``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from server.request_stats import LoopHistogram, bucket_labels

NAME = "jangteo_gc_pause_seconds"
GENERATIONS = 3
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GcPauses(Collector):
    """A histogram of collection pauses per generation, fed by ``gc.callbacks`` while
    installed (one app's lifetime: tests run many apps in one process)."""

    def __init__(self, buckets: Sequence[float] = PAUSE_BUCKETS) -> None:
        bounds = tuple(sorted(buckets))
        self.labels = bucket_labels(bounds)
        self.generations = [LoopHistogram(bounds) for _ in range(GENERATIONS)]
        self._started = 0.0

    def install(self) -> None:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.generations[info["generation"]].observe(time.perf_counter() - self._started)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            NAME, "Garbage collection pauses of this process by generation", labels=["generation"]
        )
        for generation, histogram in enumerate(self.generations):
            histogram.add_to(family, [str(generation)], self.labels)
        yield family
