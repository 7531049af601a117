"""The asyncpg pool: timeouts on connect, acquire and every statement; orjson for json."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolAcquireContext

from db.queries.outbox import notify_if_events_written
from server.settings import Settings


class TimedPool(asyncpg.Pool):
    """A pool whose every acquire, including the implicit one of ``pool.fetch()``, times out.

    A request waiting for a connection longer than the acquire timeout fails fast with
    ``TimeoutError`` (answered 503) instead of queueing without end.
    """

    acquire_timeout: float = 5.0

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


async def _on_release(connection: asyncpg.Connection) -> None:
    """Instead of asyncpg's reset query (a round trip per request; jangteo leaves nothing
    session-wide behind: no session advisory locks, LISTEN, SET or cursors), only wake
    the outbox relay when the connection's transaction wrote events."""
    await notify_if_events_written(connection)


async def _init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """A pool for ``settings.database_url``; statements time out on the server and client."""
    assert settings.database_url is not None, "resolve the database URL first"
    statement_ms = int(settings.pg_statement_timeout * 1000)
    options: dict[str, Any] = {
        "min_size": settings.pg_pool_min,
        "max_size": settings.pg_pool_max,
        "max_queries": 50_000,
        "max_inactive_connection_lifetime": 300.0,
        "setup": None,
        "init": _init_connection,
        "reset": _on_release,
        "loop": None,
        "connection_class": asyncpg.Connection,
        "record_class": asyncpg.Record,
        "timeout": settings.pg_connect_timeout,
        "command_timeout": settings.pg_statement_timeout + 1,
        "server_settings": {
            "statement_timeout": str(statement_ms),
            "idle_in_transaction_session_timeout": str(statement_ms * 3),
            "application_name": "jangteo",
            # The outbox trigger leaves the NOTIFY to _on_release, after the commit.
            "jangteo.notify_after_commit": "on",
        },
    }
    pool = TimedPool(settings.database_url, **options)
    pool.acquire_timeout = settings.pg_acquire_timeout
    await pool
    return pool
