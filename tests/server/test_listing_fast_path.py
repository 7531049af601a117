"""Cached listing reads answered before routing: the general path's answer, and its metrics."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter

import asyncpg
import pytest
from aiohttp import ClientResponse, web

from server import keys
from server.listings.cache import detail_base
from server.listings.fast_path import ListingFastPath, fast_path_key
from server.settings import Settings
from tests.conftest import ClientFactory
from tests.server.listings_support import cache_counts, create_listing, etag_of, item_url
from tests.server.listings_support import quick_accounts as accounts
from tests.support import Client

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
ROUTE = 'route="/api/v1/listings/{id}"'


async def _serving(client: Client) -> ListingFastPath:
    """The app's fast path, once its near cache serves (subscribed, a lease that lasts)."""
    near = client.app[keys.listing_cache_key].near
    for _ in range(200):
        if near.enabled:
            break
        await asyncio.sleep(0.05)
    assert near.enabled
    near.renew(math.inf)  # a slow moment must not end the lease mid-test
    return client.app[fast_path_key]


async def _listing(client: Client, db: asyncpg.Connection, settings: Settings) -> int:
    """A listing whose detail this process holds a near copy of."""
    (seller,) = await accounts(db, settings, 1)
    listing = await create_listing(client, seller)
    assert (await client.get(item_url(listing["id"]))).status == 200  # fills the copy
    assert detail_base(listing["id"]) in client.app[keys.listing_cache_key].near
    return int(listing["id"])


def _refuse_general(fast: ListingFastPath, monkeypatch: pytest.MonkeyPatch) -> None:
    async def general(request: web.Request) -> web.StreamResponse:
        raise AssertionError(f"{request.method} {request.path_qs} went the general way")

    monkeypatch.setattr(fast, "general", general)


Answer = tuple[int, list[tuple[str, str]], bytes, str]


async def _answer(response: ClientResponse) -> Answer:
    """Status, headers but Date and X-Request-ID (in any order: the fast path adds the
    security headers before aiohttp adds Content-Length and Date), body, request id."""
    headers = sorted(
        (name.lower(), value)
        for name, value in response.headers.items()
        if name.lower() not in ("date", "x-request-id")
    )
    return response.status, headers, await response.read(), response.headers["X-Request-ID"]


def _requests(etag: str) -> list[dict[str, str]]:
    return [
        {},
        {"If-None-Match": etag},
        {"If-None-Match": f'"other", W/{etag}'},
        {"If-None-Match": '"other"'},
        {"X-Request-ID": "client-chosen.id_1"},
        {"X-Request-ID": "not a valid id!"},
    ]


async def test_the_fast_path_answers_exactly_as_the_general_path(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await make_client(settings)
    fast = await _serving(client)
    listing_id = await _listing(client, db, settings)
    url = item_url(listing_id)
    etag = (await client.get(url)).headers["ETag"]

    fast.enabled = False
    general = [await _answer(await client.get(url, headers=h)) for h in _requests(etag)]
    fast.enabled = True
    _refuse_general(fast, monkeypatch)
    answered = [await _answer(await client.get(url, headers=h)) for h in _requests(etag)]

    assert [a[:3] for a in answered] == [g[:3] for g in general]
    assert [a[0] for a in answered] == [200, 304, 304, 200, 200, 200]
    assert answered[4][3] == "client-chosen.id_1"
    security = {"server", "x-content-type-options", "referrer-policy"}
    for status, headers, body, request_id in answered:
        assert {"etag", "cache-control", *security} <= {name for name, _ in headers}
        assert (body == b"") == (status == 304)
        assert request_id == "client-chosen.id_1" or GENERATED_ID.match(request_id)
    assert dict(answered[0][1])["content-type"] == "application/json"
    assert dict(answered[0][1])["etag"] == etag


def _counts(text: str) -> Counter[str]:
    """The listing route's request counts and latency observations, and cache outcomes."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if ROUTE in line and (
            line.startswith("jangteo_http_requests_total")
            or line.startswith("jangteo_http_request_duration_seconds_count")
        ):
            name, sample = line.rsplit(" ", 1)
            counts[name] = int(float(sample))
    for (kind, outcome), count in cache_counts(text).items():
        counts[f"cache {kind} {outcome}"] = count
    return counts


async def test_the_fast_path_counts_what_the_general_path_counts(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await make_client(settings)
    fast = await _serving(client)
    listing_id = await _listing(client, db, settings)
    url = item_url(listing_id)
    etag = (await client.get(url)).headers["ETag"]
    metrics = client.app[keys.metrics_key]

    async def counted() -> Counter[str]:
        before = _counts(metrics.render().decode())
        for headers in _requests(etag):
            await client.get(url, headers=headers)
        after = _counts(metrics.render().decode())
        after.subtract(before)
        return +after

    fast.enabled = False
    general = await counted()
    fast.enabled = True
    _refuse_general(fast, monkeypatch)
    assert await counted() == general
    assert general["cache detail local"] == len(_requests(etag))
    assert general[f'jangteo_http_requests_total{{method="GET",{ROUTE},status="304"}}'] == 2


@pytest.mark.parametrize(
    ("method", "suffix", "headers", "data"),
    [
        ("GET", "?fields=all", {}, None),  # a query string
        ("GET", "/", {}, None),
        ("GET", "/like", {}, None),
        ("HEAD", "", {}, None),
        ("GET", "", {"Content-Type": "application/json"}, b"{}"),  # a body
        ("GET", "", {"Expect": "100-continue"}, None),
    ],
)
async def test_anything_else_goes_the_general_way(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
    method: str,
    suffix: str,
    headers: dict[str, str],
    data: bytes | None,
) -> None:
    """Also shows that aiohttp's server calls the fast path at all (see ``install``)."""
    client = await make_client(settings)
    fast = await _serving(client)
    listing_id = await _listing(client, db, settings)
    general = fast.general
    seen: list[str] = []

    async def counting(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        return await general(request)

    fast.general = counting
    response = await client.request(
        method, item_url(listing_id) + suffix, headers=headers, data=data
    )
    assert seen == [item_url(listing_id) + suffix]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_unknown_and_uncached_ids_go_the_general_way(
    make_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    client = await make_client(settings)
    fast = await _serving(client)
    listing_id = await _listing(client, db, settings)
    general = fast.general
    seen: list[str] = []

    async def counting(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        return await general(request)

    fast.general = counting
    unknown = item_url(listing_id + 1000)
    for url in (unknown, unknown, item_url(0), item_url("9" * 30)):
        assert (await client.get(url)).status == 404  # the second: from the empty copy
    assert seen == [unknown, unknown, item_url(0), item_url("9" * 30)]


async def test_a_change_is_read_back_at_once(
    make_client: ClientFactory,
    settings: Settings,
    db: asyncpg.Connection,
) -> None:
    client = await make_client(settings)
    await _serving(client)
    (seller,) = await accounts(db, settings, 1)
    listing = await create_listing(client, seller)
    url = item_url(listing["id"])
    for price in (4_000, 3_000):
        etag = (await client.get(url)).headers["ETag"]  # the copy is held again
        assert detail_base(listing["id"]) in client.app[keys.listing_cache_key].near
        patched = await client.patch(
            url, json={"price": price}, headers={**seller.auth, "If-Match": etag}
        )
        assert patched.status == 200
        read = await client.get(url, headers={"If-None-Match": etag})
        assert read.status == 200
        assert (await read.json())["price"] == price
        assert read.headers["ETag"] == etag_of(await read.json()) != etag
