"""The services under a benchmark, its fresh database, and the HTTP calls that set it up."""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from db.migrate import migrate
from loadtests.harness.processes import BenchError, Server, as_line, background, jangteo_command
from server.embedded.process import free_port
from server.embedded.redis_cluster import NODES, EmbeddedRedisCluster
from server.embedded.stack import EmbeddedStack

# Looks at a benchmark's running instances before they stop (their Redis connections, say).
Inspect = Callable[[Sequence[Server]], Awaitable[dict[str, Any]]]

PASSWORD = "bench-password-123"  # noqa: S105 - the throwaway benchmark accounts' password
JWT_SECRET = "bench-only-not-a-real-secret-0123456789abcdef"  # noqa: S105 - ditto


@dataclass(frozen=True, slots=True)
class Services:
    """PostgreSQL (a URL to create databases with) and Redis; embedded unless given."""

    admin_url: str
    redis_url: str
    embedded: bool
    data_dir: str


def services(env: Mapping[str, str] = os.environ) -> Services:
    """The caller's ``JANGTEO_DATABASE_URL``/``JANGTEO_REDIS_URL``, else the embedded stack's.

    The embedded services start under ``JANGTEO_DATA_DIR`` (default ``.data``) and keep
    running afterwards.
    """
    data_dir = env.get("JANGTEO_DATA_DIR", "").strip() or ".data"
    database_url = env.get("JANGTEO_DATABASE_URL", "").strip()
    redis_url = env.get("JANGTEO_REDIS_URL", "").strip()
    if database_url and redis_url:
        return Services(database_url, redis_url, False, data_dir)
    urls = EmbeddedStack(Path(data_dir)).start()
    return Services(
        database_url or urls.database_url, redis_url or urls.redis_url, not database_url, data_dir
    )


@contextmanager
def own_redis_cluster(directory: Path) -> Iterator[EmbeddedRedisCluster]:
    """A local Redis Cluster (three masters, three replicas, as ``EmbeddedStack`` starts
    one) of the benchmark's own under ``directory``, on fresh ports, stopped at the end:
    the suite's cluster tests kill masters and flush the shared one."""
    cluster = EmbeddedRedisCluster(directory, [(free_port(), free_port()) for _ in range(NODES)])
    try:
        cluster.ensure_running()
        yield cluster
    finally:
        cluster.stop()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection to ``url`` for the block, closed at its end."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def execute(url: str, *statements: str) -> None:
    """``statements`` one after another on one connection to ``url``."""
    async with connected(url) as conn:
        for statement in statements:
            await conn.execute(statement)


async def create_database(admin_url: str, name: str) -> str:
    """``name`` created afresh (dropped first if it exists) and migrated; its URL."""
    await execute(
        admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )
    url = with_database(admin_url, name)
    applied = await migrate(url)
    print(f"fresh database {name}: applied {', '.join(applied)}", flush=True)
    return url


@asynccontextmanager
async def fresh_database(admin_url: str, name: str, *, keep: bool = False) -> AsyncIterator[str]:
    """A migrated database of the benchmark's own; its URL. Dropped at the end unless
    ``keep``."""
    url = await create_database(admin_url, name)
    try:
        yield url
    finally:
        if not keep:
            await execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_note(name: str) -> str:
    return f"DROP/CREATE DATABASE {name}; db.migrate.migrate(url)"


def serve_settings(database_url: str, redis_url: str, **more: str) -> dict[str, str]:
    """``JANGTEO_*`` of a benchmark's jangteo: its database and Redis, a JWT secret of the
    benchmarks' own and access tokens living an hour (a benchmark signs up once), no rate
    limits, no access log, warnings only; ``more`` adds settings (``PG_POOL_MAX="8"``).

    The deployment is named after the database: benchmarks that share the Redis never
    hear each other's events or contend for each other's relay leadership."""
    deployment = urlsplit(database_url).path.strip("/").replace("_", "-")
    chosen = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "JWT_SECRET": JWT_SECRET}
    chosen |= {"DEPLOYMENT": deployment}
    chosen |= {"ACCESS_TOKEN_TTL": "3600", "RATE_LIMITS": "off", "ACCESS_LOG": "off"}
    chosen |= {"LOG_LEVEL": "WARNING", **more}
    return {f"JANGTEO_{name}": value for name, value in chosen.items()}


