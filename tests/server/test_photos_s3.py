"""Listing photos on S3: presigned uploads over real HTTP to a moto server, then verification."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from jangteo.app import create_app
from server import keys
from server.embedded.process import free_port
from server.settings import Settings
from tests.server.test_photos import (
    IMAGES,
    JPEG,
    PNG,
    AiohttpClient,
    JsonObject,
    ask_upload,
    complete,
    create_listing,
    get_listing,
    photo_events,
    photo_row,
    problem,
)
from tests.support import Account, Client, sign_up


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server in this process, reached over real HTTP like MinIO would be."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str) -> Settings:
    # A bucket per test, so creating it at start-up is part of every test.
    return settings.replace(
        s3_endpoint=s3_endpoint,
        s3_access_key="test",
        s3_secret_key="test",
        s3_region="us-east-1",
        s3_bucket=f"photos-{uuid.uuid4().hex[:12]}",
        s3_timeout=2.0,
    )


@pytest.fixture
async def s3_client(aiohttp_client: AiohttpClient, s3_settings: Settings) -> Client:
    return await aiohttp_client(create_app(s3_settings))


@pytest.fixture
async def seller(s3_client: Client) -> Account:
    return await sign_up(s3_client)


@pytest.fixture
async def listing_id(s3_client: Client, seller: Account) -> int:
    return await create_listing(s3_client, seller)


async def send(ticket: JsonObject, data: bytes) -> int:
    """PUT the bytes to the presigned URL, as an app would: straight to S3, not via jangteo."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            ticket["method"], ticket["upload_url"], data=data, headers=ticket["headers"]
        ) as response,
    ):
        return response.status


async def fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.read()


async def bucket_keys(s3_settings: Settings) -> list[str]:
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=s3_settings.s3_endpoint,
        region_name=s3_settings.s3_region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ) as s3:
        listed = await s3.list_objects_v2(Bucket=s3_settings.s3_bucket)
        return [item["Key"] for item in listed.get("Contents", [])]


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/webp"])
async def test_presigned_upload_then_complete_shows_the_photo(
    s3_client: Client,
    s3_settings: Settings,
    seller: Account,
    listing_id: int,
    db: asyncpg.Connection,
    content_type: str,
) -> None:
    image = IMAGES[content_type]
    ticket = await ask_upload(s3_client, seller, listing_id, content_type, len(image))
    assert ticket["method"] == "PUT"
    assert ticket["upload_url"].startswith(f"{s3_settings.s3_endpoint}/{s3_settings.s3_bucket}/")
    assert "X-Amz-Signature=" in ticket["upload_url"]
    assert ticket["headers"] == {"Content-Type": content_type}
    assert await send(ticket, image) == 200

    key = (await photo_row(db, ticket["photo_id"]))["object_key"]
    assert await bucket_keys(s3_settings) == [key]

    response = await complete(s3_client, seller, listing_id, ticket["photo_id"])
    assert response.status == 200, await response.text()
    photo = await response.json()
    assert photo["status"] == "ready"
    assert photo["content_type"] == content_type
    assert await fetch(photo["url"]) == (200, image)
    assert (await photo_row(db, ticket["photo_id"]))["status"] == "ready"

    listing = await get_listing(s3_client, listing_id)
    assert [(item["id"], item["content_type"]) for item in listing["photos"]] == [
        (photo["id"], content_type)
    ]
    assert await fetch(listing["photos"][0]["url"]) == (200, image)
    assert len(await photo_events(db, listing_id)) == 1

    again = await complete(s3_client, seller, listing_id, ticket["photo_id"])
    assert again.status == 200
    assert (await again.json())["id"] == photo["id"]
    assert len(await photo_events(db, listing_id)) == 1


async def test_no_local_upload_routes_with_s3(s3_client: Client) -> None:
    routes = {
        route.resource.canonical
        for route in s3_client.app.router.routes()
        if route.resource is not None
    }
    assert not any(path.startswith(("/api/v1/uploads/", "/photos/")) for path in routes)


