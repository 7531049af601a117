"""A background task that deletes what has expired: idempotency keys and abandoned uploads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from db.queries.idempotency import delete_expired
from db.queries.photos import delete_abandoned_photos
from server import keys

log = logging.getLogger(__name__)

INTERVAL_S = 300.0
BATCH = 1000
# A pending photo is abandoned once its upload ticket has been dead for this long.
ABANDONED_AFTER_TICKET_S = 3600


async def sweep_expired_keys(app: web.Application) -> int:
    """Delete every expired key now; returns how many went. Safe on several instances."""
    pool = app[keys.pg_pool_key]
    total = 0
    while True:
        deleted = await delete_expired(pool, BATCH)
        total += deleted
        if deleted < BATCH:
            return total


async def sweep_abandoned_photos(app: web.Application) -> int:
    """Forget pending photos whose tickets died long ago, and delete what was uploaded."""
    pool = app[keys.pg_pool_key]
    storage = app[keys.photo_storage_key]
    older_than = app[keys.settings_key].photo_upload_ttl + ABANDONED_AFTER_TICKET_S
    total = 0
    while True:
        object_keys = await delete_abandoned_photos(pool, older_than, BATCH)
        for object_key in object_keys:
            await storage.delete(object_key)
        total += len(object_keys)
        if len(object_keys) < BATCH:
            return total


async def _run_forever(app: web.Application) -> None:
    while True:
        await asyncio.sleep(INTERVAL_S)
        for name, sweep in (
            ("idempotency keys", sweep_expired_keys),
            ("photos", sweep_abandoned_photos),
        ):
            try:
                deleted = await sweep(app)
                if deleted:
                    log.info("expired rows deleted", extra={"what": name, "count": deleted})
            except Exception as error:  # PostgreSQL or S3 down: try again next round
                log.warning("sweep failed", extra={"what": name, "error": repr(error)})


async def janitor_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_run_forever(app), name="jangteo-janitor")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
