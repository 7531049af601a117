"""FastAPI + uvicorn + asyncpg: the framework reference of the uncached listing read.

Run as ``BENCH_DATABASE_URL=... BENCH_POOL=8 uvicorn loadtests.references.fastapi:app
--workers 2 --loop uvloop --http httptools``. The same SELECT, pool size and JSON as
``references/pg.py``, written the way FastAPI's documentation suggests (a lifespan owning the
pool, a path parameter typed ``int``), answering with pre-encoded bytes so that FastAPI's
own encoder is not what is measured.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

# The bench extra installs FastAPI; make lint runs without it.
from fastapi import (  # type: ignore[import-not-found, unused-ignore]
    FastAPI,
    HTTPException,
    Request,
    Response,
)

from loadtests.references.pg import DETAIL_SQL, listing_json


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size = int(os.environ.get("BENCH_POOL", "8"))
    async with asyncpg.create_pool(
        os.environ["BENCH_DATABASE_URL"], min_size=size, max_size=size
    ) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/api/v1/listings/{listing_id}")  # type: ignore[untyped-decorator, unused-ignore]
async def listing(listing_id: int, request: Request) -> Response:
    row = await request.app.state.pool.fetchrow(DETAIL_SQL, listing_id)
    if row is None:
        raise HTTPException(status_code=404)
    return Response(content=listing_json(row), media_type="application/json")
