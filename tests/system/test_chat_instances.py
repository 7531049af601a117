"""Chat between a buyer on one instance and the seller on another, over real processes.

The tests share the module's two instances (``shared_servers``); each chats in rooms of its
own, between accounts of its own."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support import ServerProcess
from tests.system.realtime_support import (
    Socket,
    create_listing,
    open_room,
    open_socket,
    sign_up,
)


@pytest.fixture(autouse=True)
def clean_state(emptied_after_module: None) -> None:
    """The shared instances outlive each test: the state is emptied after the module."""


async def _next_op(socket: Socket, op: str, **match: Any) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            frame = await socket.next_frame()
            if frame["op"] == op and all(frame.get(k) == v for k, v in match.items()):
                return frame


async def test_buyer_and_seller_on_two_instances_chat_both_ways_live(
    shared_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = shared_servers
    async with aiohttp.ClientSession() as http:
        seller = await sign_up(http, first)
        buyer = await sign_up(http, second)
        listing = await create_listing(http, first, seller)
        room = await open_room(http, second, buyer, listing)
        buyer_socket = await open_socket(http, second, buyer)
        seller_socket = await open_socket(http, first, seller)
        await buyer_socket.subscribe(f"room:{room}")
        await seller_socket.subscribe(f"room:{room}")

        await buyer_socket.send(
            op="send", room=room, body="still for sale?", client_id=str(uuid.uuid4())
        )
        ack = await _next_op(buyer_socket, "ack")
        assert ack["message"]["body"] == "still for sale?"
        await seller_socket.wait_events(f"room:{room}", 1)
        assert seller_socket.events[f"room:{room}"][0]["data"]["body"] == "still for sale?"

        reply = await http.post(
            f"{first.url}/api/v1/chats/{room}/messages",
            json={"body": "yes, at the station at 7?", "client_id": str(uuid.uuid4())},
            headers=seller.auth,
        )
        assert reply.status == 201
        await buyer_socket.wait_events(f"room:{room}", 2)
        bodies = [e["data"]["body"] for e in buyer_socket.events[f"room:{room}"]]
        assert bodies == ["still for sale?", "yes, at the station at 7?"]
        assert [e["data"]["id"] for e in buyer_socket.events[f"room:{room}"]] == [1, 2]


async def test_one_client_id_sent_twenty_times_over_both_instances_is_stored_once(
    shared_servers: tuple[ServerProcess, ServerProcess], database_url: str
) -> None:
    first, second = shared_servers
    async with aiohttp.ClientSession() as http:
        seller = await sign_up(http, first)
        buyer = await sign_up(http, first)
        room = await open_room(http, first, buyer, await create_listing(http, first, seller))
        client_id = str(uuid.uuid4())
        sockets = [await open_socket(http, server, buyer) for server in (first, second)]

        async def over_rest(server: ServerProcess) -> dict[str, Any]:
            response = await http.post(
                f"{server.url}/api/v1/chats/{room}/messages",
                json={"body": "once", "client_id": client_id},
                headers=buyer.auth,
            )
            assert response.status in (200, 201), await response.text()
            message: dict[str, Any] = await response.json()
            return message

        async def over_socket(socket: Socket) -> None:
            await socket.send(op="send", room=room, body="once", client_id=client_id)

        rest = [over_rest(shared_servers[n % 2]) for n in range(10)]
        ws = [over_socket(sockets[n % 2]) for n in range(10)]
        results = await asyncio.gather(*rest, *ws)
        acks = [await _next_op(socket, "ack") for socket in sockets for _ in range(5)]
        ids = {message["id"] for message in results if message} | {
            ack["message"]["id"] for ack in acks
        }
        assert ids == {1}
        counted = await _count_messages(database_url, room)
        assert counted == 1


async def test_a_message_sent_while_the_seller_is_offline_arrives_by_resume_and_as_unread(
    shared_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = shared_servers
    async with aiohttp.ClientSession() as http:
        seller = await sign_up(http, first)
        buyer = await sign_up(http, second)
        room = await open_room(http, second, buyer, await create_listing(http, first, seller))
        seller_socket = await open_socket(http, first, seller)
        start = await seller_socket.subscribe(f"user:{seller.user_id}")
        await seller_socket.ws.close()

        for text in ("hello?", "are you there?"):
            response = await http.post(
                f"{second.url}/api/v1/chats/{room}/messages",
                json={"body": text, "client_id": str(uuid.uuid4())},
                headers=buyer.auth,
            )
            assert response.status == 201

        rooms = await (await http.get(f"{first.url}/api/v1/chats", headers=seller.auth)).json()
        assert [(r["id"], r["unread"]) for r in rooms["items"]] == [(room, 2)]
        assert rooms["items"][0]["last_message"]["body"] == "are you there?"

        back = await open_socket(http, second, seller)
        await back.subscribe(f"user:{seller.user_id}", since=start)
        await back.wait_events(f"user:{seller.user_id}", 2)
        events = back.events[f"user:{seller.user_id}"]
        assert [(e["type"], e["data"]["body"]) for e in events] == [
            ("chat.message", "hello?"),
            ("chat.message", "are you there?"),
        ]


async def test_presence_shows_join_and_leave_across_instances_and_typing_expires(
    shared_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = shared_servers
    async with aiohttp.ClientSession() as http:
        seller = await sign_up(http, first)
        buyer = await sign_up(http, second)
        room = await open_room(http, second, buyer, await create_listing(http, first, seller))
        channel = f"room:{room}"
        seller_socket = await open_socket(http, first, seller)
        await seller_socket.subscribe(channel)
        await _next_op(seller_socket, "presence", online=[seller.user_id])

        buyer_socket = await open_socket(http, second, buyer)
        await buyer_socket.subscribe(channel)
        both = sorted([seller.user_id, buyer.user_id])
        await _next_op(seller_socket, "presence", online=both)

        await buyer_socket.send(op="typing", room=room)
        await _next_op(seller_socket, "presence", typing=[buyer.user_id])
        await _next_op(seller_socket, "presence", typing=[])  # it runs out by itself

        await buyer_socket.ws.close()
        await _next_op(seller_socket, "presence", online=[seller.user_id])


async def _count_messages(database_url: str, room: int) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM chat_messages WHERE room_id = $1", room
        )
        return count
    finally:
        await conn.close()
