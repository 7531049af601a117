"""Fixtures of the system tests: pgbouncer in front of the suite's PostgreSQL, and two
instances shared by the tests of a module."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.embedded.pgbouncer import EmbeddedPgbouncer
from server.embedded.process import free_port
from tests import support
from tests.support import ServerProcess, empty_state, two_server_processes


@pytest.fixture(scope="session")
def pgbouncer(database_url: str) -> Iterator[EmbeddedPgbouncer]:
    """pgbouncer in session mode in front of this run's database; ``.url`` reaches it.

    Its files are not under tmp_path: a pytest run starting elsewhere on the machine may
    prune older numbered tmp directories while it runs.
    """
    directory = Path(tempfile.mkdtemp(prefix="jangteo-test-pgbouncer-"))
    bouncer = EmbeddedPgbouncer(directory, free_port(), database_url)
    try:
        bouncer.ensure_running()
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def emptied_after_module(database_url: str, redis_url: str) -> Iterator[None]:
    """The database and Redis emptied once, after the module, instead of after each test.

    A module whose tests share instances asks for it by overriding ``clean_state``: the
    cleanup between tests restarts the tables' sequences, so the next test's rows would get
    ids that instances still running have cached or subscribed to under an earlier test.
    Its tests make their own accounts, listings and channels, and assert on those alone.
    """
    yield
    asyncio.run(empty_state(database_url, redis_url))


@pytest.fixture(scope="module")
def shared_servers(
    emptied_after_module: None, database_url: str, redis_url: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two instances as behind a load balancer, started once for the module's tests that
    only read and write their own data through them (starting a pair costs seconds).
    Stopped before the module's state is emptied."""
    with two_server_processes(support.server_env(database_url, redis_url)) as pair:
        yield pair
