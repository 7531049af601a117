"""A circuit breaker in front of every Redis call the app makes through its shared client.

Why: when Redis stops answering (a black-holed network, a stalled server), each call
waits out ``JANGTEO_REDIS_TIMEOUT`` before the caller falls back (cache bypass, rate
limits and the revocation check failing open). Every request would pay that wait, often
several times. The breaker remembers that Redis just failed and makes further calls fail
at once with ``RedisUnavailable``, which callers already treat as "Redis is down".

How: it sits in the connection pool, the one place every command, pipeline, script and
lock goes through. ``BreakerPool.get_connection`` asks the breaker before handing out a
connection; ``BreakerConnection`` reports what Redis did (answered, refused, timed out).

- closed: calls pass. A timed-out call opens it at once (a caller already waited the
  full timeout, and the next ones would too); other connection errors (refused, reset:
  they cost nothing) open it after ``failures`` in a row.
- open: calls fail at once for ``cooldown`` seconds.
- half-open: one call goes through as a probe; the others still fail at once. An answer
  closes the breaker, a failure opens it again. A probe that reports nothing (it was
  cancelled) lets another one through after ``probe_timeout``.

Why not a library: purgatory, aiobreaker and circuitbreaker wrap one function call in a
decorator or context manager, but here a "call" is redis-py's pool checkout plus its
reads, which no single wrapper sees whole; and in half-open they let every concurrent
call through, so a still-dead Redis would make all requests in flight wait again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class RedisUnavailable(RedisConnectionError):
    """Refused without trying: Redis failed moments ago (a ConnectionError, so every
    caller's existing "Redis is down" handling applies)."""


class BreakerMetrics:
    """The breakers' metrics, labelled by node (one Redis, or each node of a cluster)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.rejected = Counter(
            "jangteo_redis_breaker_rejected",
            "Redis calls refused at once because the breaker was open",
            ["node"],
            registry=registry,
        )
        self.opened = Counter(
            "jangteo_redis_breaker_opened", "Times the Redis breaker opened", ["node"],
            registry=registry,
        )  # fmt: skip
        self.open = Gauge(
            "jangteo_redis_breaker_open",
            "1 while the Redis breaker refuses calls (open or half-open), else 0",
            ["node"],
            registry=registry,
        )


class RedisBreaker:
    """Closed, open or half-open; see the module docstring."""

    def __init__(
        self,
        *,
        failures: int,
        cooldown: float,
        probe_timeout: float,
        enabled: bool = True,
        registry: CollectorRegistry | None = None,
        metrics: BreakerMetrics | None = None,
        node: str = "redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = max(1, failures)
        self.cooldown = cooldown
        self.probe_timeout = probe_timeout
        self.enabled = enabled  # off: every call waits for Redis (benchmarks, debugging)
        self.node = node
        self.clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.until = 0.0  # open: end of the cooldown; half-open: end of the probe's turn
        metrics = metrics or BreakerMetrics(registry)
        self._rejected = metrics.rejected.labels(node)
        self._opened = metrics.opened.labels(node)
        metrics.open.labels(node).set_function(lambda: 0.0 if self.state == CLOSED else 1.0)

    def admit(self) -> None:
        """Let a call through, or raise ``RedisUnavailable`` at once."""
        if self.state == CLOSED or not self.enabled:
            return
        now = self.clock()
        if now < self.until:
            self._rejected.inc()
            raise RedisUnavailable(f"Redis circuit {self.state}: failing fast")
        # The cooldown (or the previous probe's turn) is over: this call is the probe.
        self.state = HALF_OPEN
        self.until = now + self.probe_timeout

    @property
    def refusing(self) -> bool:
        """Whether a call admitted earlier should give up now (the breaker opened since)."""
        return self.enabled and self.state == OPEN and self.clock() < self.until

    def succeeded(self) -> None:
        """Redis answered (an error reply counts: Redis is there)."""
        self.consecutive_failures = 0
        if self.state != CLOSED:
            log.info("redis breaker closed: redis answers again", extra={"node": self.node})
            self.state = CLOSED

    def failed(self, *, timed_out: bool) -> None:
        """Redis did not answer: refused, reset, or silent past the timeout."""
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or timed_out or self.consecutive_failures >= self.failures:
            if self.state != OPEN:
                self._opened.inc()
                log.warning(
                    "redis breaker open: failing fast",
                    extra={"node": self.node, "cooldown": self.cooldown, "timed_out": timed_out},
                )
            self.state = OPEN
            self.until = self.clock() + self.cooldown


class BreakerConnection(aioredis.Connection):
    """A redis-py connection that tells the breaker how each connect and read went."""

    breaker: RedisBreaker | None = None

    async def connect(self) -> None:
        with self._reporting_failures():
            await super().connect()  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def _reporting_failures(self) -> Iterator[None]:
        """Tell the breaker when what runs inside fails to reach Redis."""
        try:
            yield
        except RedisTimeoutError:
            self._report(timed_out=True)
            raise
        except (RedisConnectionError, OSError):
            self._report(timed_out=False)
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await super().read_response(*args, **kwargs)
        except RedisTimeoutError:
            self._report(timed_out=True)
            raise
        except (RedisConnectionError, OSError):
            self._report(timed_out=False)
            raise
        except Exception:
            if self.breaker is not None:  # an error reply: Redis is there
                self.breaker.succeeded()
            raise
        if self.breaker is not None:
            self.breaker.succeeded()
        return response

    def _report(self, *, timed_out: bool) -> None:
        if self.breaker is not None:
            self.breaker.failed(timed_out=timed_out)


class BreakerPool(aioredis.BlockingConnectionPool):
    """The app's blocking pool, asking the breaker before every checkout."""

    breaker: RedisBreaker | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.breaker is not None:
            self.breaker.admit()
        connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if self.breaker is not None and self.breaker.refusing:
            # It opened while this call waited for a free connection: do not go on.
            await self.release(connection)
            raise RedisUnavailable("Redis circuit open: failing fast")
        return connection

    def make_connection(self) -> Any:
        connection = super().make_connection()  # type: ignore[no-untyped-call]
        if isinstance(connection, BreakerConnection):
            connection.breaker = self.breaker
        return connection


def guarded_pool(
    redis_url: str, breaker: RedisBreaker, *, max_connections: int, timeout: float
) -> BreakerPool:
    """The app's Redis pool: blocking, with the timeouts everywhere, behind ``breaker``."""
    # A blocking pool: a burst of requests waits (up to the Redis timeout) for a free
    # connection instead of failing at once when all of them are busy.
    pool = BreakerPool.from_url(
        redis_url,
        connection_class=BreakerConnection,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    pool.breaker = breaker
    return pool


class NodeBreakers:
    """One breaker per node of a Redis Cluster: a master that fails opens its own breaker,
    and calls for the slots of the other masters go on."""

    def __init__(self, make: Callable[[str], RedisBreaker]) -> None:
        self.make = make
        self.by_node: dict[str, RedisBreaker] = {}

    def for_node(self, host: str, port: int) -> RedisBreaker:
        node = f"{host}:{port}"
        breaker = self.by_node.get(node)
        if breaker is None:
            breaker = self.by_node[node] = self.make(node)
        return breaker


def node_breaker_connection(breakers: NodeBreakers) -> type[BreakerConnection]:
    """The connection class of a cluster client: each connection reports to its node's
    breaker, and asks it before every command (the cluster client has no pool checkout
    to guard: it picks a node's connection itself).

    The cluster client connects from inside ``send_packed_command`` (its handshake is sent
    the same way), so the breaker is asked once per command, not again for the handshake
    of the connection that command opens, and connecting reports to the breaker from
    ``connect_check_health``, the one step every path to a new connection takes.
    """

    class NodeBreakerConnection(BreakerConnection):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.breaker = breakers.for_node(self.host, self.port)
            self.connecting = False

        async def connect(self) -> None:
            await aioredis.Connection.connect(self)  # type: ignore[no-untyped-call]

        async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
            self.connecting = True
            try:
                with self._reporting_failures():
                    await super().connect_check_health(*args, **kwargs)
            finally:
                self.connecting = False

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self.connecting:
                assert self.breaker is not None
                self.breaker.admit()
            await super().send_packed_command(command, check_health)

    return NodeBreakerConnection
