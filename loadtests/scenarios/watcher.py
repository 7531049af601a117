"""Watcher: an open app, subscribed to its neighbourhood feed, a few listings and itself.

It subscribes to ``feed:{region}``, its own ``user:{id}``, two hot listings and up to two
listings from the feed, and records per channel the ``subscribed`` offset and every event
(offset, prev) it receives; the audit compares that with the event log. It keeps reading
``JANGTEO_LOAD_DRAIN`` seconds after the load stops, so that events committed before the
end have time to arrive.
"""

from __future__ import annotations

import random

from locust import task

from loadtests.scenarios.common import API, CONFIG, TIMEOUT, MarketUser, expect
from loadtests.scenarios.live import LiveSocket, live_socket
from loadtests.scenarios.market import HOT


class Watcher(MarketUser):
    weight = CONFIG.weights["watcher"]
    role = "watcher"

    live: LiveSocket | None = None
    watched: list[int]

    def on_start(self) -> None:
        super().on_start()
        others = self.others_listings()
        self.watched = random.sample(HOT, min(2, len(HOT))) + others[:2]
        channels = [f"feed:{CONFIG.region}", f"user:{self.user_id}"]
        self.live = live_socket(self, channels + [f"listing:{i}" for i in self.watched])

    def on_stop(self) -> None:
        if self.live is not None:
            self.live.close(CONFIG.drain)

    @task(3)
    def ping(self) -> None:
        assert self.live is not None
        if self.live.ensure():
            self.live.ping()

    @task(1)
    def look(self) -> None:
        """Open one of the watched listings, as the app would on a tap."""
        if not self.watched:
            return
        with self.client.get(
            f"{API}/listings/{random.choice(self.watched)}",
            name=f"{API}/listings/{{id}}",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            expect(response, 200, "id", "price")
