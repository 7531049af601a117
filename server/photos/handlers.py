"""HTTP endpoints of listing photos, the local upload/download routes, and the storage set-up."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from server import keys
from server.auth.sessions import authenticate
from server.client_address import request_origin
from server.errors import NotFound
from server.handler_params import path_id
from server.jsonio import json_response, read_json
from server.listings.service import ListingNotFound
from server.openapi import ApiSpec
from server.photos import service
from server.photos.schemas import CompletedPhotoOut, PhotoUploadBody, PhotoUploadOut
from server.photos.storage_local import (
    PUBLIC_PATH,
    UPLOAD_PATH,
    LocalPhotoStorage,
    derive_upload_secret,
)
from server.photos.storage_s3 import S3PhotoStorage

PREFIX = "/api/v1"
PHOTOS_PATH = f"{PREFIX}/listings/{{id}}/photos"
# Object keys are "listings/{listing_id}/{name}"; spelling that out in the routes keeps
# the paths plain (no regex), and a name can never contain a slash.
_KEY_ROUTE = "listings/{listing_id}/{name}"
# Keys are random and never rewritten once verified, so caches may keep photos for good.
_IMMUTABLE = "public, max-age=31536000, immutable"
_READ_CHUNK = 64 * 1024


def _listing_id(request: web.Request) -> int:
    return path_id(request, ListingNotFound)


def _photo_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["photo_id"])
    except ValueError:
        raise service.PhotoNotFound() from None


async def _limit_writes(request: web.Request, user_id: int) -> None:
    limit = request.app[keys.settings_key].rate_limit_writes
    await request.app[keys.rate_limiter_key].hit("writes", str(user_id), limit)


async def request_photo_upload(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    listing_id = _listing_id(request)
    body = await read_json(request, PhotoUploadBody)
    await _limit_writes(request, claims.user_id)
    settings = request.app[keys.settings_key]
    upload = await service.request_upload(
        request.app[keys.pg_pool_key],
        request.app[keys.photo_storage_key],
        listing_id=listing_id,
        user_id=claims.user_id,
        content_type=body.content_type,
        size=body.size,
        max_bytes=settings.photo_max_bytes,
        ticket_ttl=settings.photo_upload_ttl,
    )
    if upload.upload_url.startswith("/"):
        # Local storage signs a path on this server; S3 signs an absolute URL. Clients get
        # the same kind from both: absolute, named as they reached us.
        trusted = request.app[keys.trusted_proxies_key]
        origin = request_origin(request, trusted)
        upload = upload.model_copy(update={"upload_url": origin + upload.upload_url})
    return json_response(upload, status=201)


async def complete_photo_upload(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    listing_id = _listing_id(request)
    photo_id = _photo_id(request)
    await _limit_writes(request, claims.user_id)
    completion = await service.complete_upload(
        request.app[keys.pg_pool_key],
        request.app[keys.photo_storage_key],
        listing_id=listing_id,
        photo_id=photo_id,
        user_id=claims.user_id,
    )
    if completion.changed_region is not None:
        await request.app[keys.listing_cache_key].changed(listing_id, completion.changed_region)
    return json_response(completion.photo)


def _local_storage(request: web.Request) -> LocalPhotoStorage:
    storage = request.app[keys.photo_storage_key]
    assert isinstance(storage, LocalPhotoStorage), "local routes exist only with local storage"
    return storage


def _key(request: web.Request) -> str:
    return f"listings/{request.match_info['listing_id']}/{request.match_info['name']}"


async def upload_photo_bytes(request: web.Request) -> web.Response:
    """The signed PUT of ``LocalPhotoStorage`` tickets; the signature is the authorization."""
    storage = _local_storage(request)
    grant = storage.check_grant(_key(request), request.query)
    # Read as a stream, not request.read(): photos are far above the app's JSON body limit.
    await storage.receive(
        grant,
        content_type=request.content_type,
        content_length=request.content_length,
        chunks=request.content.iter_chunked(_READ_CHUNK),
    )
    return web.Response(status=204)


async def download_photo(request: web.Request) -> web.StreamResponse:
    storage = _local_storage(request)
    key = _key(request)
    path = storage.path_of(key)
    if path is None or not await asyncio.to_thread(path.is_file):
        raise NotFound("no such photo")
    headers = {
        "Content-Type": storage.content_type_of(key),
        "Cache-Control": _IMMUTABLE,
        "X-Content-Type-Options": "nosniff",
    }
    return web.FileResponse(path, headers=headers)


async def photo_storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """S3 when JANGTEO_S3_ENDPOINT is set, else files under the data directory."""
    settings = app[keys.settings_key]
    if settings.s3_endpoint:
        async with S3PhotoStorage.connect(settings) as s3_storage:
            app[keys.photo_storage_key] = s3_storage
            yield
        return
    app[keys.photo_storage_key] = LocalPhotoStorage(
        settings.data_dir / "photos",
        derive_upload_secret(settings.jwt_secret),
        settings.photo_upload_ttl,
    )
    yield


def setup_photos(app: web.Application, spec: ApiSpec) -> None:
    """Register the photo routes and the storage; call once, after the pool and Redis."""
    app.cleanup_ctx.append(photo_storage_ctx)
    spec.route(
        app, "POST", PHOTOS_PATH, request_photo_upload,
        summary="Reserve a photo slot and get a signed upload for its bytes", tag="photos",
        body=PhotoUploadBody, response=PhotoUploadOut, status=201,
        errors=(403, 404, 409, 429), auth=True,
    )  # fmt: skip
    # The largest photo is a setting: the document tells clients the limit in force.
    size = spec.schemas[PhotoUploadBody.__name__]["properties"]["size"]
    size["maximum"] = app[keys.settings_key].photo_max_bytes
    spec.route(
        app, "POST", f"{PHOTOS_PATH}/{{photo_id}}/complete", complete_photo_upload,
        summary="Verify the uploaded bytes and show the photo on its listing", tag="photos",
        response=CompletedPhotoOut, errors=(403, 404, 409, 422, 429), auth=True,
    )  # fmt: skip
    if app[keys.settings_key].s3_endpoint:
        return
    spec.route(
        app, "PUT", f"{UPLOAD_PATH}{_KEY_ROUTE}", upload_photo_bytes,
        summary="Upload photo bytes to a signed URL from POST .../photos (local storage)",
        tag="photos", status=204, errors=(400, 403, 413),
    )  # fmt: skip
    spec.route(
        app, "GET", f"{PUBLIC_PATH}{_KEY_ROUTE}", download_photo,
        summary="A photo's bytes (local storage)", tag="photos", errors=(404,),
    )  # fmt: skip
