"""Fixtures of the system tests: pgbouncer in front of the suite's PostgreSQL."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.embedded.pgbouncer import EmbeddedPgbouncer
from server.embedded.process import free_port


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
