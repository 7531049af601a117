"""Listing photos on local storage: signed uploads, verification on completion, and serving."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import ClientResponse, web
from openapi_spec_validator import validate

from jangteo.app import create_app
from server import keys
from server.errors import PROBLEM_CONTENT_TYPE
from server.janitor import ABANDONED_AFTER_TICKET_S, sweep_abandoned_photos
from server.photos.formats import has_magic_number
from server.photos.service import MAX_PHOTOS_PER_LISTING
from server.photos.storage_local import LocalPhotoStorage, derive_upload_secret
from server.settings import Settings
from tests.support import TEST_JWT_SECRET, Account, Client, sign_up

LISTINGS = "/api/v1/listings"
AiohttpClient = Callable[[web.Application], Awaitable[Client]]
JsonObject = dict[str, Any]


def png_bytes(width: int = 1, height: int = 1) -> bytes:
    """A real PNG (8-bit greyscale) of the given size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(width)) for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# A 1x1 JPEG and a 1x1 WebP, as an image library writes them.
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4"
    "UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAABAAEDASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcI"
    "CQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRol"
    "JicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ip"
    "qrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAA"
    "AAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLR"
    "ChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaX"
    "mJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEA"
    "PwDHooorhPqD/9k="
)
WEBP = base64.b64decode(
    "UklGRjoAAABXRUJQVlA4IC4AAACwAQCdASoBAAEAAUAmJaACdLoABDAAAP7x3I/4DdfFtMv/vYL/3YL/3YL/WwAA"
)
PNG = png_bytes(4, 3)
IMAGES = {"image/png": PNG, "image/jpeg": JPEG, "image/webp": WEBP}


@pytest.fixture
def photo_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(data_dir=tmp_path, photo_max_bytes=64 * 1024)


@pytest.fixture
async def photo_client(aiohttp_client: AiohttpClient, photo_settings: Settings) -> Client:
    return await aiohttp_client(create_app(photo_settings))


@pytest.fixture
async def seller(photo_client: Client) -> Account:
    return await sign_up(photo_client)


@pytest.fixture
async def listing_id(photo_client: Client, seller: Account) -> int:
    return await create_listing(photo_client, seller)


async def create_listing(client: Client, account: Account) -> int:
    body = {"title": "Film camera", "price": 120_000, "category": "hobby"}
    response = await client.post(LISTINGS, json=body, headers=account.auth)
    assert response.status == 201, await response.text()
    listing_id: int = (await response.json())["id"]
    return listing_id


def photos_url(listing_id: int | str) -> str:
    return f"{LISTINGS}/{listing_id}/photos"


def complete_url(listing_id: int | str, photo_id: str) -> str:
    return f"{LISTINGS}/{listing_id}/photos/{photo_id}/complete"


async def problem(response: ClientResponse, status: int, slug: str | None = None) -> JsonObject:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_CONTENT_TYPE
    body: JsonObject = await response.json(content_type=None)
    assert body["status"] == status
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    return body


async def ask_upload(
    client: Client, account: Account, listing_id: int, content_type: str, size: int
) -> JsonObject:
    response = await client.post(
        photos_url(listing_id),
        json={"content_type": content_type, "size": size},
        headers=account.auth,
    )
    assert response.status == 201, await response.text()
    ticket: JsonObject = await response.json()
    return ticket


async def put_bytes(
    client: Client, ticket: JsonObject, data: bytes | AsyncIterator[bytes]
) -> ClientResponse:
    """Send the body the way a client follows a ticket: its method, URL and headers."""
    url: str = ticket["upload_url"]
    if url.startswith("/"):  # signed by a LocalPhotoStorage in the test itself
        return await client.request(ticket["method"], url, data=data, headers=ticket["headers"])
    return await client.session.request(ticket["method"], url, data=data, headers=ticket["headers"])


async def complete(
    client: Client, account: Account, listing_id: int, photo_id: str
) -> ClientResponse:
    return await client.post(complete_url(listing_id, photo_id), headers=account.auth)


