"""Fixtures shared by the realtime tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from realtime import relay as relay_module
from tests.realtime.relay_support import TIMEOUT, Relays


@pytest.fixture
async def relays(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Relays]:
    """Relays on the test database, each publishing to a bus of its own; stopped after."""
    monkeypatch.setattr(relay_module, "FLUSH_TIMEOUT_S", 100 * TIMEOUT)
    relays = Relays(database_url)
    yield relays
    await relays.close()
