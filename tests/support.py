"""Helpers shared by the test suites: test settings, accounts, and server processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from db.pool import TimedPool, create_pool
from server.embedded.process import free_port, port_accepts
from server.settings import RateLimit, Settings
from tests.cleanup import Schema, empty_tables

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_JWT_SECRET = "test-secret-0123456789abcdef0123456789"
PASSWORD = "correct horse battery"

Client: TypeAlias = "TestClient[web.Request, web.Application]"


def make_settings(database_url: str, redis_url: str, **changes: Any) -> Settings:
    """Settings for tests: fixed secret, generous rate limits unless a test narrows them.

    Passwords are hashed cheaply: at RFC 9106's cost one hash takes a good part of a second
    on two busy cores, and every app hashes once as it is built and again for each account
    a test signs up. Hashes stay argon2id and verifying reads the cost from the hash, so
    every path and every answer is the same.
    """
    base = Settings(
        data_dir=REPO_ROOT / ".data",
        database_url=database_url,
        redis_url=redis_url,
        jwt_secret=TEST_JWT_SECRET,
        rate_limit_auth_ip=RateLimit(10_000, 60),
        rate_limit_auth_email=RateLimit(10_000, 60),
        rate_limit_writes=RateLimit(10_000, 60),
        access_log=False,
        pg_acquire_timeout=2.0,
        cheap_password_hashes=True,
    )
    return base.replace(**changes)


@dataclass(frozen=True, slots=True)
class Account:
    user_id: int
    email: str
    access_token: str
    refresh_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def sign_up(
    client: Client, *, email: str | None = None, region: str = "seoul-mapo"
) -> Account:
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    response = await client.post(
        "/api/v1/auth/signup",
        json={"email": email, "password": PASSWORD, "nickname": "tester", "region": region},
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    return Account(body["user"]["id"], email, body["access_token"], body["refresh_token"])


class ServerProcess:
    """A real ``jangteo serve`` child process on a free port, for multi-process tests."""

    def __init__(self, env: Mapping[str, str], *, workers: int = 1) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "JANGTEO_PORT": str(self.port)}
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        self.deadline = 0.0  # by when a launched process must listen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        return self.launch().ready()

    def launch(self) -> ServerProcess:
        """Start the process without waiting for it to listen (see ``ready``)."""
        command = [sys.executable, "-m", "jangteo", "serve", "--workers", str(self.workers)]
        # Logs go to a file: a pipe nobody drains could fill up and stall the server.
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command, env=self.env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=self.log
        )
        self.deadline = time.monotonic() + 30
        return self

    def ready(self) -> ServerProcess:
        """Wait until the launched process accepts connections on its port."""
        assert self.process is not None
        while not port_accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > self.deadline:
                said = self.output()[-2000:]  # before stop closes the log
                self.stop()
                raise RuntimeError(f"server did not start: {said}")
            time.sleep(0.05)
        return self

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait(self, timeout: float = 20) -> int:
        """Wait for an exit already under way (after a signal the test sent itself)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def terminate(self) -> None:
        """Send SIGTERM to a process still running (``stop`` then waits for it)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 20) -> int:
        self.terminate()
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            if not self.log.closed:
                self.log.close()


def start_servers(*servers: ServerProcess) -> list[ServerProcess]:
    """Start ``servers`` side by side (they import and bind at once); each listens on return.

    If one does not start, all are stopped.
    """
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.ready()
    except BaseException:
        stop_servers(*(server for server in servers if server.process is not None))
        raise
    return list(servers)


def stop_servers(*servers: ServerProcess) -> None:
    """Stop ``servers``, all signalled first so that their shutdowns overlap."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()


@contextmanager
def two_server_processes(
    env: Mapping[str, str],
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two instances on one environment, as behind a load balancer; both stopped after."""
    first, second = start_servers(ServerProcess(env), ServerProcess(env))
    try:
        yield first, second
    finally:
        stop_servers(first, second)


def server_env(database_url: str, redis_url: str, **settings: str) -> dict[str, str]:
    """A `jangteo serve` environment; ``settings`` are JANGTEO_ names without the prefix.

    Passwords are hashed cheaply, as in ``make_settings``.
    """
    env = {
        "JANGTEO_DATABASE_URL": database_url,
        "JANGTEO_REDIS_URL": redis_url,
        "JANGTEO_JWT_SECRET": TEST_JWT_SECRET,
        "JANGTEO_ACCESS_LOG": "off",
        "JANGTEO_RATE_LIMITS": "off",
        "JANGTEO_SHUTDOWN_TIMEOUT": "5",
        "JANGTEO_CHEAP_PASSWORD_HASHES": "on",
    }
    env.update({f"JANGTEO_{name}": value for name, value in settings.items()})
    return env


async def empty_state(database_url: str, redis_url: str) -> None:
    """Every table of the database emptied (sequences restarted) and the Redis database
    flushed: what the suite leaves after each test, for fixtures that keep state longer."""
    conn = await asyncpg.connect(database_url)
    try:
        await empty_tables(conn, await Schema.read(conn))
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def small_pool(database_url: str) -> TimedPool:
    """A pool of two connections, as the app makes it (its relay waker included)."""
    return await create_pool(
        database_url,
        min_size=1,
        max_size=2,
        connect_timeout=10,
        acquire_timeout=10,
        statement_timeout=10,
    )
