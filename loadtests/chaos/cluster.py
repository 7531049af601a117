"""The system under test: a PostgreSQL and a Redis of the run's own, and three instances.

The services live in a scratch directory (never the shared ``.data`` stack, nor the one
the test suite uses), so killing them disturbs nobody else. Each instance reaches each
dependency through a proxy of its own: black-holing one proxy partitions that instance
from that dependency and no other. An instance keeps its port across restarts, and each
start takes the next purchase strategy of the rotation, so every strategy serves
purchases in a long enough run while the three instances always run different ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from loadtests.chaos.proxy import TcpProxy
from loadtests.clients.events import gauge, parse
from loadtests.harness.processes import jangteo_command
from loadtests.harness.stack import create_database
from server.embedded.postgres import EmbeddedPostgres
from server.embedded.process import free_port, port_accepts
from server.embedded.redis import EmbeddedRedis

STRATEGIES = ("atomic", "pessimistic", "optimistic", "redis_lock")
DATABASE = "jangteo_chaos"
START_TIMEOUT_S = 60.0  # one start; a start that meets PostgreSQL down is tried again
PROBE_TIMEOUT_S = 2.0
SHUTDOWN_TIMEOUT_S = 5  # JANGTEO_SHUTDOWN_TIMEOUT of the instances


class ClusterError(RuntimeError):
    """The cluster could not be brought up (not a failed check)."""


class Services:
    """The run's own PostgreSQL and Redis, which the nemesis kills and restarts."""

    def __init__(self, directory: Path) -> None:
        self.postgres = EmbeddedPostgres(directory / "postgres", free_port())
        self.redis = EmbeddedRedis(directory / "redis", free_port())

    def start(self) -> None:
        self.postgres.ensure_running()
        self.redis.ensure_running()

    def stop(self) -> None:
        for stop in (self.redis.stop, self.postgres.stop):
            try:
                stop()
            except Exception as error:  # the other one must stop as well
                print(f"chaos: stopping a service failed: {error!r}", flush=True)

    def kill_redis(self) -> None:
        pid = self.redis.running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


@dataclass(eq=False)
class Instance:
    """One ``jangteo serve`` process on a fixed port, behind its own two proxies."""

    index: int
    env: dict[str, str]
    redis_proxy: TcpProxy
    postgres_proxy: TcpProxy
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    state: str = "stopped"  # running, paused, stopped
    starts: int = 0
    strategy: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return f"instance-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline_s: float = 120.0) -> None:
        """Start it (again) and wait until it listens; retried while it exits at once
        (a start while PostgreSQL or Redis is down may)."""
        deadline = time.monotonic() + deadline_s
        while True:
            if self._start_once():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} did not start; see {self.log_path}")
            time.sleep(1.0)

    def _start_once(self) -> bool:
        with self._lock:
            self.strategy = STRATEGIES[(self.index + self.starts) % len(STRATEGIES)]
            self.starts += 1
            env = {**self.env, "JANGTEO_PORT": str(self.port)}
            env["JANGTEO_PURCHASE_STRATEGY"] = self.strategy
            with self.log_path.open("ab") as log:
                log.write(f"\n--- start {self.starts} ({self.strategy})\n".encode())
                log.flush()
                self.process = process = subprocess.Popen(  # noqa: S603 - our own command
                    jangteo_command("serve", "--port", str(self.port)),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C on the run is not sent to it
                )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_accepts(self.port):
            if process.poll() is not None or time.monotonic() > deadline:
                self._reap(process)
                return False
            time.sleep(0.05)
        self.state = "running"
        return True

    def send(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait_exit(self, timeout: float) -> int | None:
        """Its exit status, or None when it has not exited within ``timeout``."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL (after SIGCONT, so a paused one dies too) and reap it."""
        if self.process is not None:
            self._reap(self.process)
        self.state = "stopped"

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait()


class Cluster:
    """Services, proxies and instances of one run; ``close()`` stops all of it."""

    def __init__(self, scratch: Path, size: int) -> None:
        self.scratch = scratch
        self.services = Services(scratch)
        self.size = size
        self.instances: list[Instance] = []
        self.proxies: list[TcpProxy] = []
        self.database_url = ""
        self.jwt_secret = os.urandom(24).hex()

    async def start(self) -> None:
        await asyncio.to_thread(self.services.start)
        # Straight to PostgreSQL, not proxied: the instances get their own proxied URLs.
        self.database_url = await create_database(self.services.postgres.url, DATABASE)
        for index in range(self.size):
            redis_proxy = self.proxy(self.services.redis.port)
            postgres_proxy = self.proxy(self.services.postgres.port)
            env = {
                **os.environ,
                "JANGTEO_DATABASE_URL": postgres_proxy.url(self.database_url),
                "JANGTEO_REDIS_URL": redis_proxy.url(self.services.redis.url),
                "JANGTEO_JWT_SECRET": self.jwt_secret,
                "JANGTEO_RATE_LIMITS": "off",
                "JANGTEO_ACCESS_LOG": "off",
                "JANGTEO_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S),
                "JANGTEO_DATA_DIR": str(self.scratch / "data"),
            }
            log_path = self.scratch / f"instance-{index}.log"
            self.instances.append(Instance(index, env, redis_proxy, postgres_proxy, log_path))
        await asyncio.gather(*(asyncio.to_thread(i.start) for i in self.instances))

    def proxy(self, target_port: int, rate: int | None = None) -> TcpProxy:
        proxy = TcpProxy(target_port, rate=rate).start()
        self.proxies.append(proxy)
        return proxy

    def serving(self) -> list[Instance]:
        """The instances a load balancer would send to: their process runs (not paused)."""
        return [instance for instance in self.instances if instance.state == "running"]

    def close(self) -> None:
        for instance in self.instances:
            instance.kill()
        for proxy in self.proxies:
            proxy.stop()
        self.services.stop()


async def probe(
    http: aiohttp.ClientSession, instance: Instance, within: float = PROBE_TIMEOUT_S
) -> tuple[int | None, bool | None]:
    """(/readyz status, whether /metrics says it is the relay leader); None: no answer."""
    ready: int | None = None
    leader: bool | None = None
    client_timeout = aiohttp.ClientTimeout(total=within)
    try:
        async with http.get(f"{instance.url}/readyz", timeout=client_timeout) as response:
            ready = response.status
        async with http.get(f"{instance.url}/metrics", timeout=client_timeout) as response:
            leader = gauge(parse(await response.text()), "jangteo_relay_leader") >= 1
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    return ready, leader
