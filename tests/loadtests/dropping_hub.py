"""``jangteo`` serving with a hub that loses events on purpose, so that a test can prove the
load test's audit notices: ``python -m tests.loadtests.dropping_hub serve --port N``.

One process only: worker processes (``--workers``) would import the real hub afresh.
"""

from __future__ import annotations

from unittest import mock

from jangteo.cli import main
from realtime import setup
from realtime.event import Delivery
from realtime.hub import Feed, Hub


class DroppingHub(Hub):
    """Every tenth event this hub delivers reaches no socket, yet counts as delivered (the
    feed's offset moves on), so no gap fill repairs it: a loss only the clients can see."""

    delivered = 0

    def _deliver(self, feed: Feed, event: Delivery) -> None:
        self.delivered += 1
        if self.delivered % 10 == 0:
            feed.last = event.offset
            return
        super()._deliver(feed, event)


if __name__ == "__main__":
    with mock.patch.object(setup, "Hub", DroppingHub):  # the realtime context's hub
        main()
