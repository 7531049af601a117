"""Listings over HTTP: CRUD, validation, ownership, preconditions, derived status and events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import orjson
import pytest

from server.errors import NotFound
from server.listings import service
from server.listings.preconditions import ANY, IfMatch
from server.listings.schemas import ListingPatch
from server.settings import Settings
from tests.server.listings_support import (
    CATEGORIES,
    LISTINGS,
    JsonObject,
    create_listing,
    etag_of,
    field_errors,
    get_listing,
    item_url,
    listing_body,
    outbox_rows,
    patch_listing,
    problem,
    quick_accounts,
)
from tests.support import Account, Client, sign_up

READ_ONLY_FIELDS: list[tuple[str, Any]] = [
    ("id", 999),
    ("seller_id", 1),
    ("like_count", 1000),
    ("version", 50),
    ("region", "busan-haeundae"),
    ("created_at", "2020-01-01T00:00:00Z"),
    ("updated_at", "2020-01-01T00:00:00Z"),
    ("photos", []),
    ("status", "sold"),
    ("status", "hidden"),
    ("nickname", "x"),
    ("is_admin", True),
]

# (field, value) pairs that are out of bounds or of the wrong type, for POST and PATCH.
INVALID_VALUES: list[tuple[str, Any]] = [
    ("title", ""),
    ("title", "   "),
    ("title", "a" * 101),
    ("title", "가" * 101),
    ("title", 5),
    ("description", "d" * 5001),
    ("description", "설" * 5001),
    ("description", 7),
    ("price", -1),
    ("price", 10_000_000_001),
    ("price", "1000"),
    ("price", 10.5),
    ("price", True),
    ("quantity", -1),
    ("quantity", 10_001),
    ("quantity", "1"),
    ("quantity", 1.5),  # 1.0 is the integer 1 in JSON (and JSON Schema)
    ("category", "cars"),
    ("category", "Digital"),
    ("category", ""),
    ("category", 3),
]

# Values exactly at the edges of what is allowed, for POST and PATCH.
EDGE_VALUES: list[tuple[str, Any]] = [
    ("title", "a"),
    ("title", "a" * 100),
    ("title", "가" * 100),
    ("description", ""),
    ("description", "d" * 5000),
    ("description", "설" * 5000),
    ("price", 0),
    ("price", 10_000_000_000),
    ("quantity", 1),
    ("quantity", 10_000),
    *[("category", category) for category in CATEGORIES],
]

INVALID_REGIONS = ["Seoul-mapo", "s", "1seoul", "-seoul", "seoul_mapo", "a" * 41, "서울", "", 5]
EDGE_REGIONS = ["ab", "a" * 40, "a1-2", "busan-haeundae"]


async def listing_count(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM listings")
    return count


async def db_listing(db: asyncpg.Connection, listing_id: int) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM listings WHERE id = $1", listing_id)
    assert row is not None
    return row


@pytest.fixture
async def seller(db: asyncpg.Connection, settings: Settings) -> Account:
    return (await quick_accounts(db, settings, 1, region="seoul-mapo"))[0]


@pytest.fixture
async def other(db: asyncpg.Connection, settings: Settings) -> Account:
    return (await quick_accounts(db, settings, 1, region="seoul-mapo"))[0]


@pytest.fixture
async def listing(client: Client, seller: Account) -> JsonObject:
    return await create_listing(
        client, seller, title="Desk lamp", description="works", price=12_000, quantity=3
    )


# --- create and read ------------------------------------------------------------------------


async def test_create_answers_201_with_location_etag_and_defaults(
    client: Client, db: asyncpg.Connection
) -> None:
    seller = await sign_up(client, region="busan-haeundae")
    response = await client.post(
        LISTINGS,
        json={"title": "  Rice cooker  ", "price": 30_000, "category": "appliances"},
        headers=seller.auth,
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    assert response.headers["Location"] == item_url(body["id"])
    assert response.headers["ETag"] == f'"{body["id"]}-1-0"'
    assert body["seller_id"] == seller.user_id
    assert body["title"] == "Rice cooker"
    assert body["description"] == ""
    assert body["price"] == 30_000
    assert body["quantity"] == 1
    assert body["category"] == "appliances"
    assert body["region"] == "busan-haeundae"  # the seller's region by default
    assert body["status"] == "on_sale"
    assert body["like_count"] == 0
    assert body["version"] == 1
    assert body["photos"] == []
    assert body["created_at"] and body["updated_at"]

    # Reading needs no token and gives the same representation and ETag.
    fetched = await client.get(response.headers["Location"])
    assert fetched.status == 200
    assert await fetched.json() == body
    assert fetched.headers["ETag"] == response.headers["ETag"]
    row = await db_listing(db, body["id"])
    assert (row["seller_id"], row["region"], row["version"]) == (
        seller.user_id,
        "busan-haeundae",
        1,
    )


async def test_create_in_another_region_when_given(client: Client, seller: Account) -> None:
    body = await create_listing(client, seller, region="jeju-aewol", quantity=5)
    assert body["region"] == "jeju-aewol"
    assert body["quantity"] == 5


async def test_quantity_zero_at_creation_means_sold(client: Client, seller: Account) -> None:
    body = await create_listing(client, seller, quantity=0)
    assert body["status"] == "sold"
    assert (await get_listing(client, body["id"]))[0]["status"] == "sold"


@pytest.mark.parametrize(("field", "value"), EDGE_VALUES)
async def test_create_accepts_values_at_the_bounds(
    client: Client, seller: Account, field: str, value: Any
) -> None:
    body = await create_listing(client, seller, **{field: value})
    assert body[field] == value
    assert (await get_listing(client, body["id"]))[0][field] == value


@pytest.mark.parametrize("region", EDGE_REGIONS)
async def test_create_accepts_region_slugs(client: Client, seller: Account, region: str) -> None:
    assert (await create_listing(client, seller, region=region))["region"] == region


@pytest.mark.parametrize(("field", "value"), INVALID_VALUES)
async def test_create_refuses_values_out_of_bounds(
    client: Client, db: asyncpg.Connection, seller: Account, field: str, value: Any
) -> None:
    response = await client.post(LISTINGS, json=listing_body(**{field: value}), headers=seller.auth)
    assert field in await field_errors(response)
    assert await listing_count(db) == 0


@pytest.mark.parametrize("region", INVALID_REGIONS)
async def test_create_refuses_bad_regions(
    client: Client, db: asyncpg.Connection, seller: Account, region: Any
) -> None:
    response = await client.post(LISTINGS, json=listing_body(region=region), headers=seller.auth)
    assert "region" in await field_errors(response)
    assert await listing_count(db) == 0


@pytest.mark.parametrize("missing", ["title", "price", "category"])
async def test_create_requires_title_price_and_category(
    client: Client, db: asyncpg.Connection, seller: Account, missing: str
) -> None:
    body = listing_body()
    del body[missing]
    response = await client.post(LISTINGS, json=body, headers=seller.auth)
    assert missing in await field_errors(response)
    assert await listing_count(db) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    # A region may be chosen at creation (it is read-only afterwards); status never.
    [*(pair for pair in READ_ONLY_FIELDS if pair[0] != "region"), ("status", "on_sale")],
)
async def test_create_refuses_mass_assignment(
    client: Client, db: asyncpg.Connection, seller: Account, field: str, value: Any
) -> None:
    response = await client.post(LISTINGS, json=listing_body(**{field: value}), headers=seller.auth)
    assert field in await field_errors(response)
    assert await listing_count(db) == 0
    assert await outbox_rows(db) == []


async def test_create_refuses_nulls_and_non_objects(
    client: Client, db: asyncpg.Connection, seller: Account
) -> None:
    for field in ("title", "price", "category", "description", "quantity"):
        response = await client.post(
            LISTINGS, json=listing_body(**{field: None}), headers=seller.auth
        )
        assert field in await field_errors(response)
    for payload in ([listing_body()], "x", 5):
        response = await client.post(LISTINGS, json=payload, headers=seller.auth)
        await problem(response, 422, "validation-failed")
    response = await client.post(
        LISTINGS, data=b'{"title": ', headers={**seller.auth, "Content-Type": "application/json"}
    )
    await problem(response, 400, "malformed-json")
    response = await client.post(
        LISTINGS, data=orjson.dumps(listing_body()), headers={**seller.auth}
    )
    await problem(response, 415)
    assert await listing_count(db) == 0


async def test_writes_need_a_token(
    client: Client, db: asyncpg.Connection, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    etag = etag_of(listing)
    bad = {"Authorization": "Bearer not-a-token"}
    for headers in ({}, bad):
        responses = [
            await client.post(LISTINGS, json=listing_body(), headers=headers),
            await client.patch(
                item_url(listing_id), json={"title": "x"}, headers={**headers, "If-Match": etag}
            ),
            await client.delete(item_url(listing_id), headers={**headers, "If-Match": etag}),
            await client.put(item_url(listing_id) + "/like", headers=headers),
            await client.delete(item_url(listing_id) + "/like", headers=headers),
        ]
        for response in responses:
            await problem(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await listing_count(db) == 1
    row = await db_listing(db, listing_id)
    assert (row["title"], row["version"], row["status"], row["like_count"]) == (
        "Desk lamp",
        1,
        "on_sale",
        0,
    )


@pytest.mark.parametrize(
    "path_id", ["424242", "0", "-1", "abc", "1.5", "9223372036854775807", "9223372036854775808"]
)
async def test_unknown_listing_is_404_on_every_route(
    client: Client, listing: JsonObject, seller: Account, path_id: str
) -> None:
    url = item_url(path_id)
    await problem(await client.get(url), 404)
    await problem(
        await client.patch(url, json={"title": "x"}, headers={**seller.auth, "If-Match": "*"}),
        404,
    )
    await problem(await client.delete(url, headers={**seller.auth, "If-Match": "*"}), 404)
    await problem(await client.put(url + "/like", headers=seller.auth), 404)
    await problem(await client.delete(url + "/like", headers=seller.auth), 404)


# --- conditional requests --------------------------------------------------------------------


async def test_if_none_match_gives_304_until_the_listing_changes(
    client: Client, seller: Account, listing: JsonObject
) -> None:
    url = item_url(listing["id"])
    _, etag = await get_listing(client, listing["id"])
    assert etag == etag_of(listing)
    for header in (etag, "W/" + etag, f'"nope", {etag}'):
        response = await client.get(url, headers={"If-None-Match": header})
        assert response.status == 304, header
        assert response.headers["ETag"] == etag
        assert await response.read() == b""
    assert (await client.get(url, headers={"If-None-Match": '"1-99-0"'})).status == 200

    changed = await patch_listing(client, seller, listing["id"], etag, {"price": 11_000})
    assert changed.status == 200
    new_etag = changed.headers["ETag"]
    assert new_etag != etag
    stale = await client.get(url, headers={"If-None-Match": etag})
    assert stale.status == 200
    assert stale.headers["ETag"] == new_etag
    assert (await stale.json())["price"] == 11_000
    assert (await client.get(url, headers={"If-None-Match": new_etag})).status == 304


async def test_patch_and_delete_need_if_match(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    url = item_url(listing["id"])
    await problem(
        await client.patch(url, json={"title": "new"}, headers=seller.auth),
        428,
        "precondition-required",
    )
    await problem(await client.delete(url, headers=seller.auth), 428, "precondition-required")
    row = await db_listing(db, listing["id"])
    assert (row["title"], row["status"], row["version"]) == ("Desk lamp", "on_sale", 1)


async def test_stale_or_foreign_if_match_is_412(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    another = await create_listing(client, seller)
    first = await patch_listing(client, seller, listing_id, etag_of(listing), {"title": "v2"})
    assert first.status == 200
    stale = etag_of(listing)
    for if_match in (stale, etag_of(another), f'"{listing_id}-7-0"', "garbage", '"1-2"', ""):
        response = await patch_listing(client, seller, listing_id, if_match, {"title": "v3"})
        await problem(response, 412, "precondition-failed")
        response = await client.delete(
            item_url(listing_id), headers={**seller.auth, "If-Match": if_match}
        )
        await problem(response, 412, "precondition-failed")
    row = await db_listing(db, listing_id)
    assert (row["title"], row["status"], row["version"]) == ("v2", "on_sale", 2)


async def test_if_match_star_weak_tags_and_likes_do_not_conflict(
    client: Client, seller: Account, other: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    read_etag = etag_of(listing)
    assert (await client.put(item_url(listing_id) + "/like", headers=other.auth)).status == 204
    # A like changed the ETag's last part only: the seller's edit based on the old read works.
    response = await patch_listing(client, seller, listing_id, read_etag, {"title": "v2"})
    assert response.status == 200, await response.text()
    assert response.headers["ETag"] == f'"{listing_id}-2-1"'
    response = await patch_listing(
        client, seller, listing_id, f'W/"{listing_id}-2-1"', {"price": 1}
    )
    assert response.status == 200, await response.text()
    response = await patch_listing(client, seller, listing_id, "*", {"price": 2})
    assert response.status == 200, await response.text()
    assert (await response.json())["version"] == 4


async def test_concurrent_edits_from_one_read_let_exactly_one_win(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    etag = etag_of(listing)
    responses = await asyncio.gather(
        *(
            patch_listing(client, seller, listing["id"], etag, {"title": f"edit {n}"})
            for n in range(10)
        )
    )
    statuses = sorted(response.status for response in responses)
    assert statuses == [200] + [412] * 9
    winner = next(response for response in responses if response.status == 200)
    row = await db_listing(db, listing["id"])
    assert row["version"] == 2
    assert row["title"] == (await winner.json())["title"]
    assert len(await outbox_rows(db, f"listing:{listing['id']}")) == 1


# --- edits -----------------------------------------------------------------------------------


async def test_patch_changes_fields_and_bumps_the_version(
    client: Client, seller: Account, listing: JsonObject
) -> None:
    response = await patch_listing(
        client, seller, listing["id"], etag_of(listing), {"title": " Floor lamp ", "price": 9_000}
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["title"] == "Floor lamp"
    assert body["price"] == 9_000
    assert body["version"] == 2
    assert body["updated_at"] > listing["updated_at"]
    assert body["created_at"] == listing["created_at"]
    assert response.headers["ETag"] == etag_of(body)
    fetched, etag = await get_listing(client, listing["id"])
    assert fetched == body
    assert etag == etag_of(body)


@pytest.mark.parametrize(("field", "value"), EDGE_VALUES)
async def test_patch_accepts_values_at_the_bounds(
    client: Client, seller: Account, listing: JsonObject, field: str, value: Any
) -> None:
    response = await patch_listing(client, seller, listing["id"], etag_of(listing), {field: value})
    assert response.status == 200, await response.text()
    assert (await response.json())[field] == value
    assert (await get_listing(client, listing["id"]))[0][field] == value


@pytest.mark.parametrize(("field", "value"), [*INVALID_VALUES, *READ_ONLY_FIELDS])
async def test_patch_refuses_bad_or_read_only_fields_and_changes_nothing(
    client: Client,
    db: asyncpg.Connection,
    seller: Account,
    listing: JsonObject,
    field: str,
    value: Any,
) -> None:
    before = await db_listing(db, listing["id"])
    # A valid change next to the bad one must not be applied either.
    change = {"description": "changed"} if field != "description" else {"title": "changed"}
    response = await patch_listing(
        client, seller, listing["id"], etag_of(listing), {**change, field: value}
    )
    assert field in await field_errors(response)
    assert await db_listing(db, listing["id"]) == before
    assert await outbox_rows(db, f"listing:{listing['id']}") == []
    fetched, etag = await get_listing(client, listing["id"])
    assert fetched == listing
    assert etag == etag_of(listing)


@pytest.mark.parametrize(
    "field", ["title", "description", "price", "quantity", "category", "status"]
)
async def test_patch_refuses_null(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject, field: str
) -> None:
    before = await db_listing(db, listing["id"])
    valid = {"title": "changed"} if field != "title" else {"price": 1}
    response = await patch_listing(
        client, seller, listing["id"], etag_of(listing), {**valid, field: None}
    )
    assert field in await field_errors(response)
    assert await db_listing(db, listing["id"]) == before
    assert await outbox_rows(db, f"listing:{listing['id']}") == []


async def test_patch_refuses_non_objects(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    before = await db_listing(db, listing["id"])
    for payload in ([{"title": "x"}], "title", None, 3):
        response = await client.patch(
            item_url(listing["id"]),
            data=orjson.dumps(payload),
            headers={**seller.auth, "If-Match": "*", "Content-Type": "application/json"},
        )
        await problem(response, 422, "validation-failed")
    assert await db_listing(db, listing["id"]) == before


async def test_patch_that_changes_nothing_keeps_the_version_and_writes_no_event(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    same = {
        "title": listing["title"],
        "description": listing["description"],
        "price": listing["price"],
        "quantity": listing["quantity"],
        "category": listing["category"],
        "status": listing["status"],
    }
    for body in ({}, same, {"title": f"  {listing['title']} "}):
        response = await patch_listing(client, seller, listing["id"], etag_of(listing), body)
        assert response.status == 200, await response.text()
        got = await response.json()
        assert got["version"] == 1
        assert got["updated_at"] == listing["updated_at"]
        assert response.headers["ETag"] == etag_of(listing)
    assert (await db_listing(db, listing["id"]))["version"] == 1
    assert await outbox_rows(db, f"listing:{listing['id']}") == []


async def test_only_the_seller_may_edit_or_hide(
    client: Client, db: asyncpg.Connection, other: Account, listing: JsonObject
) -> None:
    before = await db_listing(db, listing["id"])
    for if_match in (etag_of(listing), "*"):
        response = await patch_listing(client, other, listing["id"], if_match, {"price": 1})
        await problem(response, 403, "not-the-seller")
        response = await client.delete(
            item_url(listing["id"]), headers={**other.auth, "If-Match": if_match}
        )
        await problem(response, 403, "not-the-seller")
    assert await db_listing(db, listing["id"]) == before
    assert await outbox_rows(db, f"listing:{listing['id']}") == []
    assert (await get_listing(client, listing["id"]))[0]["status"] == "on_sale"


# --- status derivation -----------------------------------------------------------------------


async def edit(client: Client, account: Account, listing_id: int, body: JsonObject) -> JsonObject:
    response = await patch_listing(client, account, listing_id, "*", body)
    assert response.status == 200, await response.text()
    result: JsonObject = await response.json()
    return result


async def test_status_follows_quantity(
    client: Client, seller: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    sold = await edit(client, seller, listing_id, {"quantity": 0})
    assert (sold["status"], sold["quantity"], sold["version"]) == ("sold", 0, 2)
    # A sold listing's edits that leave quantity at 0 keep it sold.
    assert (await edit(client, seller, listing_id, {"title": "still sold"}))["status"] == "sold"
    restocked = await edit(client, seller, listing_id, {"quantity": 4})
    assert (restocked["status"], restocked["quantity"]) == ("on_sale", 4)
    reserved = await edit(client, seller, listing_id, {"status": "reserved"})
    assert reserved["status"] == "reserved"
    # More stock on a reserved listing keeps it reserved; zero stock sells it.
    assert (await edit(client, seller, listing_id, {"quantity": 5}))["status"] == "reserved"
    assert (await edit(client, seller, listing_id, {"quantity": 0}))["status"] == "sold"
    # Restocking a sold listing while asking for "reserved" gives reserved.
    again = await edit(client, seller, listing_id, {"quantity": 2, "status": "reserved"})
    assert (again["status"], again["quantity"]) == ("reserved", 2)
    assert (await edit(client, seller, listing_id, {"status": "on_sale"}))["status"] == "on_sale"


async def test_status_cannot_contradict_zero_quantity(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    for status in ("on_sale", "reserved"):
        response = await patch_listing(
            client, seller, listing_id, "*", {"quantity": 0, "status": status}
        )
        assert "status" in await field_errors(response)
    assert (await db_listing(db, listing_id))["quantity"] == 3
    await edit(client, seller, listing_id, {"quantity": 0})
    # Without a quantity, the status contradicts the listing's state rather than the request.
    response = await patch_listing(client, seller, listing_id, "*", {"status": "on_sale"})
    await problem(response, 409, "sold-out")
    row = await db_listing(db, listing_id)
    assert (row["status"], row["quantity"], row["version"]) == ("sold", 0, 2)


# --- events ----------------------------------------------------------------------------------


async def test_creation_writes_listing_created_to_the_region_feed(
    client: Client, db: asyncpg.Connection, seller: Account
) -> None:
    body = await create_listing(client, seller, region="daegu-suseong", price=77)
    rows = await outbox_rows(db)
    assert [(row.channel, row.type) for row in rows] == [("feed:daegu-suseong", "listing.created")]
    data = rows[0].data
    assert data["id"] == body["id"]
    assert (data["price"], data["version"], data["status"]) == (77, 1, "on_sale")
    assert data["seller_id"] == seller.user_id


async def test_each_kind_of_change_writes_its_event(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    channel = f"listing:{listing_id}"

    await edit(client, seller, listing_id, {"price": 10_000})
    await edit(client, seller, listing_id, {"title": "Lamp", "description": "bright"})
    await edit(client, seller, listing_id, {"quantity": 2})
    await edit(client, seller, listing_id, {"status": "reserved"})
    rows = await outbox_rows(db, channel)
    assert [row.type for row in rows] == [
        "listing.price_changed",
        "listing.updated",
        "listing.stock_changed",
        "listing.status_changed",
    ]
    assert rows[0].data["old_price"] == 12_000
    assert rows[0].data["price"] == 10_000
    assert rows[1].data["changed"] == ["description", "title"]
    assert rows[1].data["title"] == "Lamp"
    assert rows[2].data["old_quantity"] == 3
    assert rows[2].data["quantity"] == 2
    assert rows[3].data["old_status"] == "on_sale"
    assert rows[3].data["status"] == "reserved"
    assert [row.data["version"] for row in rows] == [2, 3, 4, 5]

    # One PATCH that changes everything: one row per kind of change, in one version.
    await edit(
        client,
        seller,
        listing_id,
        {
            "price": 5,
            "quantity": 0,
            "title": "Gone",
            "category": "furniture",
            "description": "x",
        },
    )
    rows = (await outbox_rows(db, channel))[4:]
    assert sorted(row.type for row in rows) == [
        "listing.price_changed",
        "listing.status_changed",
        "listing.stock_changed",
        "listing.updated",
    ]
    by_type = {row.type: row.data for row in rows}
    assert by_type["listing.price_changed"]["old_price"] == 10_000
    assert by_type["listing.status_changed"]["old_status"] == "reserved"
    assert by_type["listing.status_changed"]["status"] == "sold"
    assert by_type["listing.stock_changed"]["old_quantity"] == 2
    assert by_type["listing.updated"]["changed"] == ["category", "description", "title"]
    assert {data["version"] for data in by_type.values()} == {6}
    # Nothing leaked onto other channels.
    assert {row.channel for row in await outbox_rows(db)} == {channel, "feed:seoul-mapo"}


async def test_hiding_answers_204_and_the_listing_is_gone_for_everybody(
    client: Client, db: asyncpg.Connection, seller: Account, other: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    url = item_url(listing_id)
    response = await client.delete(url, headers={**seller.auth, "If-Match": etag_of(listing)})
    assert response.status == 204
    assert await response.read() == b""
    row = await db_listing(db, listing_id)
    assert (row["status"], row["version"]) == ("hidden", 2)
    rows = await outbox_rows(db, f"listing:{listing_id}")
    assert [(row.type, row.data["old_status"], row.data["status"]) for row in rows] == [
        ("listing.status_changed", "on_sale", "hidden")
    ]

    await problem(await client.get(url), 404, "listing-not-found")
    await problem(await client.get(url, headers=seller.auth), 404, "listing-not-found")
    await problem(await patch_listing(client, seller, listing_id, "*", {"price": 1}), 404)
    await problem(await patch_listing(client, other, listing_id, "*", {"price": 1}), 404)
    await problem(await client.delete(url, headers={**seller.auth, "If-Match": "*"}), 404)
    await problem(await client.put(url + "/like", headers=other.auth), 404)
    for query in ("", "?region=seoul-mapo", f"?seller={seller.user_id}", "?q=lamp"):
        feed = await (await client.get(LISTINGS + query)).json()
        assert feed["items"] == [], query
    assert (await db_listing(db, listing_id))["version"] == 2
    assert len(await outbox_rows(db, f"listing:{listing_id}")) == 1


async def test_hiding_a_sold_listing_records_the_old_status(
    client: Client, db: asyncpg.Connection, seller: Account
) -> None:
    body = await create_listing(client, seller, quantity=0)
    response = await client.delete(item_url(body["id"]), headers={**seller.auth, "If-Match": "*"})
    assert response.status == 204
    rows = await outbox_rows(db, f"listing:{body['id']}")
    assert [(row.type, row.data["old_status"]) for row in rows] == [
        ("listing.status_changed", "sold")
    ]


# --- atomicity of a change and its events ----------------------------------------------------


class OneConnectionPool:
    """Stands in for the pool so that the service runs inside the caller's transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self.conn


