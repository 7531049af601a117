"""The feed: each filter, literal search, keyset paging under inserts, limits, and indexes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from db.migrate import migrate
from db.queries.listings import FeedFilter, feed_sql
from server.cursors import encode_cursor
from server.settings import Settings
from tests.server.listings_support import (
    LISTINGS,
    JsonObject,
    create_listing,
    field_errors,
    item_url,
    problem,
    quick_accounts,
)
from tests.support import Account, Client


@dataclass(frozen=True, slots=True)
class Catalog:
    """A small market: two sellers in two regions and listings made to be told apart."""

    mapo: Account
    busan: Account
    ids: dict[str, int]

    def of(self, *names: str) -> list[int]:
        """The ids of ``names``, newest first (as the feed orders them)."""
        return sorted((self.ids[name] for name in names), reverse=True)


async def feed(client: Client, **params: str | int) -> JsonObject:
    response = await client.get(LISTINGS, params={k: str(v) for k, v in params.items()})
    assert response.status == 200, await response.text()
    body: JsonObject = await response.json()
    return body


async def feed_ids(client: Client, **params: str | int) -> list[int]:
    body = await feed(client, **params)
    assert body["next_cursor"] is None  # every catalog query fits one page
    return [item["id"] for item in body["items"]]


@pytest.fixture
async def catalog(client: Client, db: asyncpg.Connection, settings: Settings) -> Catalog:
    mapo = (await quick_accounts(db, settings, 1, region="seoul-mapo"))[0]
    busan = (await quick_accounts(db, settings, 1, region="busan-haeundae"))[0]
    specs: list[tuple[str, Account, dict[str, Any]]] = [
        ("iphone", mapo, {"title": "iPhone 13 mini", "category": "digital", "price": 500_000}),
        ("bike", mapo, {"title": "자전거 팝니다", "category": "sports", "price": 80_000}),
        (
            "cooker",
            busan,
            {
                "title": "Rice cooker",
                "description": "쿠쿠 밥솥, 자전거 아님",
                "price": 30_000,
                "category": "appliances",
            },
        ),
        ("shirt", mapo, {"title": "100% cotton shirt", "category": "fashion", "price": 10_000}),
        ("scarf", busan, {"title": "100 cotton scarf", "category": "fashion", "price": 10_001}),
        ("ab", mapo, {"title": "Model a_b kit", "category": "hobby", "price": 0}),
        ("axb", busan, {"title": "Model axb kit", "category": "hobby", "price": 9_999}),
        ("slash", mapo, {"title": "back\\slash poster", "category": "hobby", "price": 1}),
        ("reserved", busan, {"title": "Sofa", "category": "furniture", "price": 200_000}),
        (
            "sold",
            mapo,
            {"title": "Old phone", "category": "digital", "price": 70_000, "quantity": 0},
        ),
        ("hidden", mapo, {"title": "Hidden iPhone", "category": "digital", "price": 100}),
        (
            "big",
            busan,
            {"title": "Apartment-sized TV", "category": "digital", "price": 10_000_000_000},
        ),
    ]
    ids: dict[str, int] = {}
    for name, seller, fields in specs:
        ids[name] = (await create_listing(client, seller, **fields))["id"]
    response = await client.patch(
        item_url(ids["reserved"]),
        json={"status": "reserved"},
        headers={**busan.auth, "If-Match": "*"},
    )
    assert response.status == 200
    response = await client.delete(item_url(ids["hidden"]), headers={**mapo.auth, "If-Match": "*"})
    assert response.status == 204
    return Catalog(mapo, busan, ids)


VISIBLE = ("iphone", "bike", "cooker", "shirt", "scarf", "ab", "axb", "slash", "reserved",
           "sold", "big")  # fmt: skip
MAPO = ("iphone", "bike", "shirt", "ab", "slash", "sold")
BUSAN = ("cooker", "scarf", "axb", "reserved", "big")


async def test_no_filter_lists_every_visible_listing_newest_first(
    client: Client, catalog: Catalog
) -> None:
    body = await feed(client)
    ids = [item["id"] for item in body["items"]]
    assert ids == catalog.of(*VISIBLE)
    assert body["next_cursor"] is None
    assert catalog.ids["hidden"] not in ids
    assert all(item["status"] != "hidden" for item in body["items"])


async def test_region_filter(client: Client, catalog: Catalog) -> None:
    assert await feed_ids(client, region="seoul-mapo") == catalog.of(*MAPO)
    assert await feed_ids(client, region="busan-haeundae") == catalog.of(*BUSAN)
    assert await feed_ids(client, region="jeju-aewol") == []


async def test_category_filter(client: Client, catalog: Catalog) -> None:
    assert await feed_ids(client, category="digital") == catalog.of("iphone", "sold", "big")
    assert await feed_ids(client, category="fashion") == catalog.of("shirt", "scarf")
    assert await feed_ids(client, category="pets") == []
    assert await feed_ids(client, category="digital", region="seoul-mapo") == catalog.of(
        "iphone", "sold"
    )


async def test_status_filter(client: Client, catalog: Catalog) -> None:
    on_sale = [name for name in VISIBLE if name not in ("reserved", "sold")]
    assert await feed_ids(client, status="on_sale") == catalog.of(*on_sale)
    assert await feed_ids(client, status="reserved") == catalog.of("reserved")
    assert await feed_ids(client, status="sold") == catalog.of("sold")
    assert await feed_ids(client, status="sold", region="busan-haeundae") == []
    assert await feed_ids(client, status="reserved", region="busan-haeundae") == catalog.of(
        "reserved"
    )


async def test_seller_filter(client: Client, catalog: Catalog) -> None:
    assert await feed_ids(client, seller=catalog.mapo.user_id) == catalog.of(*MAPO)
    assert await feed_ids(client, seller=catalog.busan.user_id) == catalog.of(*BUSAN)
    assert await feed_ids(client, seller=catalog.busan.user_id, category="hobby") == catalog.of(
        "axb"
    )
    assert await feed_ids(client, seller=10**9) == []


async def test_price_filters_are_inclusive(client: Client, catalog: Catalog) -> None:
    assert await feed_ids(client, min_price=10_000, max_price=10_001) == catalog.of(
        "shirt", "scarf"
    )
    assert await feed_ids(client, max_price=1) == catalog.of("ab", "slash")
    assert await feed_ids(client, max_price=0) == catalog.of("ab")
    assert await feed_ids(client, min_price=200_000) == catalog.of("iphone", "reserved", "big")
    assert await feed_ids(client, min_price=10_000_000_000) == catalog.of("big")
    assert await feed_ids(client, min_price=10_001, max_price=10_000) == []
    assert await feed_ids(
        client, region="busan-haeundae", min_price=9_999, max_price=200_000
    ) == catalog.of("cooker", "scarf", "axb", "reserved")


async def test_q_matches_title_or_description_case_insensitively(
    client: Client, catalog: Catalog
) -> None:
    assert await feed_ids(client, q="IPHONE") == catalog.of("iphone")
    assert await feed_ids(client, q="iphone 13 MINI") == catalog.of("iphone")
    assert await feed_ids(client, q="  cooker  ") == catalog.of("cooker")
    assert await feed_ids(client, q="cotton") == catalog.of("shirt", "scarf")
    assert await feed_ids(client, q="nothing like this") == []
    # The hidden "Hidden iPhone" matches the text but is never shown.
    assert catalog.ids["hidden"] not in await feed_ids(client, q="iphone")


async def test_q_works_with_hangul(client: Client, catalog: Catalog) -> None:
    # In one title and in another listing's description.
    assert await feed_ids(client, q="자전거") == catalog.of("bike", "cooker")
    assert await feed_ids(client, q="밥솥") == catalog.of("cooker")
    assert await feed_ids(client, q="자전거", region="seoul-mapo") == catalog.of("bike")
    assert await feed_ids(client, q="자동차") == []


async def test_q_treats_like_wildcards_literally(client: Client, catalog: Catalog) -> None:
    assert await feed_ids(client, q="100%") == catalog.of("shirt")
    assert await feed_ids(client, q="100% c") == catalog.of("shirt")
    assert await feed_ids(client, q="a_b") == catalog.of("ab")
    assert await feed_ids(client, q="_") == catalog.of("ab")
    assert await feed_ids(client, q="%") == catalog.of("shirt")
    assert await feed_ids(client, q="\\") == catalog.of("slash")
    assert await feed_ids(client, q="back\\s") == catalog.of("slash")
    assert await feed_ids(client, q="%%") == []
    assert await feed_ids(client, q="a%b") == []


async def test_filters_combine(client: Client, catalog: Catalog) -> None:
    assert await feed_ids(
        client,
        region="seoul-mapo",
        category="digital",
        status="on_sale",
        seller=catalog.mapo.user_id,
        min_price=1,
        max_price=500_000,
        q="phone",
    ) == catalog.of("iphone")


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"region": "Seoul"}, "region"),
        ({"region": "x"}, "region"),
        ({"category": "cars"}, "category"),
        ({"status": "hidden"}, "status"),
        ({"status": "sold "}, "status"),
        ({"seller": "0"}, "seller"),
        ({"seller": "-3"}, "seller"),
        ({"seller": "abc"}, "seller"),
        ({"seller": "9223372036854775808"}, "seller"),
        ({"min_price": "-1"}, "min_price"),
        ({"min_price": "10000000001"}, "min_price"),
        ({"max_price": "cheap"}, "max_price"),
        ({"max_price": "10000000001"}, "max_price"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "q" * 101}, "q"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "c" * 201}, "cursor"),
        ({"cursor": ""}, "cursor"),
    ],
)
async def test_bad_query_parameters_are_422(
    client: Client, params: dict[str, str], field: str
) -> None:
    response = await client.get(LISTINGS, params=params)
    assert field in await field_errors(response)


@pytest.mark.parametrize("query", ["region=a1&region=b2", "limit=5&limit=5", "q=x&q=y", "q=x&q="])
async def test_repeated_query_parameters_are_422(client: Client, query: str) -> None:
    response = await client.get(f"{LISTINGS}?{query}")
    await problem(response, 422, "validation-failed")


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "abc",
        "%FF%FE",
        "eyJiZWZvcmUiOjF9",  # the base64 JSON of an earlier version: {"before":1}
        "000000000000001",  # one digit short
        "00000000000000001",  # one digit long
        "000000000000000A",  # upper case
        "8000000000000000",  # 2**63: beyond a bigint
        "ffffffffffffffff",
        "-000000000000001",
        " 000000000000001",
        "000000000000001%0A",
        "0" * 32,  # a room cursor is not a listing cursor
    ],
)
async def test_garbage_cursors_are_422(client: Client, cursor: str) -> None:
    response = await client.get(f"{LISTINGS}?cursor={cursor}")
    assert "cursor" in await field_errors(response)


async def test_a_valid_cursor_still_works(client: Client, catalog: Catalog) -> None:
    """The garbage cursor test above means something only if real cursors are accepted."""
    first = await feed(client, limit=4)
    assert first["next_cursor"] is not None
    second = await feed(client, limit=4, cursor=first["next_cursor"])
    all_ids = catalog.of(*VISIBLE)
    assert [item["id"] for item in first["items"] + second["items"]] == all_ids[:8]
    largest = await feed(client, cursor=encode_cursor(2**63 - 1))
    assert [item["id"] for item in largest["items"]] == all_ids
    # Every string the pattern admits is a place in the feed, even before the first id.
    assert (await feed(client, cursor=encode_cursor(0)))["items"] == []
    assert [item["id"] for item in (await feed(client, cursor="7fffffffffffffff"))["items"]] == (
        all_ids
    )


# --- paging and limits -----------------------------------------------------------------------


async def insert_listings(
    db: asyncpg.Connection, seller: Account, count: int, region: str = "seoul-mapo"
) -> list[int]:
    """``count`` plain visible listings straight into the database; ids newest first."""
    rows = await db.fetch(
        "INSERT INTO listings (seller_id, title, price, category, region)"
        " SELECT $1, 'bulk ' || n, n, 'etc', $3 FROM generate_series(1, $2) n RETURNING id",
        seller.user_id,
        count,
        region,
    )
    return sorted((row["id"] for row in rows), reverse=True)


async def page_through(client: Client, limit: int, **params: str) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": str(limit)}
        if cursor is not None:
            query["cursor"] = cursor
        body = await feed(client, **query)
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 1000


async def test_limit_defaults_to_20_and_is_at_most_100(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    seller = (await quick_accounts(db, settings, 1))[0]
    ids = await insert_listings(db, seller, 101)
    default = await feed(client)
    assert [item["id"] for item in default["items"]] == ids[:20]
    assert default["next_cursor"] is not None
    most = await feed(client, limit=100)
    assert [item["id"] for item in most["items"]] == ids[:100]
    rest = await feed(client, limit=100, cursor=most["next_cursor"])
    assert [item["id"] for item in rest["items"]] == ids[100:]
    assert rest["next_cursor"] is None
    assert "limit" in await field_errors(await client.get(LISTINGS, params={"limit": "101"}))
    assert "limit" in await field_errors(await client.get(LISTINGS, params={"limit": "1000"}))


@pytest.mark.parametrize(
    "params", [{}, {"region": "seoul-mapo"}, {"category": "etc"}, {"q": "bulk"}]
)
async def test_pages_cover_everything_once_in_order(
    client: Client, db: asyncpg.Connection, settings: Settings, params: dict[str, str]
) -> None:
    seller = (await quick_accounts(db, settings, 1))[0]
    ids = await insert_listings(db, seller, 45)
    for limit in (1, 7, 10, 44, 45, 46):
        pages = await page_through(client, limit, **params)
        assert all(len(page) == limit for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= limit
        assert [listing_id for page in pages for listing_id in page] == ids


@pytest.mark.parametrize("params", [{}, {"region": "seoul-mapo"}, {"q": "page"}])
async def test_paging_neither_skips_nor_repeats_while_listings_are_added(
    client: Client, db: asyncpg.Connection, settings: Settings, params: dict[str, str]
) -> None:
    sellers = await quick_accounts(db, settings, 4, region="seoul-mapo")
    before: list[int] = []
    for n in range(40):
        before.append((await create_listing(client, sellers[n % 4], title=f"page {n}"))["id"])
    hidden = before.pop(17)
    response = await client.delete(
        item_url(hidden), headers={**sellers[17 % 4].auth, "If-Match": "*"}
    )
    assert response.status == 204
    expected = sorted(before, reverse=True)

    first_page_read = asyncio.Event()
    paging_done = asyncio.Event()
    inserted: list[int] = []
    progress = asyncio.Condition()

    async def pager() -> list[list[int]]:
        pages: list[list[int]] = []
        cursor: str | None = None
        while True:
            query = {**params, "limit": "6"}
            if cursor is not None:
                query["cursor"] = cursor
            body = await feed(client, **query)
            pages.append([item["id"] for item in body["items"]])
            first_page_read.set()
            cursor = body["next_cursor"]
            if cursor is None:
                paging_done.set()
                return pages
            # Make sure new listings really arrive between every two pages.
            wanted = len(inserted) + 1
            async with progress:
                while len(inserted) < wanted:
                    await progress.wait()

    async def inserter(seller: Account) -> None:
        await first_page_read.wait()
        n = 0
        while not paging_done.is_set():
            body = await create_listing(client, seller, title=f"page new {seller.user_id}-{n}")
            n += 1
            async with progress:
                inserted.append(body["id"])
                progress.notify_all()

    pages, _ = await asyncio.gather(pager(), asyncio.gather(*map(inserter, sellers)))
    seen = [listing_id for page in pages for listing_id in page]
    assert seen == expected  # nothing skipped, nothing repeated, strictly decreasing
    assert len(pages) == 7
    assert len(inserted) >= len(pages) - 1
    assert min(inserted) > max(expected)
    # The new listings are really there: a fresh first page starts with them.
    newest = await feed(client, **{**params, "limit": "100"})
    assert [item["id"] for item in newest["items"]] == sorted(inserted + expected, reverse=True)[
        :100
    ]


# --- indexes ---------------------------------------------------------------------------------


MARKET_SQL = """
    INSERT INTO users (email, password_hash, nickname, region)
    SELECT 'bulk' || n || '@example.com', 'x', 'bulk', 'region-' || (n % 100)
    FROM generate_series(1, 200) n;
    INSERT INTO listings (seller_id, title, description, price, category, region, status)
    SELECT (SELECT min(id) FROM users) + n % 200,
           'item ' || md5(n::text),
           'about ' || md5((n * 7)::text) || CASE WHEN n % 1000 = 0 THEN ' 자전거' ELSE '' END,
           (n::bigint * 7919) % 1000000,
           CASE WHEN n % 97 = 0 THEN 'tickets' ELSE (ARRAY['digital', 'appliances',
               'furniture', 'kids', 'fashion', 'beauty', 'sports', 'hobby', 'books', 'pets',
               'plants', 'food', 'etc'])[1 + n % 13] END,
           'region-' || (n % 100),
           (ARRAY['on_sale', 'on_sale', 'on_sale', 'reserved', 'sold', 'hidden'])[1 + n % 6]
    FROM generate_series(1, 20000) n;
