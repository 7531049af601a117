"""Entry point for locust: ``locust -f loadtests/locustfile.py`` (from the repository root).

The users live in ``loadtests/scenarios/``; settings come from ``JANGTEO_LOAD_*``
(``loadtests/config.py``).
"""

from __future__ import annotations

from typing import Any

from locust import events
from locust.argument_parser import LocustArgumentParser

from loadtests.scenarios import Account, Browser, Buyer, Chatter, Seller, Watcher
from loadtests.scenarios.common import CONFIG

__all__ = ["Account", "Browser", "Buyer", "Chatter", "Seller", "Watcher"]


def _defaults_from_config(parser: LocustArgumentParser, **_: Any) -> None:
    """``-u`` and ``-r`` default to ``JANGTEO_LOAD_USERS`` and ``JANGTEO_LOAD_SPAWN_RATE``."""
    parser.set_defaults(num_users=CONFIG.users, spawn_rate=CONFIG.spawn_rate)


events.init_command_line_parser.add_listener(_defaults_from_config)  # type: ignore[no-untyped-call]
