"""Chat over REST: rooms, messages, read markers, unread counts, limits and outbox events."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse

from server.settings import RateLimit, Settings
from tests.conftest import ClientFactory
from tests.orders_support import OutboxRow, last_outbox_id, outbox_rows, problem, quick_accounts
from tests.server.listings_support import create_listing, item_url
from tests.support import Account, Client

CHATS = "/api/v1/chats"
JsonObject = dict[str, Any]
CLIENT_ID = "11111111-1111-4111-8111-111111111111"

MESSAGE_FIELDS = {"room_id", "id", "sender_id", "body", "client_id", "created_at"}
ROOM_FIELDS = {"id", "listing_id", "buyer_id", "seller_id", "created_at"}
SUMMARY_FIELDS = {"id", "listing", "other", "last_message", "unread", "last_activity_at"}


# -- helpers ---------------------------------------------------------------------------------


def open_url(listing_id: int | str) -> str:
    return f"/api/v1/listings/{listing_id}/chats"


def messages_url(room_id: int | str) -> str:
    return f"{CHATS}/{room_id}/messages"


def read_url(room_id: int | str) -> str:
    return f"{CHATS}/{room_id}/read"


@dataclass(frozen=True, slots=True)
class Room:
    """A seller's listing and one buyer's room on it."""

    client: Client
    seller: Account
    buyer: Account
    listing_id: int
    id: int


async def accounts(db: asyncpg.Connection, settings: Settings, *nicknames: str) -> list[Account]:
    """Accounts made in SQL, each with the nickname given (so ``other`` can be told apart)."""
    made = await quick_accounts(db, settings, len(nicknames))
    for account, nickname in zip(made, nicknames, strict=True):
        await db.execute("UPDATE users SET nickname = $2 WHERE id = $1", account.user_id, nickname)
    return made


async def new_listing(client: Client, seller: Account, title: str = "Used bicycle") -> int:
    listing = await create_listing(client, seller, title=title, price=12_000)
    listing_id: int = listing["id"]
    return listing_id


async def open_room(client: Client, buyer: Account, listing_id: int | str) -> ClientResponse:
    return await client.post(open_url(listing_id), headers=buyer.auth)


async def opened(client: Client, buyer: Account, listing_id: int, status: int = 201) -> JsonObject:
    response = await open_room(client, buyer, listing_id)
    assert response.status == status, await response.text()
    room: JsonObject = await response.json()
    assert set(room) == ROOM_FIELDS
    assert response.headers["Location"] == f"{CHATS}/{room['id']}"
    return room


async def new_room(client: Client, db: asyncpg.Connection, settings: Settings) -> Room:
    seller, buyer = await accounts(db, settings, "seller", "buyer")
    listing_id = await new_listing(client, seller)
    room = await opened(client, buyer, listing_id)
    return Room(client, seller, buyer, listing_id, room["id"])


async def send(
    client: Client, account: Account, room_id: int | str, body: Any = "hi", client_id: Any = None
) -> ClientResponse:
    payload = {"body": body, "client_id": client_id or str(uuid.uuid4())}
    return await client.post(messages_url(room_id), json=payload, headers=account.auth)


async def sent(
    client: Client, account: Account, room_id: int, body: str = "hi", client_id: str | None = None
) -> JsonObject:
    response = await send(client, account, room_id, body, client_id)
    assert response.status == 201, await response.text()
    message: JsonObject = await response.json()
    assert set(message) == MESSAGE_FIELDS
    return message


async def mark_read(
    client: Client, account: Account, room_id: int | str, up_to: Any
) -> ClientResponse:
    return await client.post(read_url(room_id), json={"up_to": up_to}, headers=account.auth)


async def marked_read(client: Client, account: Account, room_id: int, up_to: int) -> None:
    response = await mark_read(client, account, room_id, up_to)
    assert response.status == 204, await response.text()


async def message_page(client: Client, account: Account, room_id: int, **query: int) -> JsonObject:
    response = await client.get(
        messages_url(room_id), params={k: str(v) for k, v in query.items()}, headers=account.auth
    )
    assert response.status == 200, await response.text()
    page: JsonObject = await response.json()
    assert set(page) == {"items", "next_cursor"}
    return page


async def room_page(client: Client, account: Account, **query: str | int) -> JsonObject:
    response = await client.get(
        CHATS, params={k: str(v) for k, v in query.items()}, headers=account.auth
    )
    assert response.status == 200, await response.text()
    page: JsonObject = await response.json()
    assert set(page) == {"items", "next_cursor"}
    for item in page["items"]:
        assert set(item) == SUMMARY_FIELDS, item
    return page


async def all_rooms(client: Client, account: Account, limit: int) -> list[JsonObject]:
    """Every room of ``account`` by following next_cursor; no page may exceed ``limit``."""
    items: list[JsonObject] = []
    cursor: str | None = None
    for _ in range(100):
        query: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        page = await room_page(client, account, **query)
        assert 1 <= len(page["items"]) <= limit, page
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


async def summary_of(client: Client, account: Account, room_id: int) -> JsonObject:
    rooms = {item["id"]: item for item in (await room_page(client, account, limit=100))["items"]}
    room: JsonObject = rooms[room_id]
    return room


async def stored_messages(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM chat_messages")
    return count


async def chat_events(db: asyncpg.Connection, after_id: int = 0) -> list[OutboxRow]:
    return [row for row in await outbox_rows(db, after_id) if row.type.startswith("chat.")]


async def markers(db: asyncpg.Connection, room_id: int) -> tuple[int, int, int]:
    row = await db.fetchrow(
        "SELECT buyer_read_up_to, seller_read_up_to, last_message_id FROM chat_rooms WHERE id = $1",
        room_id,
    )
    assert row is not None
    return row["buyer_read_up_to"], row["seller_read_up_to"], row["last_message_id"]


async def waiting_on_locks(db: asyncpg.Connection, count: int) -> None:
    """Wait until ``count`` sessions of this database wait for a lock (the test holds it)."""
    try:
        async with asyncio.timeout(60):
            while True:
                waiting = await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if waiting >= count:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{count} requests never queued on the lock")


# -- opening a room --------------------------------------------------------------------------


async def test_opening_a_room_is_201_then_200_with_the_same_room(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    seller, buyer = await accounts(db, settings, "seller", "buyer")
    listing_id = await new_listing(client, seller)

    first = await opened(client, buyer, listing_id, 201)
    assert first["listing_id"] == listing_id
    assert first["buyer_id"] == buyer.user_id
    assert first["seller_id"] == seller.user_id
    again = await opened(client, buyer, listing_id, 200)
    assert again == first
    assert await db.fetchval("SELECT count(*) FROM chat_rooms") == 1


async def test_twenty_concurrent_opens_make_one_room(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    seller, buyer = await accounts(db, settings, "seller", "buyer")
    listing_id = await new_listing(client, seller)

    responses = await asyncio.gather(*(open_room(client, buyer, listing_id) for _ in range(20)))
    statuses = Counter(response.status for response in responses)
    assert statuses == {201: 1, 200: 19}, statuses
    ids = {(await response.json())["id"] for response in responses}
    assert len(ids) == 1
    rows = await db.fetch("SELECT id, buyer_id, seller_id FROM chat_rooms")
    assert [tuple(row) for row in rows] == [(ids.pop(), buyer.user_id, seller.user_id)]


async def test_opens_queued_behind_an_uncommitted_insert_still_make_one_room(
    client: Client, database_url: str, db: asyncpg.Connection, settings: Settings
) -> None:
    """Every open gets past the first look and meets the unique key inside its transaction."""
    seller, buyer = await accounts(db, settings, "seller", "buyer")
    listing_id = await new_listing(client, seller)
    holder = await asyncpg.connect(database_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO chat_rooms (listing_id, buyer_id, seller_id) VALUES ($1, $2, $3)",
            listing_id,
            buyer.user_id,
            seller.user_id,
        )
        opens = [asyncio.ensure_future(open_room(client, buyer, listing_id)) for _ in range(10)]
        await waiting_on_locks(db, 10)
        await tx.rollback()
        responses = await asyncio.gather(*opens)
    finally:
        await holder.close()
    statuses = Counter(response.status for response in responses)
    assert statuses == {201: 1, 200: 9}, [await response.text() for response in responses]
    ids = {(await response.json())["id"] for response in responses}
    rows = await db.fetch("SELECT id FROM chat_rooms")
    assert [row["id"] for row in rows] == list(ids)


async def test_the_seller_cannot_open_a_room_on_their_own_listing(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    (seller,) = await accounts(db, settings, "seller")
    listing_id = await new_listing(client, seller)

    await problem(await open_room(client, seller, listing_id), 409, "own-listing-chat")
    assert await db.fetchval("SELECT count(*) FROM chat_rooms") == 0
    # The constraint stands behind the API: no room with buyer and seller the same person.
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO chat_rooms (listing_id, buyer_id, seller_id) VALUES ($1, $2, $2)",
            listing_id,
            seller.user_id,
        )


async def test_a_hidden_listing_opens_no_room_but_an_existing_one_is_still_found(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    seller, early, late = await accounts(db, settings, "seller", "early", "late")
    listing_id = await new_listing(client, seller)
    room = await opened(client, early, listing_id, 201)
    hidden = await client.delete(item_url(listing_id), headers={**seller.auth, "If-Match": "*"})
    assert hidden.status == 204, await hidden.text()

    await problem(await open_room(client, late, listing_id), 404, "listing-not-found")
    assert await opened(client, early, listing_id, 200) == room
    assert await db.fetchval("SELECT count(*) FROM chat_rooms") == 1


@pytest.mark.parametrize("listing_id", ["999999", "0", "abc", "99999999999999999999"])
async def test_an_unknown_listing_is_404(
    client: Client, db: asyncpg.Connection, settings: Settings, listing_id: str
) -> None:
    (buyer,) = await accounts(db, settings, "buyer")
    await problem(await open_room(client, buyer, listing_id), 404, "listing-not-found")
    assert await db.fetchval("SELECT count(*) FROM chat_rooms") == 0


async def test_chat_routes_need_a_token(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    answers = [
        await client.post(open_url(room.listing_id)),
        await client.get(CHATS),
        await client.get(messages_url(room.id)),
        await client.post(
            messages_url(room.id), json={"body": "x", "client_id": str(uuid.uuid4())}
        ),
        await client.post(read_url(room.id), json={"up_to": 1}),
    ]
    assert [answer.status for answer in answers] == [401] * 5
    assert await stored_messages(db) == 0


# -- who sees a room -------------------------------------------------------------------------


async def test_a_stranger_gets_404_on_every_room_route_like_an_unknown_room(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    await sent(client, room.seller, room.id, "hello")
    (stranger,) = await accounts(db, settings, "stranger")
    events_from = await last_outbox_id(db)
    before = await markers(db, room.id)

    for room_id in (room.id, 999_999, "0", "x"):
        bodies = [
            await problem(
                await client.get(messages_url(room_id), headers=stranger.auth),
                404,
                "room-not-found",
            ),
            await problem(await send(client, stranger, room_id), 404, "room-not-found"),
            await problem(await mark_read(client, stranger, room_id, 1), 404, "room-not-found"),
        ]
        for body in bodies:
            assert {key: body[key] for key in ("type", "title", "status")} == {
                "type": bodies[0]["type"],
                "title": "No such chat room",
                "status": 404,
            }

    assert await stored_messages(db) == 1
    assert await markers(db, room.id) == before
    assert await outbox_rows(db, events_from) == []
    assert (await room_page(client, stranger))["items"] == []
    # The participants still see it.
    for account in (room.buyer, room.seller):
        assert [m["body"] for m in (await message_page(client, account, room.id))["items"]] == [
            "hello"
        ]


# -- sending ---------------------------------------------------------------------------------


async def test_a_message_is_stored_and_listed(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    client_id = str(uuid.uuid4())
    message = await sent(client, room.buyer, room.id, "still for sale?", client_id)
    assert message["room_id"] == room.id
    assert message["id"] == 1
    assert message["sender_id"] == room.buyer.user_id
    assert message["body"] == "still for sale?"
    assert message["client_id"] == client_id
    for account in (room.buyer, room.seller):
        assert (await message_page(client, account, room.id))["items"] == [message]


async def test_the_same_client_id_twenty_times_at_once_is_stored_once(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    client_id = str(uuid.uuid4())

    responses = await asyncio.gather(
        *(send(client, room.buyer, room.id, f"try {n}", client_id) for n in range(20))
    )
    statuses = Counter(response.status for response in responses)
    assert statuses == {201: 1, 200: 19}, statuses
    bodies = [await response.json() for response in responses]
    assert all(body == bodies[0] for body in bodies), bodies
    rows = await db.fetch("SELECT id, body, client_id::text AS client_id FROM chat_messages")
    assert [(row["id"], row["body"], row["client_id"]) for row in rows] == [
        (bodies[0]["id"], bodies[0]["body"], client_id)
    ]
    assert len(await chat_events(db)) == 2  # one message: its two events, once


async def test_sends_queued_on_the_room_lock_store_one_client_id_once(
    client: Client, database_url: str, db: asyncpg.Connection, settings: Settings
) -> None:
    """Every send gets past the first look, so only the look under the room lock saves it."""
    room = await new_room(client, db, settings)
    client_id = str(uuid.uuid4())
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM chat_rooms WHERE id = $1 FOR UPDATE", room.id)
            sends = [
                asyncio.ensure_future(send(client, room.buyer, room.id, f"try {n}", client_id))
                for n in range(10)
            ]
            await waiting_on_locks(db, 10)
        responses = await asyncio.gather(*sends)
    finally:
        await holder.close()
    statuses = Counter(response.status for response in responses)
    assert statuses == {201: 1, 200: 9}, [await response.text() for response in responses]
    bodies = [await response.json() for response in responses]
    assert all(body == bodies[0] for body in bodies), bodies
    assert await stored_messages(db) == 1
    assert len(await chat_events(db)) == 2


async def test_a_repeat_returns_the_stored_message_even_with_another_body(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    client_id = str(uuid.uuid4())
    first = await sent(client, room.buyer, room.id, "first", client_id)
    again = await send(client, room.buyer, room.id, "second", client_id)
    assert again.status == 200
    assert await again.json() == first
    # A client_id belongs to its sender: the other side may use the same one.
    other = await sent(client, room.seller, room.id, "reply", client_id)
    assert other["id"] == 2
    assert await stored_messages(db) == 2


async def test_message_ids_count_1_2_3_per_room_under_concurrent_sends_from_both_sides(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    other = await opened(client, (await accounts(db, settings, "other"))[0], room.listing_id)
    await sent(client, room.seller, other["id"], "a different room")

    senders = [room.buyer, room.seller] * 15
    responses = await asyncio.gather(
        *(send(client, account, room.id, f"m{n}") for n, account in enumerate(senders))
    )
    assert [response.status for response in responses] == [201] * 30
    messages = [await response.json() for response in responses]
    assert sorted(message["id"] for message in messages) == list(range(1, 31))
    for n, (message, account) in enumerate(zip(messages, senders, strict=True)):
        assert message["body"] == f"m{n}"
        assert message["sender_id"] == account.user_id
    rows = await db.fetch("SELECT id FROM chat_messages WHERE room_id = $1 ORDER BY id", room.id)
    assert [row["id"] for row in rows] == list(range(1, 31))
    assert (await markers(db, room.id))[2] == 30
    # The other room numbers its own messages.
    assert [m["id"] for m in (await message_page(client, room.seller, other["id"]))["items"]] == [1]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"body": "", "client_id": CLIENT_ID}, "body"),
        ({"body": "x" * 1001, "client_id": CLIENT_ID}, "body"),
        ({"body": 5, "client_id": CLIENT_ID}, "body"),
        ({"body": None, "client_id": CLIENT_ID}, "body"),
        ({"body": "hi", "client_id": "not-a-uuid"}, "client_id"),
        ({"body": "hi", "client_id": 12}, "client_id"),
        (
            {"body": "hi", "client_id": CLIENT_ID, "room_id": 1},
            "room_id",
        ),
        ({"client_id": CLIENT_ID}, "body"),
        ({"body": "hi"}, "client_id"),
    ],
)
async def test_an_invalid_message_is_422_and_nothing_is_stored(
    client: Client, db: asyncpg.Connection, settings: Settings, body: JsonObject, field: str
) -> None:
    room = await new_room(client, db, settings)
    events_from = await last_outbox_id(db)
    response = await client.post(messages_url(room.id), json=body, headers=room.buyer.auth)
    answer = await problem(response, 422, "validation-failed")
    assert field in {error["field"] for error in answer["errors"]}, answer
    assert await stored_messages(db) == 0
    assert await outbox_rows(db, events_from) == []


async def test_a_body_of_exactly_1000_characters_is_taken(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    body = "한" * 1000  # characters, not bytes
    assert (await sent(client, room.buyer, room.id, body))["body"] == body


@pytest.mark.parametrize("path", ["messages", "read"])
async def test_malformed_json_is_400(
    client: Client, db: asyncpg.Connection, settings: Settings, path: str
) -> None:
    room = await new_room(client, db, settings)
    response = await client.post(
        f"{CHATS}/{room.id}/{path}",
        data=b'{"body": "hi", ',
        headers={**room.buyer.auth, "Content-Type": "application/json"},
    )
    await problem(response, 400, "malformed-json")
    assert await stored_messages(db) == 0


# -- reading and unread counts ---------------------------------------------------------------


async def test_markers_never_move_back_and_are_capped_at_the_last_message(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    for n in range(6):
        await sent(client, room.seller, room.id, f"s{n}")

    await marked_read(client, room.buyer, room.id, 5)
    assert await markers(db, room.id) == (5, 0, 6)
    assert (await summary_of(client, room.buyer, room.id))["unread"] == 1
    await marked_read(client, room.buyer, room.id, 2)
    await marked_read(client, room.buyer, room.id, 0)
    assert await markers(db, room.id) == (5, 0, 6)
    assert (await summary_of(client, room.buyer, room.id))["unread"] == 1

    await marked_read(client, room.buyer, room.id, 2**63 - 1)
    assert await markers(db, room.id) == (6, 0, 6)
    assert (await summary_of(client, room.buyer, room.id))["unread"] == 0
    # Capped, not remembered as "everything forever": the next message is unread.
    await sent(client, room.seller, room.id, "one more")
    assert (await summary_of(client, room.buyer, room.id))["unread"] == 1
    assert await markers(db, room.id) == (6, 0, 7)


async def test_concurrent_reads_keep_the_highest_marker(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    for n in range(20):
        await sent(client, room.seller, room.id, f"s{n}")
    ups = [3, 17, 9, 1, 12, 17, 5] * 3
    responses = await asyncio.gather(*(mark_read(client, room.buyer, room.id, n) for n in ups))
    assert [response.status for response in responses] == [204] * len(ups)
    assert await markers(db, room.id) == (17, 0, 20)
    reads = [row.data["up_to"] for row in await chat_events(db) if row.type == "chat.read"]
    assert reads == sorted(set(reads)) and reads[-1] == 17, reads


async def test_unread_counts_are_exact_after_concurrent_sends_and_reads(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    senders = [room.buyer] * 7 + [room.seller] * 11
    responses = await asyncio.gather(
        *(send(client, account, room.id, f"m{n}") for n, account in enumerate(senders))
    )
    assert [response.status for response in responses] == [201] * 18
    from_buyer = {(await r.json())["id"] for r, a in zip(responses, senders, strict=True)
                  if a is room.buyer}  # fmt: skip
    from_seller = set(range(1, 19)) - from_buyer

    # Nothing read yet: everything from the other side is unread, one's own never is.
    assert (await summary_of(client, room.buyer, room.id))["unread"] == 11
    assert (await summary_of(client, room.seller, room.id))["unread"] == 7

    # Reads racing each other and more sends: each side's marker ends at its highest read.
    buyer_ups, seller_ups = [4, 10, 7, 2], [15, 1, 9]
    more = [room.seller] * 3
    answers = await asyncio.gather(
        *(mark_read(client, room.buyer, room.id, n) for n in buyer_ups),
        *(mark_read(client, room.seller, room.id, n) for n in seller_ups),
        *(send(client, account, room.id, "late") for account in more),
    )
    assert [a.status for a in answers] == [204] * 7 + [201] * 3
    from_seller |= {(await a.json())["id"] for a in answers[7:]}
    assert await markers(db, room.id) == (10, 15, 21)

    buyer_view = await summary_of(client, room.buyer, room.id)
    seller_view = await summary_of(client, room.seller, room.id)
    assert buyer_view["unread"] == len([n for n in from_seller if n > 10])
    assert seller_view["unread"] == len([n for n in from_buyer if n > 15])
    assert buyer_view["last_message"]["id"] == seller_view["last_message"]["id"] == 21

    await marked_read(client, room.buyer, room.id, 21)
    await marked_read(client, room.seller, room.id, 21)
    assert (await summary_of(client, room.buyer, room.id))["unread"] == 0
    assert (await summary_of(client, room.seller, room.id))["unread"] == 0


# -- listing rooms ---------------------------------------------------------------------------


async def test_my_rooms_show_listing_other_side_last_message_and_unread(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    seller, buyer = await accounts(db, settings, "Kim the seller", "Lee the buyer")
    listing = await create_listing(client, seller, title="Rice cooker", price=35_000)
    room = await opened(client, buyer, listing["id"])

    (empty,) = (await room_page(client, buyer))["items"]
    assert empty["id"] == room["id"]
    assert empty["listing"] == {"id": listing["id"], "title": "Rice cooker", "price": 35_000}
    assert empty["other"] == {"id": seller.user_id, "nickname": "Kim the seller"}
    assert empty["last_message"] is None
    assert empty["unread"] == 0

    await sent(client, buyer, room["id"], "hello")
    last = await sent(client, seller, room["id"], "hi there")
    (mine,) = (await room_page(client, buyer))["items"]
    (theirs,) = (await room_page(client, seller))["items"]
    assert mine["last_message"] == theirs["last_message"] == last
    assert (mine["unread"], theirs["unread"]) == (1, 1)
    assert theirs["other"] == {"id": buyer.user_id, "nickname": "Lee the buyer"}
    assert theirs["listing"] == mine["listing"]


async def test_rooms_are_newest_activity_first_and_pages_walk_them_all_once(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    me, first_buyer, second_buyer, other_seller = await accounts(
        db, settings, "me", "first", "second", "other"
    )
    my_listing = await new_listing(client, me, "my desk")
    their_listing = await new_listing(client, other_seller, "their lamp")
    r1 = (await opened(client, first_buyer, my_listing))["id"]
    r2 = (await opened(client, second_buyer, my_listing))["id"]
    r3 = (await opened(client, me, their_listing))["id"]

    async def order() -> list[int]:
        return [item["id"] for item in (await room_page(client, me))["items"]]

    assert await order() == [r3, r2, r1]
    await sent(client, first_buyer, r1, "is it still there?")
    assert await order() == [r1, r3, r2]
    await sent(client, me, r2, "yes")
    assert await order() == [r2, r1, r3]
    await marked_read(client, me, r1, 1)  # reading is not activity
    assert await order() == [r2, r1, r3]

    for limit in (1, 2, 3):
        assert [item["id"] for item in await all_rooms(client, me, limit)] == [r2, r1, r3]
    page = await room_page(client, me, limit=3)
    assert page["next_cursor"] is None
    assert [item["id"] for item in (await room_page(client, first_buyer))["items"]] == [r1]


async def test_room_pages_hold_under_equal_and_microsecond_apart_activity_times(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    me, *others = await accounts(db, settings, "me", "a", "b", "c", "d", "e", "f")
    rooms = []
    for n, other in enumerate(others):
        if n % 2:  # I am the seller of some rooms and the buyer of others
            rooms.append((await opened(client, other, await new_listing(client, me)))["id"])
        else:
            rooms.append((await opened(client, me, await new_listing(client, other)))["id"])
    base = datetime(2025, 3, 1, 12, 0, 0, 123_457, tzinfo=UTC)
    offsets = [0, 1, 0, 2, 1, 0]  # microseconds: ties and neighbours
    for room_id, offset in zip(rooms, offsets, strict=True):
        await db.execute(
            "UPDATE chat_rooms SET last_activity_at = $2 WHERE id = $1",
            room_id,
            base + timedelta(microseconds=offset),
        )
    expected = [
        room_id
        for room_id, _ in sorted(
            zip(rooms, offsets, strict=True), key=lambda pair: (pair[1], pair[0]), reverse=True
        )
    ]

    for limit in (1, 2, 4, 6, 20):
        walked = [item["id"] for item in await all_rooms(client, me, limit)]
        assert walked == expected, (limit, walked)


@pytest.mark.parametrize(
    "query",
    [{"cursor": "not-a-cursor"}, {"limit": "0"}, {"limit": "101"}, {"sort": "old"}],
)
async def test_bad_room_list_queries_are_422(
    client: Client, db: asyncpg.Connection, settings: Settings, query: dict[str, str]
) -> None:
    (me,) = await accounts(db, settings, "me")
    response = await client.get(CHATS, params=query, headers=me.auth)
    await problem(response, 422, "validation-failed")


# -- listing messages ------------------------------------------------------------------------


async def test_messages_are_newest_first_and_before_pages_back(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    for n in range(5):
        await sent(client, room.buyer if n % 2 else room.seller, room.id, f"m{n + 1}")

    everything = await message_page(client, room.buyer, room.id)
    assert [m["id"] for m in everything["items"]] == [5, 4, 3, 2, 1]
    assert [m["body"] for m in everything["items"]] == ["m5", "m4", "m3", "m2", "m1"]
    assert everything["next_cursor"] is None
    exact = await message_page(client, room.buyer, room.id, limit=5)
    assert exact == everything

    first = await message_page(client, room.buyer, room.id, limit=2)
    assert [m["id"] for m in first["items"]] == [5, 4]
    assert first["next_cursor"] == 4
    second = await message_page(client, room.buyer, room.id, limit=2, before=4)
    assert [m["id"] for m in second["items"]] == [3, 2]
    assert second["next_cursor"] == 2
    last = await message_page(client, room.buyer, room.id, limit=2, before=2)
    assert [m["id"] for m in last["items"]] == [1]
    assert last["next_cursor"] is None
    assert first["items"] + second["items"] + last["items"] == everything["items"]
    assert (await message_page(client, room.seller, room.id, before=1))["items"] == []


@pytest.mark.parametrize(
    "query", [{"before": "0"}, {"before": "x"}, {"limit": "0"}, {"limit": "101"}, {"after": "1"}]
)
async def test_bad_message_queries_are_422(
    client: Client, db: asyncpg.Connection, settings: Settings, query: dict[str, str]
) -> None:
    room = await new_room(client, db, settings)
    response = await client.get(messages_url(room.id), params=query, headers=room.buyer.auth)
    await problem(response, 422, "validation-failed")


@pytest.mark.parametrize("up_to", [-1, "3", None, 2**63, 1.5])
async def test_an_invalid_read_is_422(
    client: Client, db: asyncpg.Connection, settings: Settings, up_to: Any
) -> None:
    room = await new_room(client, db, settings)
    await sent(client, room.seller, room.id)
    await problem(await mark_read(client, room.buyer, room.id, up_to), 422, "validation-failed")
    assert await markers(db, room.id) == (0, 0, 1)


# -- limits ----------------------------------------------------------------------------------


async def test_chat_writes_are_rate_limited_per_user(
    make_client: ClientFactory, db: asyncpg.Connection, settings: Settings
) -> None:
    client = await make_client(settings.replace(rate_limit_writes=RateLimit(3, 60)))
    seller, buyer = await accounts(db, settings, "seller", "buyer")
    listing_id = await new_listing(client, seller)  # the seller's first write
    room = await opened(client, buyer, listing_id)  # the buyer's first write
    await sent(client, buyer, room["id"], "one")
    await sent(client, buyer, room["id"], "two")

    for refused in (
        await send(client, buyer, room["id"], "three"),
        await mark_read(client, buyer, room["id"], 1),
        await open_room(client, buyer, listing_id),
    ):
        await problem(refused, 429, "rate-limited")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert await stored_messages(db) == 2
    # Another user's budget is their own.
    await sent(client, seller, room["id"], "reply")
    assert await stored_messages(db) == 3


# -- events ----------------------------------------------------------------------------------


async def test_each_message_writes_an_event_to_the_room_and_to_the_other_side(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    events_from = await last_outbox_id(db)

    from_buyer = await sent(client, room.buyer, room.id, "hello")
    from_seller = await sent(client, room.seller, room.id, "hi")
    again = await send(client, room.buyer, room.id, "hello", from_buyer["client_id"])
    assert again.status == 200  # a repeat writes nothing

    events = await outbox_rows(db, events_from)
    assert [(row.channel, row.type) for row in events] == [
        (f"room:{room.id}", "chat.message"),
        (f"user:{room.seller.user_id}", "chat.message"),
        (f"room:{room.id}", "chat.message"),
        (f"user:{room.buyer.user_id}", "chat.message"),
    ]
    for row, message in zip(
        events, [from_buyer, from_buyer, from_seller, from_seller], strict=True
    ):
        assert row.data == {**message, "listing_id": room.listing_id}


async def test_a_read_that_moves_the_marker_writes_one_event_to_the_room(
    client: Client, db: asyncpg.Connection, settings: Settings
) -> None:
    room = await new_room(client, db, settings)
    for _ in range(3):
        await sent(client, room.buyer, room.id)
    events_from = await last_outbox_id(db)

    await marked_read(client, room.seller, room.id, 2)
    await marked_read(client, room.seller, room.id, 1)  # backwards: no move, no event
    await marked_read(client, room.seller, room.id, 2)  # same: no event
    await marked_read(client, room.seller, room.id, 50)  # capped at 3
    await marked_read(client, room.seller, room.id, 50)  # already there: no event

    events = await outbox_rows(db, events_from)
    assert [(row.channel, row.type, row.data) for row in events] == [
        (f"room:{room.id}", "chat.read", {"room_id": room.id, "user_id": room.seller.user_id,
                                          "up_to": up_to})
        for up_to in (2, 3)
    ]  # fmt: skip