@contextmanager
def instances(
    names: Sequence[str],
    settings: Mapping[str, str],
    scratch: Path,
    record: dict[str, Any],
    *,
    workers: int = 1,
) -> Iterator[list[Server]]:
    """``jangteo serve`` once per name, ``workers`` processes each, on a port of its own,
    ready; ``settings`` (``JANGTEO_*``) are added to this process's environment.

    The command lines go to ``record[name]``, with URLs and secrets left out.
    """
    hidden = ("_URL", "_SECRET")
    shown = " ".join(f"{k}={'<hidden>' if k.endswith(hidden) else v}" for k, v in settings.items())
    more = ["--workers", str(workers)] if workers > 1 else []
    with ExitStack() as stack:
        servers = []
        for name in names:
            port = free_port()
            serve = jangteo_command("serve", "--host", "127.0.0.1", "--port", str(port), *more)
            record[name] = f"{shown} {as_line(serve)}"
            env = {**os.environ, **settings}
            log = scratch / f"{name}.log"
            servers.append(stack.enter_context(background(serve, env, port, log, name)))
            wait_ready(port, workers=workers)
        yield servers


@contextmanager
def bare_app(
    bodies: Mapping[str, bytes], scratch: Path, record: dict[str, Any], processes: int
) -> Iterator[Server]:
    """``loadtests.references.app`` answering each path with its body (the bytes jangteo
    sent, checked), its command line in ``record["baseline"]``."""
    port, routes = free_port(), []
    for path, body in bodies.items():
        file = scratch / f"{path.strip('/')}.json"
        file.write_bytes(body)
        routes += ["--route", f"{path}={file}"]
    module = "loadtests.references.app"
    command = [sys.executable, "-m", module, "--port", str(port), "--processes", str(processes)]
    record["baseline"] = as_line(command + routes)
    with background(command + routes, os.environ, port, scratch / "baseline.log") as server:
        wait_ready(port, next(iter(bodies)), workers=processes)
        for path, body in bodies.items():
            if fetch(port, path) != body:
                raise BenchError(f"the baseline's {path} bytes differ from jangteo's")
        yield server


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    want: int = 200,
) -> bytes:
    """One HTTP/1.1 request to 127.0.0.1:port (``body`` sent as JSON); the body of its
    answer, or BenchError unless it answered ``want``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = dict(headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        status, answer = response.status, response.read()
    finally:
        connection.close()
    if status != want:
        raise BenchError(f"{method} {path} on port {port} answered {status}: {answer[:500]!r}")
    return answer


def wait_ready(port: int, path: str = "/readyz", *, workers: int = 1, timeout: float = 60) -> None:
    """Until ``path`` answers 200: jangteo's /readyz once PostgreSQL and Redis are reachable.

    With more than one worker, 2 s more: the others bind a moment after the first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            http_request(port, "GET", path)
            break
        except (OSError, BenchError):
            if time.monotonic() > deadline:
                raise BenchError(f"no 200 from {path} on port {port}") from None
        time.sleep(0.1)
    if workers > 1:
        time.sleep(2)


def fetch(port: int, path: str, headers: Mapping[str, str] | None = None) -> bytes:
    return http_request(port, "GET", path, headers=headers)


def sign_up(port: int) -> str:
    """Create a fresh account on jangteo and return its access token."""
    account = {
        "email": f"bench-{uuid.uuid4().hex[:12]}@bench.example.com",
        "password": PASSWORD,
        "nickname": "bench",
        "region": "seoul-mapo",
    }
    answer = http_request(port, "POST", "/api/v1/auth/signup", account, want=201)
    token: str = json.loads(answer)["access_token"]
    return token


def create_listing(port: int, token: str, title: str) -> int:
    body = {"title": title, "price": 10_000, "category": "etc", "description": "benchmark"}
    auth = {"Authorization": f"Bearer {token}"}
    answer = http_request(port, "POST", "/api/v1/listings", body, auth, want=201)
    listing_id: int = json.loads(answer)["id"]
    return listing_id
