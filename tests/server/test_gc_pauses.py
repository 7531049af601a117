"""Garbage collection pauses are counted per generation while an app runs
(``server/gc_pauses.py``), and exported as a Prometheus histogram."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from server import keys
from server.gc_pauses import NAME, GcPauses
from tests.support import Client


@pytest.fixture
def no_automatic_collections() -> Iterator[None]:
    """Only the collections a test runs itself happen meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


def counts(text: str) -> dict[str, float]:
    """``{generation: count}`` from an exposition."""
    found = re.findall(rf'^{NAME}_count{{generation="(\d)"}} (\S+)$', text, re.MULTILINE)
    return {generation: float(value) for generation, value in found}


def test_each_collection_is_counted_in_its_generation(no_automatic_collections: None) -> None:
    pauses = GcPauses()
    registry = CollectorRegistry()
    registry.register(pauses)
    pauses.install()
    try:
        for generation in (0, 1, 1, 2, 2, 2):
            gc.collect(generation)
    finally:
        pauses.uninstall()
    gc.collect()  # not counted: uninstalled
    text = generate_latest(registry).decode()
    assert counts(text) == {"0": 1.0, "1": 2.0, "2": 3.0}
    # Buckets are cumulative and end at the count; the sum is the time spent.
    full = re.findall(rf'^{NAME}_bucket{{generation="2",le="([^"]+)"}} (\S+)$', text, re.M)
    values = [float(value) for _, value in full]
    assert full[-1] == ("+Inf", "3.0") and values == sorted(values)
    total = re.search(rf'^{NAME}_sum{{generation="2"}} (\S+)$', text, re.M)
    assert total is not None and float(total.group(1)) > 0


def test_installing_twice_counts_once(no_automatic_collections: None) -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()
    try:
        gc.collect(0)
    finally:
        pauses.uninstall()
    assert pauses._on_collection not in gc.callbacks
    buckets = pauses.generations[0].buckets[:-1]
    assert buckets.count(1.0) == 1 and sum(buckets) == 1


async def test_a_running_app_exports_its_pauses_and_stops_counting_when_cleaned_up(
    client: Client, no_automatic_collections: None
) -> None:
    before = counts(await (await client.get("/metrics")).text())
    gc.collect(2)
    after = counts(await (await client.get("/metrics")).text())
    assert after["2"] == before["2"] + 1
    assert client.app is not None
    pauses = client.app[keys.metrics_key].gc_pauses
    assert pauses._on_collection in gc.callbacks
    await client.close()
    assert pauses._on_collection not in gc.callbacks
