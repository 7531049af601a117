"""Chat over the WebSocket: send and ack, room channels, presence and typing, user events.

The real app in-process with real PostgreSQL, Redis and relay. Every wait is for a frame
or a condition; TIMEOUT only turns a hang into a failure, and nothing asserts durations.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType

from realtime.keys import gateway_key
from server.settings import RateLimit, Settings
from tests.conftest import ClientFactory
from tests.server.listings_support import create_listing
from tests.support import Account, Client, sign_up

TIMEOUT = 20.0  # per frame; typing runs out after about 4 s
WS = "/api/v1/ws"
TICKET = "/api/v1/ws/ticket"

JsonObject = dict[str, Any]
Socket = ClientWebSocketResponse


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Room:
    buyer: Account
    seller: Account
    listing_id: int
    id: int

    @property
    def channel(self) -> str:
        return f"room:{self.id}"


async def new_room(client: Client) -> Room:
    seller = await sign_up(client)
    buyer = await sign_up(client)
    listing = await create_listing(client, seller)
    response = await client.post(f"/api/v1/listings/{listing['id']}/chats", headers=buyer.auth)
    assert response.status == 201, await response.text()
    room_id: int = (await response.json())["id"]
    return Room(buyer, seller, listing["id"], room_id)


async def open_socket(client: Client, account: Account) -> Socket:
    """A socket whose read loop runs (a ping was answered)."""
    response = await client.post(TICKET, headers=account.auth)
    assert response.status == 201, await response.text()
    ticket = (await response.json())["ticket"]
    ws: Socket = await client.ws_connect(f"{WS}?ticket={ticket}")
    await put(ws, {"op": "ping"})
    assert await receive(ws) == {"op": "pong"}
    return ws


async def put(ws: Socket, frame: JsonObject) -> None:
    await ws.send_str(orjson.dumps(frame).decode())


async def receive(ws: Socket) -> JsonObject:
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is WSMsgType.TEXT, (message, ws.close_code)
    frame: JsonObject = orjson.loads(message.data)
    return frame


async def first_frame(ws: Socket, wanted: Callable[[JsonObject], bool], what: str) -> JsonObject:
    """The first frame ``wanted`` picks, skipping the others (presence frames may interleave)."""
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            while True:
                frame = await receive(ws)
                if wanted(frame):
                    return frame
    except TimeoutError:
        pytest.fail(f"no frame came: {what}")


def presence(channel: str, online: list[int], typing: list[int]) -> JsonObject:
    return {"op": "presence", "channel": channel, "online": online, "typing": typing}


async def presence_frame(ws: Socket, channel: str, online: list[int], typing: list[int]) -> None:
    expected = presence(channel, sorted(online), sorted(typing))
    await first_frame(ws, lambda frame: frame == expected, f"presence {expected}")


async def subscribed(ws: Socket, channel: str) -> None:
    await put(ws, {"op": "subscribe", "channel": channel})
    frame = await first_frame(ws, lambda f: f["op"] != "presence", f"answer to {channel}")
    assert frame["op"] == "subscribed", frame
    assert frame["channel"] == channel


async def send_frame(ws: Socket, room_id: int, body: str, client_id: str) -> JsonObject:
    """Send a message over ``ws`` and return the answer for ``client_id`` (ack or error)."""
    await put(ws, {"op": "send", "room": room_id, "body": body, "client_id": client_id})
    return await first_frame(
        ws,
        lambda f: f["op"] in ("ack", "error") and f.get("client_id") == client_id,
        f"answer to {client_id}",
    )


async def event_frame(ws: Socket, channel: str) -> JsonObject:
    return await first_frame(
        ws, lambda f: f["op"] == "event" and f["channel"] == channel, f"event on {channel}"
    )


async def rest_messages(client: Client, account: Account, room_id: int) -> list[JsonObject]:
    response = await client.get(f"/api/v1/chats/{room_id}/messages", headers=account.auth)
    assert response.status == 200, await response.text()
    items: list[JsonObject] = (await response.json())["items"]
    return items


async def stored(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM chat_messages")
    return count


async def eventually(check: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            while True:
                if check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"still not so: {what}")


# -- sending ---------------------------------------------------------------------------------


async def test_a_send_is_acked_with_the_stored_message_and_a_repeat_with_the_same(
    client: Client, db: asyncpg.Connection
) -> None:
    room = await new_room(client)
    ws = await open_socket(client, room.buyer)
    client_id = str(uuid.uuid4())

    ack = await send_frame(ws, room.id, "still for sale?", client_id)
    assert set(ack) == {"op", "client_id", "message"}
    assert ack["op"] == "ack"
    assert ack["client_id"] == client_id
    message = ack["message"]
    assert message["room_id"] == room.id
    assert message["id"] == 1
    assert message["sender_id"] == room.buyer.user_id
    assert message["body"] == "still for sale?"
    assert message["client_id"] == client_id
    assert await rest_messages(client, room.seller, room.id) == [message]

    repeat = await send_frame(ws, room.id, "another body", client_id)
    assert repeat == ack
    assert await stored(db) == 1
    events = await db.fetchval("SELECT count(*) FROM outbox WHERE type = 'chat.message'")
    assert events == 2

    reply = await send_frame(
        await open_socket(client, room.seller), room.id, "yes", str(uuid.uuid4())
    )
    assert reply["op"] == "ack"
    assert reply["message"]["id"] == 2
    assert reply["message"]["sender_id"] == room.seller.user_id
    await ws.close()


async def test_socket_and_rest_sends_of_one_client_id_store_one_message(
    client: Client, db: asyncpg.Connection
) -> None:
    room = await new_room(client)
    sockets = [await open_socket(client, room.buyer) for _ in range(10)]
    client_id = str(uuid.uuid4())

    async def over_rest(n: int) -> tuple[int, JsonObject]:
        response = await client.post(
            f"/api/v1/chats/{room.id}/messages",
            json={"body": f"rest {n}", "client_id": client_id},
            headers=room.buyer.auth,
        )
        return response.status, await response.json()

    acks, answers = await asyncio.gather(
        asyncio.gather(
            *(send_frame(ws, room.id, f"ws {n}", client_id) for n, ws in enumerate(sockets))
        ),
        asyncio.gather(*(over_rest(n) for n in range(10))),
    )
    assert [ack["op"] for ack in acks] == ["ack"] * 10, acks
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 201} and statuses.count(201) <= 1, statuses
    messages = [ack["message"] for ack in acks] + [body for _, body in answers]
    assert all(message == messages[0] for message in messages), messages
    rows = await db.fetch("SELECT id, body FROM chat_messages")
    assert [(row["id"], row["body"]) for row in rows] == [(1, messages[0]["body"])]
    events = await db.fetchval("SELECT count(*) FROM outbox WHERE type = 'chat.message'")
    assert events == 2
    for ws in sockets:
        await ws.close()


async def test_a_stranger_can_neither_join_nor_send_to_a_room(
    client: Client, db: asyncpg.Connection
) -> None:
    room = await new_room(client)
    stranger = await sign_up(client)
    ws = await open_socket(client, stranger)

    for channel in (room.channel, "room:999999"):
        await put(ws, {"op": "subscribe", "channel": channel})
        answer = await receive(ws)
        assert answer["op"] == "error", answer
        assert (answer["code"], answer["channel"]) == ("forbidden", channel)
    await put(ws, {"op": "subscribe", "channel": "room:abc"})
    assert (await receive(ws))["code"] == "bad_channel"

    for room_id in (room.id, 999_999):
        client_id = str(uuid.uuid4())
        answer = await send_frame(ws, room_id, "let me in", client_id)
        assert answer == {
            "op": "error",
            "code": "not_found",
            "detail": "no such room",
            "client_id": client_id,
        }
    assert await stored(db) == 0
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE type LIKE 'chat.%'") == 0

    # The participants may join.
    for account in (room.buyer, room.seller):
        await subscribed(await open_socket(client, account), room.channel)
    await ws.close()


BAD_SENDS: list[JsonObject] = [
    {"body": ""},
    {"body": "x" * 1001},
    {"body": 5},
    {"room": "ROOM"},
    {"room": 0},
    {"client_id": "not-a-uuid"},
    {"client_id": 7},
    {"sender_id": 1},
]


async def test_bad_send_frames_get_bad_frame_and_store_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    room = await new_room(client)
    ws = await open_socket(client, room.buyer)
    good: JsonObject = {"op": "send", "room": room.id, "body": "hi", "client_id": str(uuid.uuid4())}

    cases = [{**good, **change} for change in BAD_SENDS]
    cases.append({key: value for key, value in good.items() if key != "client_id"})
    for case in cases:
        if case.get("room") == "ROOM":
            case["room"] = str(room.id)  # a number in a string is not a number
        await put(ws, case)
        answer = await receive(ws)
        assert answer["op"] == "error", (case, answer)
        assert answer["code"] == "bad_frame", (case, answer)
    assert await stored(db) == 0

    # The socket is still fine (fewer bad frames than close it) and a good send goes through.
    answer = await send_frame(ws, room.id, "x" * 1000, good["client_id"])
    assert answer["op"] == "ack", answer
    assert await stored(db) == 1
    await ws.close()


async def test_socket_sends_count_against_the_write_limit(
    make_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    client = await make_client(settings.replace(rate_limit_writes=RateLimit(3, 60)))
    room = await new_room(client)  # the buyer's first write: opening the room
    ws = await open_socket(client, room.buyer)  # the second: the ticket
    assert (await send_frame(ws, room.id, "one", str(uuid.uuid4())))["op"] == "ack"
    client_id = str(uuid.uuid4())
    answer = await send_frame(ws, room.id, "two", client_id)
    assert (answer["op"], answer["code"]) == ("error", "rate_limited"), answer
    assert answer["client_id"] == client_id  # so the client knows which send to repeat
    assert await stored(db) == 1
    await ws.close()


async def test_a_send_over_the_frame_rate_is_refused_with_its_client_id(
    make_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    client = await make_client(settings.replace(ws_frames_per_second=1.0))  # bursts of 2
    room = await new_room(client)
    ws = await open_socket(client, room.buyer)  # its ping took one token
    assert (await send_frame(ws, room.id, "one", str(uuid.uuid4())))["op"] == "ack"
    refused: list[JsonObject] = []
    for n in range(5):  # the bucket refills slowly: at least one of these is refused
        client_id = str(uuid.uuid4())
        answer = await send_frame(ws, room.id, f"more {n}", client_id)
        if answer["op"] == "error":
            assert (answer["code"], answer["client_id"]) == ("rate_limited", client_id)
            refused.append(answer)
    assert refused
    assert await stored(db) == 1 + 5 - len(refused)
    await ws.close()


# -- presence and typing ---------------------------------------------------------------------


async def test_presence_follows_joins_and_leaves_of_the_room(client: Client) -> None:
    room = await new_room(client)
    buyer, seller = room.buyer.user_id, room.seller.user_id
    buyer_ws = await open_socket(client, room.buyer)
    await subscribed(buyer_ws, room.channel)
    await presence_frame(buyer_ws, room.channel, [buyer], [])

    seller_ws = await open_socket(client, room.seller)
    await subscribed(seller_ws, room.channel)
    await presence_frame(seller_ws, room.channel, [buyer, seller], [])
    await presence_frame(buyer_ws, room.channel, [buyer, seller], [])

    await put(seller_ws, {"op": "unsubscribe", "channel": room.channel})
    answer = await first_frame(seller_ws, lambda f: f["op"] != "presence", "unsubscribed")
    assert answer == {"op": "unsubscribed", "channel": room.channel}
    await presence_frame(buyer_ws, room.channel, [buyer], [])

    await subscribed(seller_ws, room.channel)
    await presence_frame(buyer_ws, room.channel, [buyer, seller], [])
    await seller_ws.close()  # closing the socket leaves its rooms
    await presence_frame(buyer_ws, room.channel, [buyer], [])
    await buyer_ws.close()


async def test_a_user_stays_online_until_their_last_socket_leaves(client: Client) -> None:
    room = await new_room(client)
    buyer, seller = room.buyer.user_id, room.seller.user_id
    gateway = client.app[gateway_key]
    first, second = await open_socket(client, room.buyer), await open_socket(client, room.buyer)
    await subscribed(first, room.channel)
    await presence_frame(first, room.channel, [buyer], [])
    await subscribed(second, room.channel)
    await presence_frame(second, room.channel, [buyer], [])

    await second.close()
    await eventually(lambda: len(gateway.connections) == 1, "the second socket is gone")
    seller_ws = await open_socket(client, room.seller)
    await subscribed(seller_ws, room.channel)
    await presence_frame(seller_ws, room.channel, [buyer, seller], [])

    await first.close()
    await presence_frame(seller_ws, room.channel, [seller], [])
    await seller_ws.close()


async def test_typing_is_shown_to_the_room_then_runs_out(client: Client) -> None:
    room = await new_room(client)
    buyer, seller = room.buyer.user_id, room.seller.user_id
    buyer_ws = await open_socket(client, room.buyer)
    seller_ws = await open_socket(client, room.seller)
    await subscribed(buyer_ws, room.channel)
    await presence_frame(buyer_ws, room.channel, [buyer], [])
    await subscribed(seller_ws, room.channel)
    for ws in (buyer_ws, seller_ws):
        await presence_frame(ws, room.channel, [buyer, seller], [])

    await put(buyer_ws, {"op": "typing", "room": room.id})
    for ws in (seller_ws, buyer_ws):
        await presence_frame(ws, room.channel, [buyer, seller], [buyer])
    # Nothing renews it, so a later frame says nobody is typing (while both stay online).
    for ws in (seller_ws, buyer_ws):
        await presence_frame(ws, room.channel, [buyer, seller], [])
    await buyer_ws.close()
    await seller_ws.close()


async def test_typing_needs_a_subscription_to_the_room(client: Client) -> None:
    room = await new_room(client)
    other = await new_room(client)
    ws = await open_socket(client, room.buyer)

    for room_id in (room.id, other.id):
        await put(ws, {"op": "typing", "room": room_id})
        answer = await receive(ws)
        assert answer["op"] == "error", answer
        assert (answer["code"], answer["channel"]) == ("forbidden", f"room:{room_id}")
    for bad in ({"op": "typing"}, {"op": "typing", "room": "1"}, {"op": "typing", "room": 0}):
        await put(ws, bad)
        assert (await receive(ws))["code"] == "bad_frame"

    # Once subscribed, the same frame is taken (and shown to the room).
    await subscribed(ws, room.channel)
    await presence_frame(ws, room.channel, [room.buyer.user_id], [])
    await put(ws, {"op": "typing", "room": room.id})
    await presence_frame(ws, room.channel, [room.buyer.user_id], [room.buyer.user_id])
    await ws.close()


# -- events ----------------------------------------------------------------------------------


async def test_a_message_reaches_the_other_participants_user_channel_and_the_room(
    client: Client,
) -> None:
    room = await new_room(client)
    buyer_ws = await open_socket(client, room.buyer)
    seller_ws = await open_socket(client, room.seller)
    await subscribed(seller_ws, f"user:{room.seller.user_id}")
    await subscribed(buyer_ws, f"user:{room.buyer.user_id}")
    await subscribed(buyer_ws, room.channel)

    ack = await send_frame(buyer_ws, room.id, "is it still for sale?", str(uuid.uuid4()))
    assert ack["op"] == "ack", ack
    expected = {**ack["message"], "listing_id": room.listing_id}
    to_seller = await event_frame(seller_ws, f"user:{room.seller.user_id}")
    assert (to_seller["type"], to_seller["data"]) == ("chat.message", expected)
    in_room = await event_frame(buyer_ws, room.channel)
    assert (in_room["type"], in_room["data"]) == ("chat.message", expected)

    # The sender's own user channel did not get it: the first event there is the reply.
    reply = await client.post(
        f"/api/v1/chats/{room.id}/messages",
        json={"body": "yes", "client_id": str(uuid.uuid4())},
        headers=room.seller.auth,
    )
    assert reply.status == 201, await reply.text()
    to_buyer = await event_frame(buyer_ws, f"user:{room.buyer.user_id}")
    assert (to_buyer["type"], to_buyer["data"]["id"], to_buyer["data"]["body"]) == (
        "chat.message",
        2,
        "yes",
    )

    # A read that moves the marker is a room event too.
    read = await client.post(
        f"/api/v1/chats/{room.id}/read", json={"up_to": 2}, headers=room.buyer.auth
    )
    assert read.status == 204
    frame = await first_frame(
        buyer_ws, lambda f: f["op"] == "event" and f["type"] == "chat.read", "chat.read"
    )
    assert frame["channel"] == room.channel
    assert frame["data"] == {"room_id": room.id, "user_id": room.buyer.user_id, "up_to": 2}
    await buyer_ws.close()
    await seller_ws.close()
