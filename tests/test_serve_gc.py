"""A served worker's garbage collector (jangteo/serve.py): what exists once the app has
started is frozen out of collections, and collections run less often, so that a storm of
new sockets is not paused by full collections scanning everything."""

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


async def test_a_started_worker_freezes_its_objects_and_collects_less_often(
    restored_gc: None,
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    await _tune_gc(web.Application())
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700 and GC_THRESHOLDS[2] > 10  # CPython's defaults: 700, 10, 10
