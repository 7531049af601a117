"""The S3 endpoint unreachable (black-holed, or nothing listening) around photo uploads.

Completing a photo while S3 does not answer is a 503 with Retry-After that changes
nothing: the photo stays pending and the listing never points at it. Once S3 answers
again the same completion succeeds, once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest
from moto.server import ThreadedMotoServer

from jangteo.app import create_app
from loadtests.chaos.proxy import TcpProxy
from server.embedded.process import free_port
from server.settings import Settings
from tests.server.test_photos import (
    PNG,
    AiohttpClient,
    JsonObject,
    ask_upload,
    complete,
    create_listing,
    get_listing,
    photo_events,
    photo_row,
    photos_url,
    problem,
)
from tests.support import sign_up

S3_TIMEOUT_S = 0.5


@pytest.fixture
def s3_proxy() -> Iterator[TcpProxy]:
    """A moto S3 server in this process, reached over real HTTP through a proxy."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    proxy = TcpProxy(port).start()
    yield proxy
    proxy.stop()
    server.stop()


def _s3_settings(settings: Settings, endpoint: str) -> Settings:
    return settings.replace(
        s3_endpoint=endpoint,
        s3_access_key="test",
        s3_secret_key="test",
        s3_region="us-east-1",
        s3_bucket=f"photos-{uuid.uuid4().hex[:12]}",
        s3_timeout=S3_TIMEOUT_S,
    )


async def _send(ticket: JsonObject, data: bytes) -> int:
    """PUT the bytes to the presigned URL, straight to S3 as an app would."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            ticket["method"], ticket["upload_url"], data=data, headers=ticket["headers"]
        ) as response,
    ):
        return response.status


async def test_completing_while_s3_is_silent_changes_nothing_and_a_retry_succeeds_once(
    aiohttp_client: AiohttpClient, settings: Settings, s3_proxy: TcpProxy, db: asyncpg.Connection
) -> None:
    client = await aiohttp_client(
        create_app(_s3_settings(settings, f"http://127.0.0.1:{s3_proxy.port}"))
    )
    seller = await sign_up(client)
    listing_id = await create_listing(client, seller)
    ticket = await ask_upload(client, seller, listing_id, "image/png", len(PNG))
    assert await _send(ticket, PNG) == 200

    s3_proxy.blackhole()
    for _ in range(2):  # retried while it is still down: the same answer, nothing changed
        response = await complete(client, seller, listing_id, ticket["photo_id"])
        await problem(response, 503, "storage-unavailable")
        assert int(response.headers["Retry-After"]) >= 1
        assert (await photo_row(db, ticket["photo_id"]))["status"] == "pending"
        assert (await get_listing(client, listing_id))["photos"] == []
        assert await photo_events(db, listing_id) == []

    s3_proxy.restore()
    response = await complete(client, seller, listing_id, ticket["photo_id"])
    assert response.status == 200, await response.text()
    photo = await response.json()
    assert [item["id"] for item in (await get_listing(client, listing_id))["photos"]] == [
        photo["id"]
    ]
    async with aiohttp.ClientSession() as http, http.get(photo["url"]) as fetched:
        assert (fetched.status, await fetched.read()) == (200, PNG)  # it points at the object
    again = await complete(client, seller, listing_id, ticket["photo_id"])
    assert again.status == 200
    assert len(await photo_events(db, listing_id)) == 1  # the listing changed once


async def test_s3_down_is_a_503_and_takes_no_slot(
    aiohttp_client: AiohttpClient, settings: Settings, db: asyncpg.Connection
) -> None:
    # Nothing listens there: the app still starts, and photo requests fail fast and clearly.
    down = _s3_settings(settings, f"http://127.0.0.1:{free_port()}")
    client = await aiohttp_client(create_app(down))
    seller = await sign_up(client)
    listing_id = await create_listing(client, seller)
    body = {"content_type": "image/png", "size": len(PNG)}
    response = await client.post(photos_url(listing_id), json=body, headers=seller.auth)
    await problem(response, 503, "storage-unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    assert await db.fetchval("SELECT count(*) FROM listing_photos") == 0
