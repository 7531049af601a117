"""HTTP endpoints of listings: parse, call the service (which checks preconditions), answer.

Reading listings needs no account (browsing comes before signing up); changing does.
"""

from __future__ import annotations

import asyncpg
from aiohttp import hdrs, web

from server import keys
from server.auth.sessions import authenticate
from server.errors import ValidationFailed
from server.handler_params import limit_writes, path_id
from server.jsonio import JSON_CONTENT_TYPE, dumps, json_response, read_json, validate
from server.listings import service
from server.listings.preconditions import IF_MATCH, IfMatch
from server.listings.schemas import (
    FeedQuery,
    ListingCreate,
    ListingOut,
    ListingPage,
    ListingPatch,
    PhotoOut,
)
from server.openapi import ApiSpec
from server.photos.storage import PhotoStorage

PREFIX = "/api/v1/listings"
ITEM = PREFIX + "/{id}"  # also the route label of its metrics


def etag_of(row: asyncpg.Record) -> str:
    """Changes with every edit (version) and every like (like_count)."""
    return f'"{row["id"]}-{row["version"]}-{row["like_count"]}"'


def listing_out(storage: PhotoStorage, row: asyncpg.Record) -> ListingOut:
    """The listing as the API shows it: its photos by the URL the storage serves them at."""
    photos = [
        PhotoOut(
            id=photo["id"],
            url=storage.public_url(photo["key"]),
            content_type=photo["content_type"],
        )
        for photo in row["photos"]
    ]
    return ListingOut(
        id=row["id"],
        seller_id=row["seller_id"],
        title=row["title"],
        description=row["description"],
        price=row["price"],
        quantity=row["quantity"],
        category=row["category"],
        region=row["region"],
        status=row["status"],
        like_count=row["like_count"],
        version=row["version"],
        photos=photos,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _listing_id(request: web.Request) -> int:
    return path_id(request, service.ListingNotFound)


def _listing_response(request: web.Request, row: asyncpg.Record, status: int = 200) -> web.Response:
    headers = {"ETag": etag_of(row)}
    if status == 201:
        headers["Location"] = f"{PREFIX}/{row['id']}"
    storage = request.app[keys.photo_storage_key]
    return json_response(listing_out(storage, row), status=status, headers=headers)


async def _after_change(request: web.Request, row: asyncpg.Record) -> None:
    await request.app[keys.listing_cache_key].changed(row["id"], row["region"])


async def create_listing(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    body = await read_json(request, ListingCreate)
    await limit_writes(request, claims.user_id)
    row = await service.create_listing(request.app[keys.pg_pool_key], claims.user_id, body)
    await _after_change(request, row)
    return _listing_response(request, row, status=201)


async def get_listing(request: web.Request) -> web.Response:
    listing_id = _listing_id(request)

    async def build() -> bytes:
        try:
            row = await service.get_listing(request.app[keys.listing_reads_key], listing_id)
        except service.ListingNotFound:
            return b""  # cached too, so unknown ids do not reach PostgreSQL every time
        listing = listing_out(request.app[keys.photo_storage_key], row)
        return etag_of(row).encode() + b"\n" + dumps(listing)

    entry = await request.app[keys.listing_cache_key].detail(listing_id, build)
    if not entry:
        raise service.ListingNotFound()
    return detail_response(entry, request.headers.get(hdrs.IF_NONE_MATCH))


def detail_response(entry: bytes, if_none_match: str | None) -> web.Response:
    """The answer for a detail cache entry (``ETag\nbody``): 200, or 304 when If-None-Match
    names its ETag. One function, so the fast path (``fast_path.py``) answers the same."""
    raw_etag, _, body = entry.partition(b"\n")
    etag = raw_etag.decode()
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if if_none_match is not None and etag in _tags(if_none_match):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type=JSON_CONTENT_TYPE)


def _tags(if_none_match: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in if_none_match.split(",") if tag.strip()}


async def update_listing(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    listing_id = _listing_id(request)
    if_match = IfMatch(request.headers.get("If-Match"))
    body = await read_json(request, ListingPatch)
    await limit_writes(request, claims.user_id)
    row, changed = await service.update_listing(
        request.app[keys.pg_pool_key], listing_id, claims.user_id, if_match, body
    )
    if changed:
        await _after_change(request, row)
    return _listing_response(request, row)


async def hide_listing(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    listing_id = _listing_id(request)
    if_match = IfMatch(request.headers.get("If-Match"))
    await limit_writes(request, claims.user_id)
    row = await service.hide_listing(
        request.app[keys.pg_pool_key], listing_id, claims.user_id, if_match
    )
    await _after_change(request, row)
    return web.Response(status=204)


async def list_listings(request: web.Request) -> web.Response:
    params: dict[str, str] = {}
    for name in request.query:
        values = request.query.getall(name)
        if len(values) > 1:
            raise ValidationFailed([{"field": name, "code": "repeated", "message": "give it once"}])
        params[name] = values[0]
    query = validate(params, FeedQuery)

    async def build() -> bytes:
        rows, next_cursor = await service.list_listings(request.app[keys.pg_pool_key], query)
        storage = request.app[keys.photo_storage_key]
        items = [listing_out(storage, row) for row in rows]
        return dumps(ListingPage(items=items, next_cursor=next_cursor))

    first_page_of_region = query.region is not None and set(params) <= {"region", "limit"}
    if first_page_of_region:
        assert query.region is not None
        body = await request.app[keys.listing_cache_key].feed_first_page(
            query.region, query.limit, build
        )
    else:
        body = await build()
    return web.Response(body=body, content_type=JSON_CONTENT_TYPE)


async def like(request: web.Request) -> web.Response:
    return await _set_like(request, liked=True)


async def unlike(request: web.Request) -> web.Response:
    return await _set_like(request, liked=False)


async def _set_like(request: web.Request, *, liked: bool) -> web.Response:
    claims = await authenticate(request)
    listing_id = _listing_id(request)
    await limit_writes(request, claims.user_id)
    region = await service.like_listing(
        request.app[keys.pg_pool_key], listing_id, claims.user_id, liked
    )
    await request.app[keys.listing_cache_key].changed(listing_id, region)
    return web.Response(status=204)


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    spec.route(
        app, "GET", PREFIX, list_listings, summary="The feed: filters, newest first, keyset pages",
        tag="listings", response=ListingPage, errors=(422,), query=FeedQuery,
    )  # fmt: skip
    spec.route(
        app, "POST", PREFIX, create_listing, summary="List something for sale",
        tag="listings", body=ListingCreate, response=ListingOut, status=201, auth=True,
        errors=(429,),
    )  # fmt: skip
    spec.route(
        app, "GET", ITEM, get_listing, summary="One listing, with ETag (If-None-Match gives 304)",
        tag="listings", response=ListingOut, errors=(304, 404),
    )  # fmt: skip
    spec.route(
        app, "PATCH", ITEM, update_listing, summary="Edit (seller only; If-Match required)",
        tag="listings", body=ListingPatch, response=ListingOut, auth=True,
        errors=(403, 404, 409, 412, 428, 429), headers=(IF_MATCH,),
    )  # fmt: skip
    spec.route(
        app, "DELETE", ITEM, hide_listing, summary="Hide (seller only; If-Match required)",
        tag="listings", status=204, auth=True, errors=(403, 404, 412, 428, 429),
        headers=(IF_MATCH,),
    )  # fmt: skip
    spec.route(
        app, "PUT", ITEM + "/like", like, summary="Like (idempotent)",
        tag="listings", status=204, auth=True, errors=(404, 429),
    )  # fmt: skip
    spec.route(
        app, "DELETE", ITEM + "/like", unlike, summary="Unlike (idempotent)",
        tag="listings", status=204, auth=True, errors=(404, 429),
    )  # fmt: skip
