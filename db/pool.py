"""The asyncpg pool: timeouts on connect, acquire and every statement; orjson for json."""

from __future__ import annotations

import asyncpg
import orjson

from server.settings import Settings


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
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.pg_pool_min,
        max_size=settings.pg_pool_max,
        timeout=settings.pg_connect_timeout,
        command_timeout=settings.pg_statement_timeout + 1,
        init=_init_connection,
        server_settings={
            "statement_timeout": str(statement_ms),
            "idle_in_transaction_session_timeout": str(statement_ms * 3),
            "application_name": "jangteo",
        },
    )
    assert pool is not None
    return pool
