"""A bare aiohttp + asyncpg app: the uncached listing read's reference.

Run as ``python -m loadtests.references.pg --port P --processes 2 --pool 8 --database URL``.
``GET /api/v1/listings/{id}`` runs jangteo's own listing SELECT on an asyncpg pool of the
given size per process and answers the row as JSON: what a hand-written handler with no
framework of its own would do (no auth, no cache, no middleware, no validation).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from db.queries.listings import LISTING_SELECT
from loadtests.references.app import serve_processes

DETAIL_SQL = LISTING_SELECT + " WHERE l.id = $1"
POOL_KEY = web.AppKey("pool", asyncpg.Pool)


def listing_json(row: asyncpg.Record) -> bytes:
    """The row as JSON, its photos (a ``json`` column, text to asyncpg) as a JSON array."""
    body: dict[str, Any] = dict(row)
    body["photos"] = orjson.loads(body["photos"])
    return orjson.dumps(body)


async def listing(request: web.Request) -> web.Response:
    try:
        listing_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    row = await request.app[POOL_KEY].fetchrow(DETAIL_SQL, listing_id)
    if row is None:
        raise web.HTTPNotFound()
    return web.Response(body=listing_json(row), content_type="application/json")


def make_app(database_url: str, pool_size: int) -> web.Application:
    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        async with asyncpg.create_pool(
            database_url, min_size=pool_size, max_size=pool_size
        ) as pool:
            app[POOL_KEY] = pool
            yield

    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/api/v1/listings/{id}", listing)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.references.pg", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--pool", type=int, default=8, help="pooled connections per process")
    parser.add_argument("--database", required=True, help="PostgreSQL URL")
    args = parser.parse_args(argv)
    make = functools.partial(make_app, args.database, args.pool)
    serve_processes(make, args.host, args.port, args.processes)


if __name__ == "__main__":
    main()
