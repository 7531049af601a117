"""The asyncpg pool: timeouts on connect, acquire and every statement; orjson for json."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from db.queries.outbox import take_events_written
from db.wake_up import RelayWaker

# The only session setting sent as a startup parameter: pgbouncer (in every pool mode)
# refuses a connection whose startup packet carries one it does not track, such as
# statement_timeout. The others are SET right after connecting (``apply_settings``).
STARTUP_SETTINGS = frozenset({"application_name"})


class FifoGate:
    """A semaphore that hands permits out strictly in arrival order.

    A released permit goes straight to the longest waiter; a newcomer never takes one
    while anybody waits. (asyncpg's own queue of free connections lets a newcomer take a
    connection that was just returned while the woken waiter is still scheduled, and that
    waiter then queues again at the back: under load, a lottery with a long tail.)
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, permits: int) -> None:
        self._free = permits
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:  # timed out or cancelled
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):  # already dropped by release()
                    self._waiters.remove(waiter)
            raise

    @property
    def waiting(self) -> int:
        """Acquires queued for a permit now (a gauge: how far the pool is behind)."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class TimedPool(asyncpg.Pool):
    """A pool whose every acquire, including the implicit one of ``pool.fetch()``, times out,
    and whose waiters get connections first come, first served.

    A request waiting for a connection longer than the acquire timeout fails fast with
    ``TimeoutError`` (answered 503) instead of queueing without end. Acquires pass a
    ``FifoGate`` with as many permits as the pool has connections, so whoever holds a
    permit finds a free connection at once, and waits are as long as the queue ahead.
    """

    acquire_timeout: float = 5.0

    def __init__(self, *args: Any, waker: RelayWaker, **kwargs: Any) -> None:
        super().__init__(*args, reset=functools.partial(_on_release, waker), **kwargs)
        self._gate = FifoGate(self.get_max_size())
        self._permits: set[PoolConnectionProxy[Any]] = set()
        self.waker = waker

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.waker.close()

    def terminate(self) -> None:
        super().terminate()
        self.waker.terminate()

    def get_waiting(self) -> int:
        """Acquires waiting for a connection now: above 0 for long, the pool is exhausted."""
        return self._gate.waiting

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)

    async def _acquire(self, timeout: float | None) -> PoolConnectionProxy[Any]:  # noqa: ASYNC109
        # Every acquire (``async with``, ``await``, ``pool.fetch...``) goes through here.
        async with asyncio.timeout(timeout):
            await self._gate.acquire()
            try:
                proxy: PoolConnectionProxy[Any] = await super()._acquire(timeout)  # type: ignore[misc]
            except BaseException:
                self._gate.release()
                raise
        self._permits.add(proxy)
        return proxy

    async def release(
        self,
        connection: PoolConnectionProxy[Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's signature
    ) -> None:
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if connection in self._permits:  # not when released twice
                self._permits.discard(connection)
                self._gate.release()


async def _on_release(waker: RelayWaker, connection: asyncpg.Connection) -> None:
    """Instead of asyncpg's reset query (a round trip per request; jangteo leaves nothing
    session-wide behind: no session advisory locks, LISTEN, SET or cursors), only hand the
    slots the connection's transaction wrote events to to the relay's waker."""
    slots = take_events_written(connection)
    if slots:
        waker.wake(slots)


def startup_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """The part of ``settings`` that may travel in the startup packet."""
    return {name: value for name, value in settings.items() if name in STARTUP_SETTINGS}


async def apply_settings(
    connection: asyncpg.Connection,
    settings: Mapping[str, str],
    timeout: float | None = None,  # noqa: ASYNC109 - asyncpg's per-call timeout
) -> None:
    """SET for the whole session, in one round trip, what the startup packet did not carry."""
    rest = {name: value for name, value in settings.items() if name not in STARTUP_SETTINGS}
    if rest:
        await connection.execute(
            "SELECT set_config(name, value, false)"
            " FROM unnest($1::text[], $2::text[]) AS s(name, value)",
            list(rest),
            list(rest.values()),
            timeout=timeout,
        )


async def connect(
    database_url: str,
    settings: Mapping[str, str],
    timeout: float,  # noqa: ASYNC109 - asyncpg's connect timeout
    *,
    statement_lifetime: int = 300,
) -> asyncpg.Connection:
    """A connection of its own (outside any pool) with ``settings`` for its whole session;
    its prepared statements are prepared again after ``statement_lifetime`` seconds."""
    connection = await asyncpg.connect(
        database_url,
        timeout=timeout,
        server_settings=startup_settings(settings),
        max_cached_statement_lifetime=statement_lifetime,
    )
    try:
        await apply_settings(connection, settings, timeout)
    except BaseException:
        connection.terminate()
        raise
    return connection


async def _init_connection(settings: Mapping[str, str], connection: asyncpg.Connection) -> None:
    await apply_settings(connection, settings)
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_pool(
    database_url: str,
    *,
    min_size: int,
    max_size: int,
    connect_timeout: float,
    acquire_timeout: float,
    statement_timeout: float,
) -> TimedPool:
    """A pool for ``database_url``; statements time out on the server and on the client."""
    statement_ms = int(statement_timeout * 1000)
    session = {
        "statement_timeout": str(statement_ms),
        "idle_in_transaction_session_timeout": str(statement_ms * 3),
        "application_name": "jangteo",
        # The outbox trigger leaves the NOTIFY to _on_release, after the commit.
        "jangteo.notify_after_commit": "on",
    }
    options: dict[str, Any] = {
        "min_size": min_size,
        "max_size": max_size,
        "max_queries": 50_000,
        "max_inactive_connection_lifetime": 300.0,
        "setup": None,
        "init": functools.partial(_init_connection, session),
        "loop": None,
        "connection_class": asyncpg.Connection,
        "record_class": asyncpg.Record,
        "timeout": connect_timeout,
        "command_timeout": statement_timeout + 1,
        "server_settings": startup_settings(session),
    }
    waker = RelayWaker(functools.partial(connect, database_url, session, connect_timeout))
    pool = TimedPool(database_url, waker=waker, **options)
    pool.acquire_timeout = acquire_timeout
    await pool
    return pool
