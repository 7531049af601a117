"""A background task that deletes expired idempotency keys, a batch at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from db.queries.idempotency import delete_expired
from server import keys

log = logging.getLogger(__name__)

INTERVAL_S = 300.0
BATCH = 1000


async def sweep_expired_keys(app: web.Application) -> int:
    """Delete every expired key now; returns how many went. Safe on several instances."""
    pool = app[keys.pg_pool_key]
    total = 0
    while True:
        deleted = await delete_expired(pool, BATCH)
        total += deleted
        if deleted < BATCH:
            return total


async def _run_forever(app: web.Application) -> None:
    while True:
        await asyncio.sleep(INTERVAL_S)
        try:
            deleted = await sweep_expired_keys(app)
            if deleted:
                log.info("expired idempotency keys deleted", extra={"count": deleted})
        except Exception as error:  # PostgreSQL down: try again next round
            log.warning("idempotency key sweep failed", extra={"error": repr(error)})


async def janitor_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_run_forever(app), name="jangteo-janitor")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