async def get_listing(client: Client, listing_id: int) -> JsonObject:
    response = await client.get(f"{LISTINGS}/{listing_id}")
    assert response.status == 200, await response.text()
    body: JsonObject = await response.json()
    return body


async def photo_row(db: asyncpg.Connection, photo_id: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM listing_photos WHERE id = $1", uuid.UUID(photo_id))
    assert row is not None
    return row


async def photo_count(db: asyncpg.Connection, listing_id: int) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM listing_photos WHERE listing_id = $1", listing_id
    )
    return count


async def photo_events(db: asyncpg.Connection, listing_id: int) -> list[JsonObject]:
    rows = await db.fetch(
        "SELECT type, data FROM outbox WHERE channel = $1 AND type = 'listing.updated' ORDER BY id",
        f"listing:{listing_id}",
    )
    return [{"type": row["type"], "data": orjson.loads(row["data"])} for row in rows]


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/webp"])
async def test_seller_uploads_completes_and_the_photo_shows_on_the_listing(
    photo_client: Client,
    seller: Account,
    listing_id: int,
    db: asyncpg.Connection,
    photo_settings: Settings,
    content_type: str,
) -> None:
    image = IMAGES[content_type]
    before = await get_listing(photo_client, listing_id)  # also warms the listing cache
    assert before["photos"] == []

    ticket = await ask_upload(photo_client, seller, listing_id, content_type, len(image))
    assert set(ticket) == {"photo_id", "upload_url", "method", "headers", "expires_in"}
    assert ticket["method"] == "PUT"
    # Absolute, like an S3 presigned URL: clients follow both the same way.
    assert ticket["upload_url"].startswith(str(photo_client.make_url("/api/v1/uploads/")))
    assert ticket["headers"] == {"Content-Type": content_type}
    assert ticket["expires_in"] == photo_settings.photo_upload_ttl
    assert uuid.UUID(ticket["photo_id"]).version == 4
    assert (await photo_row(db, ticket["photo_id"]))["status"] == "pending"

    uploaded = await put_bytes(photo_client, ticket, image)
    assert uploaded.status == 204, await uploaded.text()
    assert (await get_listing(photo_client, listing_id))["photos"] == []  # not completed yet

    response = await complete(photo_client, seller, listing_id, ticket["photo_id"])
    assert response.status == 200, await response.text()
    photo = await response.json()
    assert photo["id"] == ticket["photo_id"]
    assert photo["content_type"] == content_type
    assert photo["status"] == "ready"

    row = await photo_row(db, ticket["photo_id"])
    assert row["status"] == "ready"
    assert row["completed_at"] is not None
    assert row["size_bytes"] == len(image)

    after = await get_listing(photo_client, listing_id)
    assert after["photos"] == [
        {"id": photo["id"], "url": photo["url"], "content_type": content_type}
    ]
    assert after["version"] == before["version"] + 1

    served = await photo_client.get(photo["url"])
    assert served.status == 200
    assert await served.read() == image
    assert served.content_type == content_type
    assert "immutable" in served.headers["Cache-Control"]
    assert served.headers["X-Content-Type-Options"] == "nosniff"

    events = await photo_events(db, listing_id)
    assert len(events) == 1
    data = events[0]["data"]
    assert data["listing_id"] == listing_id
    assert data["photo_id"] == photo["id"]
    assert data["changed"] == ["photos"]
    assert data["version"] == after["version"]


