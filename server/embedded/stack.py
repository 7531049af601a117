"""Start, stop and describe the embedded PostgreSQL + Redis pair that processes share."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server.embedded.postgres import EmbeddedPostgres
from server.embedded.process import free_port
from server.embedded.redis import EmbeddedRedis


@dataclass(frozen=True, slots=True)
class ServiceUrls:
    database_url: str
    redis_url: str

    def as_exports(self) -> str:
        return (
            f"export JANGTEO_DATABASE_URL={self.database_url}\n"
            f"export JANGTEO_REDIS_URL={self.redis_url}\n"
        )


class EmbeddedStack:
    """The pair under ``data_dir``; ports are chosen once and remembered in ``services.json``.

    Every operation holds an exclusive file lock, so processes starting the stack at
    the same moment end up sharing one PostgreSQL and one Redis.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.state_path = self.data_dir / "services.json"

    def start(self) -> ServiceUrls:
        """Start whatever is not running (initialising on first use); idempotent."""
        with self._locked():
            postgres, redis = self._services()
            postgres.ensure_running()
            redis.ensure_running()
            return ServiceUrls(postgres.url, redis.url)

    def start_owned(self) -> tuple[ServiceUrls, list[Callable[[], None]]]:
        """Start what is not running; also return the stops that undo only that.

        A test run or a load test stops what it started, and leaves alone services that
        were running before it (a `make run` in another terminal, say).
        """
        with self._locked():
            services = self._services()
            stops = [service.stop for service in services if service.running_pid() is None]
            for service in services:
                service.ensure_running()
            postgres, redis = services
            return ServiceUrls(postgres.url, redis.url), stops

    def stop(self) -> None:
        with self._locked():
            if not self.state_path.exists():
                return
            postgres, redis = self._services()
            redis.stop()
            postgres.stop()

    def urls(self) -> ServiceUrls | None:
        """The URLs of a stack started before, or None when there is none."""
        if not self.state_path.exists():
            return None
        postgres, redis = self._services()
        return ServiceUrls(postgres.url, redis.url)

    def postgres(self) -> EmbeddedPostgres:
        return self._services()[0]

    def redis(self) -> EmbeddedRedis:
        return self._services()[1]

    def _services(self) -> tuple[EmbeddedPostgres, EmbeddedRedis]:
        ports = self._ports()
        return (
            EmbeddedPostgres(self.data_dir / "postgres", ports["postgres"]),
            EmbeddedRedis(self.data_dir / "redis", ports["redis"]),
        )

    def _ports(self) -> dict[str, int]:
        if self.state_path.exists():
            state: dict[str, int] = json.loads(self.state_path.read_text())
            return state
        state = {"postgres": free_port(), "redis": free_port()}
        self.state_path.write_text(json.dumps(state))
        return state

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "services.lock").open("w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