"""


@pytest.fixture(scope="module")
def market_database(service_urls: tuple[str, str]) -> Iterator[str]:
    """A migrated database of this module's own with 20 000 listings over 100 regions, 200
    sellers and skewed categories, vacuumed and analysed; made once, as the index tests
    only read it.

    Regions and sellers are many, as in a real market, so their filters are selective; the
    "tickets" category is rare. VACUUM as well as ANALYZE: it flushes the pending list a bulk
    load leaves in the GIN index (autovacuum would, in production), which the planner costs.
    """
    admin_url = service_urls[0]
    name = f"jangteo_market_{os.getpid()}"
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def fill() -> None:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin(f'CREATE DATABASE "{name}"')
        await migrate(url)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(MARKET_SQL)
            await conn.execute("VACUUM ANALYZE listings")
        finally:
            await conn.close()

    asyncio.run(fill())
    try:
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def market(market_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the market's database that may not scan a table sequentially."""
    conn = await asyncpg.connect(market_database)
    try:
        await conn.execute("SET enable_seqscan = off")
        yield conn
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("feed_filter", "index"),
    [
        (FeedFilter(region="region-3"), "listings_region_feed_idx"),
        (FeedFilter(region="region-3", before_id=10_000), "listings_region_feed_idx"),
        (FeedFilter(region="region-3", status="reserved"), "listings_region_status_idx"),
        (
            FeedFilter(region="region-3", status="sold", before_id=9_000),
            "listings_region_status_idx",
        ),
        (FeedFilter(region="region-3", category="books"), "listings_region_category_idx"),
        (FeedFilter(category="tickets"), "listings_category_idx"),
        (FeedFilter(category="tickets", before_id=15_000), "listings_category_idx"),
        (FeedFilter(seller_id=7), "listings_seller_idx"),
        (FeedFilter(seller_id=7, before_id=12_000), "listings_seller_idx"),
        (
            FeedFilter(region="region-3", min_price=1_000, max_price=20_000),
            "listings_region_price_idx",
        ),
        (FeedFilter(region="region-3", max_price=5_000), "listings_region_price_idx"),
        (FeedFilter(query="abc12"), "listings_search_idx"),
        (FeedFilter(query="자전거"), "listings_search_idx"),
        (FeedFilter(query="item 9f"), "listings_search_idx"),
    ],
    ids=lambda value: repr(value) if isinstance(value, FeedFilter) else value,
)
async def test_each_filter_uses_its_index(
    market: asyncpg.Connection, feed_filter: FeedFilter, index: str
) -> None:
    sql, params = feed_sql(feed_filter, 21)
    plan = "\n".join(row[0] for row in await market.fetch("EXPLAIN " + sql, *params))
    assert index in plan, plan
    # The query still answers correctly through that plan.
    rows = await market.fetch(sql, *params)
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids, reverse=True)
    assert all(row["status"] != "hidden" for row in rows)
