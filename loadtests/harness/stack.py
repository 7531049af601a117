"""The services under a benchmark, its fresh database, and the HTTP calls that set it up."""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from db.migrate import migrate
from loadtests.harness.processes import BenchError, Server, as_line, background, jangteo_command
from server.embedded.process import free_port
from server.embedded.stack import EmbeddedStack

PASSWORD = "bench-password-123"  # noqa: S105 - the throwaway benchmark accounts' password


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


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def admin(admin_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database(admin_url: str, name: str, *, keep: bool = False) -> AsyncIterator[str]:
    """A migrated database of the benchmark's own (dropped first); its URL. Dropped at the
    end unless ``keep``."""
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    await admin(admin_url, drop, f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    applied = await migrate(url)
    print(f"fresh database {name}: applied {', '.join(applied)}", flush=True)
    try:
        yield url
    finally:
        if not keep:
            await admin(admin_url, drop)


def database_note(name: str) -> str:
    return f"DROP/CREATE DATABASE {name}; db.migrate.migrate(url)"


def serve_settings(database_url: str, redis_url: str, **more: str) -> dict[str, str]:
    """``JANGTEO_*`` of a benchmark's jangteo: its database and Redis, no rate limits, no
    access log, warnings only; ``more`` adds settings (``JWT_SECRET=...``)."""
    chosen = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "RATE_LIMITS": "off"}
    chosen |= {"ACCESS_LOG": "off", "LOG_LEVEL": "WARNING", **more}
    return {f"JANGTEO_{name}": value for name, value in chosen.items()}


@contextmanager
def instances(
    names: Sequence[str],
    settings: Mapping[str, str],
    scratch: Path,
    commands: dict[str, dict[str, str]],
    extra: Mapping[str, str] | None = None,
) -> Iterator[list[Server]]:
    """``jangteo serve`` once per name, each one process on a port of its own, ready.

    ``settings`` (``JANGTEO_*``) and ``extra`` are added to this process's environment; the
    command lines go to ``commands["jangteo"][name]`` with URLs and secrets left out.
    """
    chosen = {**settings, **(extra or {})}
    hidden = ("_URL", "_SECRET")
    shown = " ".join(f"{k}={'<hidden>' if k.endswith(hidden) else v}" for k, v in chosen.items())
    with ExitStack() as stack:
        servers = []
        for name in names:
            port = free_port()
            serve = jangteo_command("serve", "--host", "127.0.0.1", "--port", str(port))
            commands.setdefault("jangteo", {})[name] = f"{shown} {as_line(serve)}"
            env = {**os.environ, **chosen}
            log = scratch / f"{name}.log"
            servers.append(stack.enter_context(background(serve, env, port, log, name)))
            wait_ready(port)
        yield servers


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request to 127.0.0.1:port; its status and body bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = dict(headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_ready(port: int, path: str = "/readyz", *, workers: int = 1, timeout: float = 60) -> None:
    """Until ``path`` answers 200: jangteo's /readyz once PostgreSQL and Redis are reachable.

    With more than one worker, 2 s more: the others bind a moment after the first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http_request(port, "GET", path)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"no 200 from {path} on port {port}")
        time.sleep(0.1)
    if workers > 1:
        time.sleep(2)


def fetch(port: int, path: str, headers: Mapping[str, str] | None = None) -> bytes:
    status, body = http_request(port, "GET", path, headers=headers)
    if status != 200:
        raise BenchError(f"GET {path} on port {port} answered {status}: {body[:500]!r}")
    return body


def sign_up(port: int) -> str:
    """Create a fresh account on jangteo and return its access token."""
    account = {
        "email": f"bench-{uuid.uuid4().hex[:12]}@bench.example.com",
        "password": PASSWORD,
        "nickname": "bench",
        "region": "seoul-mapo",
    }
    status, body = http_request(port, "POST", "/api/v1/auth/signup", account)
    if status != 201:
        raise BenchError(f"sign-up answered {status}: {body[:500]!r}")
    token: str = json.loads(body)["access_token"]
    return token


def create_listing(port: int, token: str, title: str) -> int:
    body = {"title": title, "price": 10_000, "category": "etc", "description": "benchmark"}
    status, answer = http_request(
        port, "POST", "/api/v1/listings", body, {"Authorization": f"Bearer {token}"}
    )
    if status != 201:
        raise BenchError(f"creating a listing answered {status}: {answer[:300]!r}")
    listing_id: int = json.loads(answer)["id"]
    return listing_id
