"""A served worker's garbage collector (jangteo/serve.py): what exists once the app has
started is frozen out of collections and full collections are rare, so that a storm of
new sockets is not paused by full collections scanning everything; the young
generations stay small, so that their pauses stay short."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from aiohttp import web

from jangteo.serve import GC_THRESHOLDS, _tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


async def test_a_started_worker_freezes_its_objects_and_rarely_collects_in_full(
    restored_gc: None,
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    await _tune_gc(web.Application())
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
    young, middle, full = GC_THRESHOLDS  # CPython's defaults: 700, 10, 10
    assert young * middle * full > 700 * 10 * 10 * 100  # allocations between full ones
    assert young * middle <= 10_000  # the most a middle collection scans