async def test_completing_before_uploading_is_a_conflict(
    s3_client: Client, seller: Account, listing_id: int, db: asyncpg.Connection
) -> None:
    ticket = await ask_upload(s3_client, seller, listing_id, "image/png", len(PNG))
    response = await complete(s3_client, seller, listing_id, ticket["photo_id"])
    await problem(response, 409, "photo-not-uploaded")
    assert (await photo_row(db, ticket["photo_id"]))["status"] == "pending"


@pytest.mark.parametrize(
    ("declared", "sent"),
    [
        (PNG, JPEG[: len(PNG)]),
        # moto, like some S3-compatible servers, does not enforce the signed length.
        (PNG, PNG + b"more bytes than declared"),
        (PNG, PNG[:10]),
    ],
    ids=["wrong-magic-number", "longer", "shorter"],
)
async def test_objects_that_do_not_match_the_declaration_are_refused(
    s3_client: Client,
    seller: Account,
    listing_id: int,
    db: asyncpg.Connection,
    declared: bytes,
    sent: bytes,
) -> None:
    ticket = await ask_upload(s3_client, seller, listing_id, "image/png", len(declared))
    assert await send(ticket, sent) == 200
    response = await complete(s3_client, seller, listing_id, ticket["photo_id"])
    await problem(response, 422, "photo-invalid")
    assert (await photo_row(db, ticket["photo_id"]))["status"] == "pending"
    assert (await get_listing(s3_client, listing_id))["photos"] == []
    assert await photo_events(db, listing_id) == []


async def test_a_public_base_url_replaces_presigned_downloads(
    aiohttp_client: AiohttpClient, s3_settings: Settings, db: asyncpg.Connection
) -> None:
    base = "https://cdn.example/jangteo-photos"
    client = await aiohttp_client(create_app(s3_settings.replace(s3_public_url=base)))
    seller = await sign_up(client)
    listing_id = await create_listing(client, seller)
    ticket = await ask_upload(client, seller, listing_id, "image/png", len(PNG))
    assert await send(ticket, PNG) == 200
    response = await complete(client, seller, listing_id, ticket["photo_id"])
    assert response.status == 200, await response.text()
    key = (await photo_row(db, ticket["photo_id"]))["object_key"]
    assert (await response.json())["url"] == f"{base}/{key}"


async def test_presigned_urls_name_s3_as_clients_reach_it(
    aiohttp_client: AiohttpClient, s3_settings: Settings, s3_endpoint: str
) -> None:
    # jangteo reaches S3 as 127.0.0.1; its clients know it by another name.
    outside = s3_endpoint.replace("127.0.0.1", "localhost")
    client = await aiohttp_client(create_app(s3_settings.replace(s3_presign_endpoint=outside)))
    seller = await sign_up(client)
    listing_id = await create_listing(client, seller)
    ticket = await ask_upload(client, seller, listing_id, "image/png", len(PNG))
    assert ticket["upload_url"].startswith(f"{outside}/{s3_settings.s3_bucket}/")
    assert await send(ticket, PNG) == 200  # the signature covers the outside host name
    response = await complete(client, seller, listing_id, ticket["photo_id"])
    assert response.status == 200, await response.text()
    photo_url = (await response.json())["url"]
    assert photo_url.startswith(f"{outside}/")
    assert await fetch(photo_url) == (200, PNG)


async def test_deleting_an_object_removes_it_from_the_bucket(
    s3_client: Client,
    s3_settings: Settings,
    seller: Account,
    listing_id: int,
    db: asyncpg.Connection,
) -> None:
    ticket = await ask_upload(s3_client, seller, listing_id, "image/png", len(PNG))
    assert await send(ticket, PNG) == 200
    key = (await photo_row(db, ticket["photo_id"]))["object_key"]
    storage = s3_client.app[keys.photo_storage_key]
    assert await storage.inspect(key) is not None
    await storage.delete(key)
    assert await storage.inspect(key) is None
    assert await bucket_keys(s3_settings) == []
    await storage.delete(key)  # deleting what is gone is harmless
