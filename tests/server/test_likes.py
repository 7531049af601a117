"""Likes: exact counts under concurrency, idempotency, events, ETags, hidden or unknown ones."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from server.settings import Settings
from tests.server.listings_support import (
    JsonObject,
    create_listing,
    etag_of,
    get_listing,
    item_url,
    outbox_rows,
    problem,
    quick_accounts,
)
from tests.support import Account, Client


def like_url(listing_id: int | str) -> str:
    return item_url(listing_id) + "/like"


async def like(client: Client, account: Account, listing_id: int) -> None:
    response = await client.put(like_url(listing_id), headers=account.auth)
    assert response.status == 204, await response.text()
    assert await response.read() == b""


async def unlike(client: Client, account: Account, listing_id: int) -> None:
    response = await client.delete(like_url(listing_id), headers=account.auth)
    assert response.status == 204, await response.text()
    assert await response.read() == b""


async def likers(db: asyncpg.Connection, listing_id: int) -> set[int]:
    rows = await db.fetch("SELECT user_id FROM listing_likes WHERE listing_id = $1", listing_id)
    return {row["user_id"] for row in rows}


async def stored_like_count(db: asyncpg.Connection, listing_id: int) -> int:
    count: int = await db.fetchval("SELECT like_count FROM listings WHERE id = $1", listing_id)
    return count


@pytest.fixture
async def seller(db: asyncpg.Connection, settings: Settings) -> Account:
    return (await quick_accounts(db, settings, 1))[0]


@pytest.fixture
async def listing(client: Client, seller: Account) -> JsonObject:
    return await create_listing(client, seller, title="Camping chair", price=15_000)


async def test_300_concurrent_likes_and_unlikes_from_100_users_keep_the_count_exact(
    client: Client,
    db: asyncpg.Connection,
    settings: Settings,
    seller: Account,
    listing: JsonObject,
) -> None:
    listing_id = listing["id"]
    users = await quick_accounts(db, settings, 100)
    # Each user's own requests run in order; the users run at the same time. Even users end
    # liking (like, unlike, like); odd users end not liking (like, like again, unlike).
    plans = {
        user.user_id: (like, unlike, like) if n % 2 == 0 else (like, like, unlike)
        for n, user in enumerate(users)
    }

    async def act(user: Account) -> None:
        for step in plans[user.user_id]:
            await step(client, user, listing_id)

    await asyncio.gather(*(act(user) for user in users))

    expected = {user.user_id for n, user in enumerate(users) if n % 2 == 0}
    assert await likers(db, listing_id) == expected
    assert await stored_like_count(db, listing_id) == len(expected) == 50
    body, etag = await get_listing(client, listing_id)
    assert body["like_count"] == 50
    assert body["version"] == 1  # likes are not edits
    assert etag == f'"{listing_id}-1-50"'

    # One event per real change: even users changed 3 times, odd users twice (the second
    # like was a no-op); the seller hears of likes only.
    listing_events = await outbox_rows(db, f"listing:{listing_id}")
    assert len(listing_events) == 50 * 3 + 50 * 2
    seller_events = await outbox_rows(db, f"user:{seller.user_id}")
    assert len(seller_events) == 50 * 2 + 50 * 1
    assert all(event.data["liked"] for event in seller_events)
    # Outbox rows are written while the listing row is locked, so in id order every event's
    # count is exactly one more (like) or one less (unlike) than the previous one.
    count = 0
    for event in listing_events:
        assert event.type == "listing.liked"
        assert event.data["listing_id"] == listing_id
        count += 1 if event.data["liked"] else -1
        assert event.data["like_count"] == count, event
    assert count == 50
    per_user: dict[int, list[bool]] = {}
    for event in listing_events:
        per_user.setdefault(event.data["user_id"], []).append(event.data["liked"])
    for n, user in enumerate(users):
        wanted = [True, False, True] if n % 2 == 0 else [True, False]
        assert per_user[user.user_id] == wanted


async def test_concurrent_repeats_of_one_users_like_count_once(
    client: Client, db: asyncpg.Connection, settings: Settings, listing: JsonObject
) -> None:
    user = (await quick_accounts(db, settings, 1))[0]
    await asyncio.gather(*(like(client, user, listing["id"]) for _ in range(30)))
    assert await likers(db, listing["id"]) == {user.user_id}
    assert await stored_like_count(db, listing["id"]) == 1
    await asyncio.gather(*(unlike(client, user, listing["id"]) for _ in range(30)))
    assert await likers(db, listing["id"]) == set()
    assert await stored_like_count(db, listing["id"]) == 0
    events = await outbox_rows(db, f"listing:{listing['id']}")
    assert [(event.data["liked"], event.data["like_count"]) for event in events] == [
        (True, 1),
        (False, 0),
    ]


async def test_like_and_unlike_are_idempotent(
    client: Client, db: asyncpg.Connection, settings: Settings, seller: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    fan, other = await quick_accounts(db, settings, 2)

    await unlike(client, fan, listing_id)  # nothing to remove: still 204, no event
    assert await outbox_rows(db, f"listing:{listing_id}") == []

    await like(client, fan, listing_id)
    await like(client, fan, listing_id)
    assert (await get_listing(client, listing_id))[0]["like_count"] == 1
    await like(client, other, listing_id)
    assert (await get_listing(client, listing_id))[0]["like_count"] == 2
    await unlike(client, fan, listing_id)
    await unlike(client, fan, listing_id)
    body, _ = await get_listing(client, listing_id)
    assert body["like_count"] == 1
    assert await likers(db, listing_id) == {other.user_id}

    events = await outbox_rows(db, f"listing:{listing_id}")
    assert [(e.data["user_id"], e.data["liked"], e.data["like_count"]) for e in events] == [
        (fan.user_id, True, 1),
        (other.user_id, True, 2),
        (fan.user_id, False, 1),
    ]
    # Likes go to the seller's channel too; unlikes do not.
    seller_events = await outbox_rows(db, f"user:{seller.user_id}")
    assert [(e.type, e.data["user_id"]) for e in seller_events] == [
        ("listing.liked", fan.user_id),
        ("listing.liked", other.user_id),
    ]
    assert {row.channel for row in await outbox_rows(db)} == {
        f"listing:{listing_id}",
        f"user:{seller.user_id}",
        "feed:seoul-mapo",
    }


async def test_likes_change_the_etag_but_not_the_version(
    client: Client, db: asyncpg.Connection, settings: Settings, seller: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    fan = (await quick_accounts(db, settings, 1))[0]
    _, before = await get_listing(client, listing_id)
    await like(client, fan, listing_id)
    body, after = await get_listing(client, listing_id)
    assert (body["version"], body["like_count"]) == (1, 1)
    assert after == f'"{listing_id}-1-1"' != before
    # A client holding the old ETag sees the change.
    refreshed = await client.get(item_url(listing_id), headers={"If-None-Match": before})
    assert refreshed.status == 200
    assert (await client.get(item_url(listing_id), headers={"If-None-Match": after})).status == 304
    # The seller's edit based on the pre-like read is not a conflict.
    response = await client.patch(
        item_url(listing_id), json={"price": 14_000}, headers={**seller.auth, "If-Match": before}
    )
    assert response.status == 200
    assert response.headers["ETag"] == f'"{listing_id}-2-1"'
    assert etag_of(await response.json()) == f'"{listing_id}-2-1"'


async def test_likes_on_hidden_or_unknown_listings_are_404(
    client: Client, db: asyncpg.Connection, settings: Settings, seller: Account, listing: JsonObject
) -> None:
    listing_id = listing["id"]
    fan = (await quick_accounts(db, settings, 1))[0]
    await like(client, fan, listing_id)
    for target in ("9999999", "abc", "0"):
        await problem(await client.put(like_url(target), headers=fan.auth), 404)
        await problem(await client.delete(like_url(target), headers=fan.auth), 404)

    hide = await client.delete(item_url(listing_id), headers={**seller.auth, "If-Match": "*"})
    assert hide.status == 204
    events_before = len(await outbox_rows(db))
    await problem(
        await client.put(like_url(listing_id), headers=fan.auth), 404, "listing-not-found"
    )
    await problem(
        await client.delete(like_url(listing_id), headers=fan.auth), 404, "listing-not-found"
    )
    other = (await quick_accounts(db, settings, 1))[0]
    await problem(await client.put(like_url(listing_id), headers=other.auth), 404)
    assert await likers(db, listing_id) == {fan.user_id}
    assert await stored_like_count(db, listing_id) == 1
    assert len(await outbox_rows(db)) == events_before


async def test_likes_need_a_token(
    client: Client, db: asyncpg.Connection, listing: JsonObject
) -> None:
    for method in ("PUT", "DELETE"):
        response = await client.request(method, like_url(listing["id"]))
        await problem(response, 401)
    assert await likers(db, listing["id"]) == set()