async def json_codecs(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def test_a_rolled_back_change_leaves_no_event(
    client: Client, database_url: str, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    conn = await asyncpg.connect(database_url)
    try:
        await json_codecs(conn)
        pool = cast(asyncpg.Pool, OneConnectionPool(conn))
        transaction = conn.transaction()
        await transaction.start()
        row, changed = await service.update_listing(
            pool,
            listing_id,
            seller.user_id,
            IfMatch(f'"{listing_id}-1-0"'),
            ListingPatch(price=1, title="rolled back"),
        )
        assert changed
        assert (row["price"], row["version"]) == (1, 2)
        # Inside the transaction the change and its events are there together...
        inside = await conn.fetch(
            "SELECT type FROM outbox WHERE channel = $1", f"listing:{listing_id}"
        )
        assert sorted(r["type"] for r in inside) == ["listing.price_changed", "listing.updated"]
        await transaction.rollback()
    finally:
        await conn.close()
    # ...and after the rollback neither is.
    after = await db_listing(db, listing_id)
    assert (after["price"], after["title"], after["version"]) == (12_000, "Desk lamp", 1)
    assert await outbox_rows(db, f"listing:{listing_id}") == []


async def test_a_change_whose_event_cannot_be_written_is_not_applied(
    client: Client, db: asyncpg.Connection, seller: Account, listing: JsonObject
) -> None:
    """The second event of a PATCH fails in the database: the listing must stay as it was."""
    listing_id = listing["id"]
    await db.execute(
        "CREATE FUNCTION test_refuse_updated() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.type = 'listing.updated' THEN RAISE EXCEPTION 'refused by test'; END IF;"
        " RETURN NEW; END $$;"
        "CREATE TRIGGER test_refuse_updated BEFORE INSERT ON outbox"
        " FOR EACH ROW EXECUTE FUNCTION test_refuse_updated()"
    )
    try:
        response = await patch_listing(
            client, seller, listing_id, etag_of(listing), {"price": 1, "title": "never"}
        )
        body = await problem(response, 500)
        assert "refused" not in orjson.dumps(body).decode()  # no internals leak
        hide = await client.delete(item_url(listing_id), headers={**seller.auth, "If-Match": "*"})
        assert hide.status == 204  # status_changed alone is allowed by the trigger
    finally:
        await db.execute(
            "DROP TRIGGER test_refuse_updated ON outbox; DROP FUNCTION test_refuse_updated()"
        )
    row = await db_listing(db, listing_id)
    assert (row["price"], row["title"], row["status"], row["version"]) == (
        12_000,
        "Desk lamp",
        "hidden",
        2,
    )
    rows = await outbox_rows(db, f"listing:{listing_id}")
    assert [row.type for row in rows] == ["listing.status_changed"]


async def test_service_refuses_strangers_and_unknown_listings(
    client: Client, db: asyncpg.Connection, settings: Settings, listing: JsonObject
) -> None:
    """The service layer itself (not only the handlers) enforces the seller and existence."""
    stranger = (await quick_accounts(db, settings, 1))[0]
    conn = await asyncpg.connect(settings.database_url or "")
    try:
        await json_codecs(conn)
        pool = cast(asyncpg.Pool, OneConnectionPool(conn))
        with pytest.raises(service.NotTheSeller):
            await service.update_listing(
                pool, listing["id"], stranger.user_id, ANY, ListingPatch(price=1)
            )
        with pytest.raises(service.NotTheSeller):
            await service.hide_listing(pool, listing["id"], stranger.user_id, ANY)
        with pytest.raises(NotFound):
            await service.update_listing(pool, 10**9, stranger.user_id, ANY, ListingPatch())
    finally:
        await conn.close()
    assert (await db_listing(db, listing["id"]))["version"] == 1
