"""Two real instances under a little traffic, scraped by a real Prometheus, for the module
that checks every dashboard query and alert expression against what they export."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from tests import support
from tests.observability.prometheus_server import Prometheus
from tests.observability.traffic import run_traffic
from tests.support import two_server_processes

WAIT_TIMEOUT_S = 60.0
SCRAPES_AFTER_TRAFFIC = 2


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.2)


def scraped_since(prometheus: Prometheus, since: float, scrapes: int) -> Callable[[], bool]:
    """Whether every target was scraped ``scrapes`` times since ``since`` (Prometheus's
    own samples of ``up`` say so)."""

    def condition() -> bool:
        window = max(1, int(time.time() - since))
        counts = prometheus.query(f'count_over_time(up{{job="jangteo"}}[{window}s])')
        return len(counts) == 2 and all(float(c["value"][1]) >= scrapes for c in counts)

    return condition


def rules_evaluated_since(prometheus: Prometheus, since: float) -> Callable[[], bool]:
    def condition() -> bool:
        rules = prometheus.rules()
        return bool(rules) and all(
            rule["lastEvaluation"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since + 1))
            for rule in rules
        )

    return condition


@pytest.fixture(scope="module")
def prometheus(database_url: str, redis_url: str) -> Iterator[Prometheus]:
    """Prometheus scraping two instances every second, once their traffic is in it."""
    env = support.server_env(database_url, redis_url)
    with two_server_processes(env) as (first, second):
        targets = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        server = Prometheus(targets).start()
        try:
            asyncio.run(run_traffic(first, second, redis_url))
            done = time.time()
            wait_until(
                scraped_since(server, done, SCRAPES_AFTER_TRAFFIC),
                "both instances were scraped twice after the traffic",
            )
            wait_until(rules_evaluated_since(server, done), "every rule was evaluated since")
            yield server
        finally:
            server.stop()
