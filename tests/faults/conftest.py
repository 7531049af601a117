"""Dependencies of a fault test's own, so that breaking them disturbs no other suite.

The shared PostgreSQL and Redis serve every other test running at the same time: a
fault test never stops, pauses, black-holes or disconnects them. It stops its own.

Their data lives in directories of their own, not under pytest's tmp_path: a pytest run
starting elsewhere on the machine may prune older numbered tmp directories, and a
cluster whose files vanish cannot be started again.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from db.migrate import migrate
from loadtests.chaos.proxy import TcpProxy
from server.embedded.postgres import EmbeddedPostgres
from server.embedded.process import free_port
from server.embedded.redis import EmbeddedRedis

_databases = itertools.count(1)


def _scratch(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"jangteo-faults-{name}-"))


@pytest.fixture(scope="session")
def own_postgres_server() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL cluster of the fault tests' own (initdb once per run)."""
    directory = _scratch("postgres")
    server = EmbeddedPostgres(directory / "postgres", free_port())
    try:
        server.ensure_running()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def own_postgres(own_postgres_server: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, migrated database on the fault tests' own PostgreSQL (started if a test
    stopped it); its URL."""
    own_postgres_server.ensure_running()
    name = f"faults_{next(_databases)}"
    admin = own_postgres_server.url

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(migrate(url))
    yield url
    own_postgres_server.ensure_running()  # a test that stopped it may have failed midway


@pytest.fixture
def redis_proxy(own_redis: EmbeddedRedis) -> Iterator[TcpProxy]:
    """The test's own Redis behind a proxy the test can black-hole."""
    proxy = TcpProxy(own_redis.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def postgres_proxy(own_postgres_server: EmbeddedPostgres) -> Iterator[TcpProxy]:
    """The fault tests' own PostgreSQL behind a proxy the test can black-hole."""
    proxy = TcpProxy(own_postgres_server.port).start()
    yield proxy
    proxy.stop()
