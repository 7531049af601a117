"""RFC 9110 section 13.2.1: preconditions are evaluated after authorization.

A stranger's PATCH or DELETE of a listing is 403 whatever its If-Match says (absent,
stale, foreign, ``*``): a 428 or 412 would tell them that an ETag is all they lack.
Only the seller hears 428 and 412.
"""

from __future__ import annotations

import asyncpg
import pytest

from tests.server.listings_support import create_listing, etag_of, item_url
from tests.support import Client, sign_up

IF_MATCH_VALUES = {
    "absent": None,
    "stale": '"{id}-99-0"',
    "another listing": '"999999-1-0"',
    "garbage": "garbage",
    "any": "*",
}


@pytest.mark.parametrize("if_match", IF_MATCH_VALUES.values(), ids=IF_MATCH_VALUES.keys())
async def test_a_strangers_change_is_403_whatever_its_if_match(
    client: Client, db: asyncpg.Connection, if_match: str | None
) -> None:
    seller, stranger = await sign_up(client), await sign_up(client)
    listing = await create_listing(client, seller)
    headers = dict(stranger.auth)
    if if_match is not None:
        headers["If-Match"] = if_match.format(id=listing["id"])
    url = item_url(listing["id"])
    for response in (
        await client.patch(url, json={"price": 1}, headers=headers),
        await client.delete(url, headers=headers),
    ):
        assert response.status == 403, await response.text()
        assert (await response.json())["type"].endswith("/not-the-seller")
    row = await db.fetchrow(
        "SELECT price, status, version FROM listings WHERE id = $1", listing["id"]
    )
    assert row is not None
    assert (row["price"], row["status"], row["version"]) == (listing["price"], "on_sale", 1)


async def test_an_unknown_listing_is_404_whatever_its_if_match(client: Client) -> None:
    stranger = await sign_up(client)
    for if_match in (None, "garbage", '"1-1-0"'):
        headers = dict(stranger.auth) | ({"If-Match": if_match} if if_match else {})
        response = await client.patch(item_url(424242), json={"price": 1}, headers=headers)
        assert response.status == 404, (if_match, await response.text())


async def test_the_seller_still_hears_428_and_412(client: Client) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    url = item_url(listing["id"])
    missing = await client.patch(url, json={"price": 1}, headers=seller.auth)
    assert missing.status == 428
    stale = await client.delete(url, headers={**seller.auth, "If-Match": '"1-99-0"'})
    assert stale.status == 412
    fresh = await client.patch(
        url, json={"price": 1}, headers={**seller.auth, "If-Match": etag_of(listing)}
    )
    assert fresh.status == 200
