"""The optimistic strategy runs the whole transaction again after a lost version race."""

from __future__ import annotations

import pytest

from server.metrics import Metrics
from server.orders import purchase
from server.orders.errors import InsufficientStock
from server.orders.purchase import OPTIMISTIC_ATTEMPTS, VersionMoved, with_optimistic_retries


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(purchase, "OPTIMISTIC_BACKOFF_S", 0.0)


def _retries(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value(
        "jangteo_purchase_retries_total", {"strategy": "optimistic"}
    )


async def test_a_lost_race_is_run_again_until_it_wins() -> None:
    metrics = Metrics()
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls))
        if len(calls) < 3:
            raise VersionMoved()
        return "paid"

    assert await with_optimistic_retries(attempt, metrics) == "paid"
    assert len(calls) == 3
    assert _retries(metrics) == 2


async def test_it_gives_up_with_a_conflict_after_the_last_attempt() -> None:
    metrics = Metrics()
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls))
        raise VersionMoved()

    with pytest.raises(VersionMoved) as raised:
        await with_optimistic_retries(attempt, metrics)
    assert raised.value.status == 409
    assert raised.value.slug == "purchase-conflict"
    assert len(calls) == OPTIMISTIC_ATTEMPTS
    assert _retries(metrics) == OPTIMISTIC_ATTEMPTS - 1


async def test_other_refusals_are_not_retried() -> None:
    metrics = Metrics()
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls))
        raise InsufficientStock()

    with pytest.raises(InsufficientStock):
        await with_optimistic_retries(attempt, metrics)
    assert calls == [0]
    assert _retries(metrics) is None
