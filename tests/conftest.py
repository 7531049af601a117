"""Real PostgreSQL and Redis for every test: a fresh database per run, cleaned after each test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from db.migrate import migrate
from jangteo.app import create_app
from server.embedded.process import free_port
from server.embedded.redis import EmbeddedRedis
from server.embedded.stack import EmbeddedStack
from server.settings import Settings
from tests import support
from tests.support import (
    Client,
    ServerProcess,
    empty_state,
    make_settings,
    two_server_processes,
)

# Tests use a Redis database number of their own (never 0, which `make run` uses), picked
# per run so that two suites running at once on one stack rarely flush each other's keys.
TEST_REDIS_DB = 1 + os.getpid() % 15


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    """The PostgreSQL and Redis the suite talks to: the URLs given, else the embedded stack.

    Embedded services this run started are stopped at its end; ones already running stay.
    """
    env = Settings.from_env()
    if env.database_url and env.redis_url:
        yield env.database_url, env.redis_url
        return
    urls, stops = EmbeddedStack(env.data_dir).start_owned()
    try:
        yield env.database_url or urls.database_url, env.redis_url or urls.redis_url
    finally:
        for stop in stops:
            stop()


@pytest.fixture(scope="session")
def database_url(service_urls: tuple[str, str]) -> Iterator[str]:
    """A database of this run's own, migrated once, dropped at the end."""
    import asyncio

    admin_url = service_urls[0]
    name = f"jangteo_test_{os.getpid()}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    url = _with_path(admin_url, f"/{name}")
    asyncio.run(migrate(url))
    yield url
    asyncio.run(drop())


@pytest.fixture(scope="session")
def redis_url(service_urls: tuple[str, str]) -> str:
    return _with_path(service_urls[1], f"/{TEST_REDIS_DB}")


@pytest.fixture(autouse=True)
async def clean_state(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Empty every table and the test Redis database after each test that used them."""
    if "database_url" not in request.fixturenames:
        yield
        return
    # Looked up before the test runs: pytest refuses new fixtures during teardown.
    database = request.getfixturevalue("database_url")
    redis_db_url = request.getfixturevalue("redis_url")
    yield
    await empty_state(database, redis_db_url)


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url)


ClientFactory = Callable[[Settings], Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: Callable[..., Awaitable[Client]]) -> ClientFactory:
    """Start the real app with the given settings and return a client for it."""

    async def factory(app_settings: Settings) -> Client:
        return await aiohttp_client(create_app(app_settings))

    return factory


@pytest.fixture
async def client(make_client: ClientFactory, settings: Settings) -> Client:
    return await make_client(settings)


@pytest.fixture
async def empty_database(service_urls: tuple[str, str]) -> AsyncIterator[str]:
    """A brand-new database, dropped afterwards."""
    admin_url = service_urls[0]
    name = f"jangteo_migrate_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for checking what the app wrote."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def server_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The environment of a `jangteo serve` child process on this run's database and Redis."""
    return support.server_env(database_url, redis_url)


@pytest.fixture
def two_servers(server_env: dict[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two instances sharing one PostgreSQL and one Redis, as behind a load balancer."""
    with two_server_processes(server_env) as pair:
        yield pair


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, so stopping or pausing it disturbs nothing else.

    Its files are not under tmp_path: a pytest run starting elsewhere on the machine may
    prune older numbered tmp directories, and a server whose files vanished mid-test
    cannot be started again.
    """
    directory = Path(tempfile.mkdtemp(prefix="jangteo-test-redis-"))
    server = EmbeddedRedis(directory / "redis", free_port())
    try:
        server.ensure_running()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