async def test_upload_urls_name_the_server_as_a_trusted_proxy_forwards_it(
    aiohttp_client: AiohttpClient, photo_settings: Settings
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example:8443"}

    async def upload_url(client: Client, headers: dict[str, str]) -> str:
        seller = await sign_up(client)
        listing_id = await create_listing(client, seller)
        response = await client.post(
            photos_url(listing_id),
            json={"content_type": "image/png", "size": len(PNG)},
            headers={**seller.auth, **headers},
        )
        assert response.status == 201, await response.text()
        url: str = (await response.json())["upload_url"]
        return url

    direct = await aiohttp_client(create_app(photo_settings))
    # From an untrusted peer the forwarded headers are the client's own words: ignored.
    assert (await upload_url(direct, forwarded)).startswith(f"http://{direct.host}:")
    behind = await aiohttp_client(
        create_app(photo_settings.replace(trusted_proxies=("127.0.0.1",)))
    )
    url = await upload_url(behind, forwarded)
    assert url.startswith("https://shop.example:8443/api/v1/uploads/listings/")
    bad_host = {"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "evil/path"}
    assert (await upload_url(behind, bad_host)).startswith(f"http://{behind.host}:")


async def test_completing_twice_answers_the_same_and_changes_nothing_more(
    photo_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    assert (await put_bytes(photo_client, ticket, PNG)).status == 204
    first = await complete(photo_client, seller, listing_id, ticket["photo_id"])
    assert first.status == 200
    second = await complete(photo_client, seller, listing_id, ticket["photo_id"])
    assert second.status == 200
    assert await second.json() == await first.json()
    assert len(await photo_events(db, listing_id)) == 1
    assert (await get_listing(photo_client, listing_id))["version"] == 2


async def test_parallel_completions_make_one_change(
    photo_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    assert (await put_bytes(photo_client, ticket, PNG)).status == 204
    responses = await asyncio.gather(
        *(complete(photo_client, seller, listing_id, ticket["photo_id"]) for _ in range(5))
    )
    assert [response.status for response in responses] == [200] * 5
    assert len(await photo_events(db, listing_id)) == 1
    assert (await get_listing(photo_client, listing_id))["version"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content_type": "image/gif", "size": 10}, "content_type"),
        ({"content_type": "text/html", "size": 10}, "content_type"),
        ({"content_type": "image/png", "size": 0}, "size"),
        ({"content_type": "image/png", "size": -5}, "size"),
        ({"content_type": "image/png", "size": 64 * 1024 + 1}, "size"),
        ({"content_type": "image/png", "size": "10"}, "size"),
        ({"content_type": "image/png", "size": 10, "key": "listings/1/x.png"}, "key"),
        ({"content_type": "image/png"}, "size"),
        ({"size": 10}, "content_type"),
    ],
)
async def test_bad_upload_requests_are_refused_with_field_errors(
    photo_client: Client,
    seller: Account,
    listing_id: int,
    db: asyncpg.Connection,
    body: JsonObject,
    field: str,
) -> None:
    response = await photo_client.post(photos_url(listing_id), json=body, headers=seller.auth)
    errors = (await problem(response, 422))["errors"]
    assert field in {error["field"] for error in errors}, errors
    assert await db.fetchval("SELECT count(*) FROM listing_photos") == 0


async def test_the_size_cap_is_the_setting(
    photo_client: Client, seller: Account, listing_id: int, photo_settings: Settings
) -> None:
    cap = photo_settings.photo_max_bytes
    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", cap)
    assert ticket["upload_url"]


async def test_non_json_and_malformed_bodies(
    photo_client: Client, seller: Account, listing_id: int
) -> None:
    not_json = await photo_client.post(
        photos_url(listing_id),
        data=b"size=10",
        headers={**seller.auth, "Content-Type": "text/plain"},
    )
    await problem(not_json, 415)
    malformed = await photo_client.post(
        photos_url(listing_id),
        data=b"{nope",
        headers={**seller.auth, "Content-Type": "application/json"},
    )
    await problem(malformed, 400)


async def test_only_the_seller_may_add_or_complete_photos(
    photo_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    other = await sign_up(photo_client)
    body = {"content_type": "image/png", "size": len(PNG)}
    refused = await photo_client.post(photos_url(listing_id), json=body, headers=other.auth)
    await problem(refused, 403)
    assert await db.fetchval("SELECT count(*) FROM listing_photos") == 0

    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    assert (await put_bytes(photo_client, ticket, PNG)).status == 204
    await problem(await complete(photo_client, other, listing_id, ticket["photo_id"]), 403)
    assert (await photo_row(db, ticket["photo_id"]))["status"] == "pending"


async def test_unknown_listings_and_photos_are_404(
    photo_client: Client, seller: Account, listing_id: int
) -> None:
    body = {"content_type": "image/png", "size": 10}
    for missing in ("999999", "abc", "-1", "99999999999999999999999"):
        response = await photo_client.post(photos_url(missing), json=body, headers=seller.auth)
        await problem(response, 404)
    await problem(await complete(photo_client, seller, 999999, str(uuid.uuid4())), 404)
    await problem(await complete(photo_client, seller, listing_id, str(uuid.uuid4())), 404)
    await problem(await complete(photo_client, seller, listing_id, "not-a-uuid"), 404)


async def test_a_photo_belongs_to_its_own_listing(
    photo_client: Client, seller: Account, listing_id: int
) -> None:
    other_listing = await create_listing(photo_client, seller)
    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    assert (await put_bytes(photo_client, ticket, PNG)).status == 204
    response = await complete(photo_client, seller, other_listing, ticket["photo_id"])
    await problem(response, 404, "photo-not-found")


async def test_hidden_listings_take_no_photos(
    photo_client: Client, seller: Account, listing_id: int
) -> None:
    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    assert (await put_bytes(photo_client, ticket, PNG)).status == 204
    hidden = await photo_client.delete(
        f"{LISTINGS}/{listing_id}", headers={**seller.auth, "If-Match": "*"}
    )
    assert hidden.status == 204, await hidden.text()
    body = {"content_type": "image/png", "size": 10}
    response = await photo_client.post(photos_url(listing_id), json=body, headers=seller.auth)
    await problem(response, 404)
    await problem(await complete(photo_client, seller, listing_id, ticket["photo_id"]), 404)


async def test_photo_endpoints_need_a_token(photo_client: Client, listing_id: int) -> None:
    body = {"content_type": "image/png", "size": 10}
    response = await photo_client.post(photos_url(listing_id), json=body)
    await problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await problem(await photo_client.post(complete_url(listing_id, str(uuid.uuid4()))), 401)


async def test_completing_before_uploading_is_a_conflict(
    photo_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    response = await complete(photo_client, seller, listing_id, ticket["photo_id"])
    await problem(response, 409, "photo-not-uploaded")
    assert (await photo_row(db, ticket["photo_id"]))["status"] == "pending"
    assert (await get_listing(photo_client, listing_id))["photos"] == []


async def test_bytes_of_another_type_are_refused_and_the_photo_stays_pending(
    photo_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    # Declared PNG, sent JPEG bytes cut to the declared size: right size, wrong magic number.
    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    assert (await put_bytes(photo_client, ticket, JPEG[: len(PNG)])).status == 204
    response = await complete(photo_client, seller, listing_id, ticket["photo_id"])
    await problem(response, 422, "photo-invalid")
    assert (await photo_row(db, ticket["photo_id"]))["status"] == "pending"
    assert (await get_listing(photo_client, listing_id))["photos"] == []
    assert await photo_events(db, listing_id) == []

    # The same ticket may send the right bytes, and then the photo completes.
    assert (await put_bytes(photo_client, ticket, PNG)).status == 204
    fixed = await complete(photo_client, seller, listing_id, ticket["photo_id"])
    assert fixed.status == 200, await fixed.text()


async def test_a_stored_object_of_another_size_is_refused(
    photo_client: Client,
    seller: Account,
    listing_id: int,
    db: asyncpg.Connection,
    photo_settings: Settings,
) -> None:
    ticket = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    key = (await photo_row(db, ticket["photo_id"]))["object_key"]
    # The upload route cannot store another size; a file put there by other means can.
    path = photo_settings.data_dir / "photos" / key
    path.parent.mkdir(parents=True)
    path.write_bytes(PNG + b"trailing")
    response = await complete(photo_client, seller, listing_id, ticket["photo_id"])
    await problem(response, 422, "photo-invalid")
    assert (await photo_row(db, ticket["photo_id"]))["status"] == "pending"


async def test_at_most_ten_photos_per_listing(
    photo_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    for _ in range(MAX_PHOTOS_PER_LISTING):
        await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    body = {"content_type": "image/png", "size": len(PNG)}
    response = await photo_client.post(photos_url(listing_id), json=body, headers=seller.auth)
    await problem(response, 409, "too-many-photos")
    count = await db.fetchval(
        "SELECT count(*) FROM listing_photos WHERE listing_id = $1", listing_id
    )
    assert count == MAX_PHOTOS_PER_LISTING


async def test_parallel_requests_never_exceed_ten_photos(
    photo_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    body = {"content_type": "image/png", "size": len(PNG)}
    responses = await asyncio.gather(
        *(
            photo_client.post(photos_url(listing_id), json=body, headers=seller.auth)
            for _ in range(MAX_PHOTOS_PER_LISTING + 6)
        )
    )
    statuses = sorted(response.status for response in responses)
    assert statuses == [201] * MAX_PHOTOS_PER_LISTING + [409] * 6
    count = await db.fetchval(
        "SELECT count(*) FROM listing_photos WHERE listing_id = $1", listing_id
    )
    assert count == MAX_PHOTOS_PER_LISTING


async def test_expired_pending_photos_free_their_slot(
    photo_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    for _ in range(MAX_PHOTOS_PER_LISTING):
        await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    # One ticket's lifetime passes without its upload being completed.
    await db.execute(
        "UPDATE listing_photos SET created_at = now() - interval '1 day'"
        " WHERE id = (SELECT id FROM listing_photos WHERE listing_id = $1 LIMIT 1)",
        listing_id,
    )
    await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))


@pytest.fixture
async def ticket(photo_client: Client, seller: Account, listing_id: int) -> JsonObject:
    return await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))


async def assert_nothing_stored(
    photo_client: Client, seller: Account, listing_id: int, ticket: JsonObject
) -> None:
    response = await complete(photo_client, seller, listing_id, ticket["photo_id"])
    await problem(response, 409, "photo-not-uploaded")


def with_query(url: str, **changes: str) -> str:
    path, _, query = url.partition("?")
    params = dict(part.split("=", 1) for part in query.split("&"))
    params.update(changes)
    return path + "?" + "&".join(f"{name}={value}" for name, value in params.items())


@pytest.mark.parametrize(
    "tamper",
    [
        {"sig": "0" * 64},
        {"size": str(len(PNG) + 1)},
        {"type": "image%2Fjpeg"},
        {"expires": str(int(time.time()) + 86_400)},
    ],
)
async def test_an_altered_upload_url_is_forbidden(
    photo_client: Client,
    seller: Account,
    listing_id: int,
    ticket: JsonObject,
    tamper: dict[str, str],
) -> None:
    altered = {**ticket, "upload_url": with_query(ticket["upload_url"], **tamper)}
    await problem(await put_bytes(photo_client, altered, PNG), 403, "invalid-upload-signature")
    await assert_nothing_stored(photo_client, seller, listing_id, ticket)


async def test_a_ticket_for_another_key_is_forbidden(
    photo_client: Client, seller: Account, listing_id: int, ticket: JsonObject
) -> None:
    path, _, query = ticket["upload_url"].partition("?")
    other_key_path = path.rsplit("/", 1)[0] + "/" + uuid.uuid4().hex + ".png"
    moved = {**ticket, "upload_url": f"{other_key_path}?{query}"}
    await problem(await put_bytes(photo_client, moved, PNG), 403)
    missing = {**ticket, "upload_url": path}
    await problem(await put_bytes(photo_client, missing, PNG), 403)


async def test_an_expired_upload_url_is_forbidden(
    photo_client: Client,
    seller: Account,
    listing_id: int,
    ticket: JsonObject,
    db: asyncpg.Connection,
    photo_settings: Settings,
) -> None:
    key = (await photo_row(db, ticket["photo_id"]))["object_key"]
    # Correctly signed, but issued by a clock two ticket lifetimes in the past.
    past = LocalPhotoStorage(
        photo_settings.data_dir / "photos",
        derive_upload_secret(TEST_JWT_SECRET),
        photo_settings.photo_upload_ttl,
        clock=lambda: time.time() - 2 * photo_settings.photo_upload_ttl,
    )
    stale = await past.upload_ticket(key, "image/png", len(PNG))
    expired = {**ticket, "upload_url": stale.url}
    await problem(await put_bytes(photo_client, expired, PNG), 403, "upload-expired")
    await assert_nothing_stored(photo_client, seller, listing_id, ticket)


async def test_a_url_signed_with_another_secret_is_forbidden(
    photo_client: Client,
    seller: Account,
    listing_id: int,
    ticket: JsonObject,
    db: asyncpg.Connection,
    photo_settings: Settings,
) -> None:
    key = (await photo_row(db, ticket["photo_id"]))["object_key"]
    foreign = LocalPhotoStorage(
        photo_settings.data_dir / "photos", derive_upload_secret("another-secret"), 600
    )
    forged = await foreign.upload_ticket(key, "image/png", len(PNG))
    await problem(await put_bytes(photo_client, {**ticket, "upload_url": forged.url}, PNG), 403)
    await assert_nothing_stored(photo_client, seller, listing_id, ticket)


async def test_the_body_must_match_the_ticket(
    photo_client: Client, seller: Account, listing_id: int, ticket: JsonObject
) -> None:
    wrong_type = {**ticket, "headers": {"Content-Type": "image/jpeg"}}
    await problem(await put_bytes(photo_client, wrong_type, PNG), 400)
    await problem(await put_bytes(photo_client, ticket, PNG[:-1]), 400)
    await problem(await put_bytes(photo_client, ticket, b""), 400)
    await problem(await put_bytes(photo_client, ticket, PNG + b"extra"), 413)

    async def streamed(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 7):
            yield data[start : start + 7]

    # Without Content-Length (chunked), the limit is enforced while reading.
    await problem(await put_bytes(photo_client, ticket, streamed(PNG + b"extra")), 413)
    await problem(await put_bytes(photo_client, ticket, streamed(PNG[:-3])), 400)
    await assert_nothing_stored(photo_client, seller, listing_id, ticket)

    assert (await put_bytes(photo_client, ticket, streamed(PNG))).status == 204
    assert (await complete(photo_client, seller, listing_id, ticket["photo_id"])).status == 200


async def test_a_missing_photo_file_is_404(photo_client: Client) -> None:
    await problem(await photo_client.get(f"/photos/listings/1/{uuid.uuid4().hex}.png"), 404)
    await problem(await photo_client.get("/photos/listings/1/not-a-key.png"), 404)
    await problem(await photo_client.get("/photos/listings/1/..%2F..%2Fjwt-secret"), 404)


async def test_photo_routes_are_documented(photo_client: Client) -> None:
    spec = await (await photo_client.get("/openapi.json")).json()
    validate(spec)
    served = {
        (route.resource.canonical, route.method.lower())
        for route in photo_client.app.router.routes()
        if route.resource is not None
        and route.method not in ("HEAD", "*")
        # Static files (Swagger UI's assets) are not API operations.
        and not isinstance(route.resource, web.StaticResource)
    }
    documented = {(path, method) for path, methods in spec["paths"].items() for method in methods}
    assert served == documented
    assert {
        ("/api/v1/listings/{id}/photos", "post"),
        ("/api/v1/listings/{id}/photos/{photo_id}/complete", "post"),
        ("/api/v1/uploads/listings/{listing_id}/{name}", "put"),
        ("/photos/listings/{listing_id}/{name}", "get"),
    } <= served


@pytest.mark.parametrize(
    ("content_type", "head", "expected"),
    [
        ("image/jpeg", JPEG[:16], True),
        ("image/png", PNG[:16], True),
        ("image/webp", WEBP[:16], True),
        ("image/png", JPEG[:16], False),
        ("image/jpeg", PNG[:16], False),
        ("image/webp", b"RIFF\x24\x00\x00\x00WAVEfmt ", False),
        ("image/png", b"\x89PNG\r\n", False),
        ("image/gif", b"GIF89a", False),
    ],
)
def test_magic_numbers(content_type: str, head: bytes, expected: bool) -> None:
    assert has_magic_number(content_type, head) is expected


def test_photo_settings_come_from_the_environment() -> None:
    defaults = Settings.from_env({})
    assert defaults.photo_max_bytes == 10 * 1024 * 1024
    assert defaults.photo_upload_ttl == 600
    assert defaults.s3_bucket == "jangteo-photos"
    assert defaults.s3_public_url is None
    assert defaults.s3_presign_endpoint is None
    settings = Settings.from_env(
        {
            "JANGTEO_PHOTO_MAX_BYTES": "2048",
            "JANGTEO_PHOTO_UPLOAD_TTL": "60",
            "JANGTEO_S3_ENDPOINT": "http://minio:9000",
            "JANGTEO_S3_BUCKET": "photos",
            "JANGTEO_S3_REGION": "ap-northeast-2",
            "JANGTEO_S3_ACCESS_KEY": "key",
            "JANGTEO_S3_SECRET_KEY": "secret",
            "JANGTEO_S3_PUBLIC_URL": "https://cdn.example/photos",
            "JANGTEO_S3_PRESIGN_ENDPOINT": "http://localhost:9000",
            "JANGTEO_S3_TIMEOUT": "1.5",
        }
    )
    assert settings.photo_max_bytes == 2048
    assert settings.photo_upload_ttl == 60
    assert settings.s3_endpoint == "http://minio:9000"
    assert settings.s3_bucket == "photos"
    assert settings.s3_region == "ap-northeast-2"
    assert (settings.s3_access_key, settings.s3_secret_key) == ("key", "secret")
    assert settings.s3_public_url == "https://cdn.example/photos"
    assert settings.s3_presign_endpoint == "http://localhost:9000"
    assert settings.s3_timeout == 1.5


async def test_a_photo_larger_than_the_json_body_limit_uploads(
    aiohttp_client: AiohttpClient, settings: Settings, tmp_path: Path
) -> None:
    """Uploads stream under the photo limit, not under JANGTEO_MAX_BODY_BYTES (64 KiB)."""
    big_settings = settings.replace(data_dir=tmp_path, photo_max_bytes=1024 * 1024)
    client = await aiohttp_client(create_app(big_settings))
    account = await sign_up(client)
    listing = await create_listing(client, account)
    image = PNG + os.urandom(200_000)
    ticket = await ask_upload(client, account, listing, "image/png", len(image))
    uploaded = await put_bytes(client, ticket, image)
    assert uploaded.status == 204, await uploaded.text()
    response = await complete(client, account, listing, ticket["photo_id"])
    assert response.status == 200, await response.text()
    served = await client.get((await response.json())["url"])
    assert await served.read() == image


async def test_the_janitor_forgets_abandoned_uploads_and_their_files(
    photo_client: Client,
    seller: Account,
    listing_id: int,
    db: asyncpg.Connection,
    photo_settings: Settings,
) -> None:
    abandoned = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    assert (await put_bytes(photo_client, abandoned, PNG)).status == 204
    fresh = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    done = await ask_upload(photo_client, seller, listing_id, "image/png", len(PNG))
    assert (await put_bytes(photo_client, done, PNG)).status == 204
    assert (await complete(photo_client, seller, listing_id, done["photo_id"])).status == 200
    long_ago = photo_settings.photo_upload_ttl + ABANDONED_AFTER_TICKET_S + 60
    await db.execute(
        "UPDATE listing_photos SET created_at = now() - make_interval(secs => $1)"
        " WHERE id = any($2::uuid[])",
        long_ago,
        [uuid.UUID(abandoned["photo_id"]), uuid.UUID(done["photo_id"])],
    )
    storage = photo_client.app[keys.photo_storage_key]
    abandoned_key = (await photo_row(db, abandoned["photo_id"]))["object_key"]
    assert await storage.inspect(abandoned_key) is not None

    assert await sweep_abandoned_photos(photo_client.app) == 1
    remaining = {str(row["id"]) for row in await db.fetch("SELECT id FROM listing_photos")}
    assert remaining == {fresh["photo_id"], done["photo_id"]}
    assert await storage.inspect(abandoned_key) is None
    assert len((await get_listing(photo_client, listing_id))["photos"]) == 1
    assert await sweep_abandoned_photos(photo_client.app) == 0
