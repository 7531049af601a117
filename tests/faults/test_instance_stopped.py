"""An instance going away under its sockets: SIGTERM (1001, resume elsewhere, nothing lost)
and SIGKILL in the middle of chat sends (acknowledged messages stored, resends stored once)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support import ServerProcess, server_env, start_servers, stop_servers
from tests.system.realtime_support import (
    Socket,
    User,
    committed_offsets,
    create_listing,
    insert_events,
    open_socket,
    sign_up,
)

SOCKETS = 300


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def _resume(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    socket: Socket,
    user: User,
    channel: str,
    start: int,
) -> Socket:
    """Reconnect to ``server`` and resume after the last event this socket received."""
    offsets = socket.offsets(channel)
    resumed = await open_socket(http, server, user)
    resumed.events[channel] = list(socket.events.get(channel, []))
    await resumed.subscribe(channel, since=offsets[-1] if offsets else start)
    return resumed


async def test_sigterm_closes_hundreds_of_sockets_with_1001_and_they_resume_elsewhere(
    database_url: str, redis_url: str, http: aiohttp.ClientSession
) -> None:
    env = server_env(database_url, redis_url)
    leaving, staying = start_servers(ServerProcess(env), ServerProcess(env))
    channel = "feed:sigterm"
    try:
        user = await sign_up(http, leaving)
        sockets = [await open_socket(http, leaving, user) for _ in range(SOCKETS)]
        starts = [await socket.subscribe(channel) for socket in sockets]
        await insert_events(database_url, channel, 3)
        for socket in sockets:
            await socket.wait_events(channel, 3)

        # Events keep committing through the shutdown and the reconnections.
        writer = asyncio.create_task(insert_events(database_url, channel, 60, start=3))
        assert leaving.process is not None
        leaving.process.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(socket.wait_close() for socket in sockets))
        assert set(codes) == {1001}
        assert await asyncio.to_thread(leaving.wait) == 0  # within the shutdown timeout

        resumed = await asyncio.gather(
            *(
                _resume(http, staying, socket, user, channel, start)
                for socket, start in zip(sockets, starts, strict=True)
            )
        )
        await writer
        for socket, start in zip(resumed, starts, strict=True):
            await socket.wait_events(channel, 63, timeout=60)
            assert socket.offsets(channel) == await committed_offsets(database_url, channel, start)
            assert [e["data"]["n"] for e in socket.events[channel]] == list(range(63))
    finally:
        stop_servers(leaving, staying)


async def _chat_room(http: aiohttp.ClientSession, server: ServerProcess) -> tuple[User, int]:
    seller = await sign_up(http, server)
    buyer = await sign_up(http, server)
    listing = await create_listing(http, server, seller)
    async with http.post(
        f"{server.url}/api/v1/listings/{listing}/chats", headers=buyer.auth
    ) as response:
        assert response.status == 201, await response.text()
        room: int = (await response.json())["id"]
    return buyer, room


async def _send_all(socket: Socket, room: int, sent: list[str], count: int) -> None:
    """Send without waiting for acks, as a chatty client would, until the socket dies."""
    with contextlib.suppress(ConnectionError, ConnectionResetError, RuntimeError):
        for n in range(count):
            client_id = str(uuid.uuid4())
            sent.append(client_id)
            await socket.send(op="send", room=room, body=f"m{n}", client_id=client_id)
            await asyncio.sleep(0.002)


async def _collect_acks(socket: Socket, acks: dict[str, int], enough: asyncio.Event) -> None:
    with contextlib.suppress(ConnectionError, TimeoutError):
        while True:
            frame = await socket.next_frame(timeout=30)
            if frame["op"] == "ack":
                acks[frame["client_id"]] = frame["message"]["id"]
                if len(acks) >= 50:
                    enough.set()


async def _send_and_wait(socket: Socket, room: int, client_id: str) -> dict[str, Any]:
    await socket.send(op="send", room=room, body="again", client_id=client_id)
    async with asyncio.timeout(30):
        while True:
            frame = await socket.next_frame()
            if frame.get("client_id") == client_id:
                return frame


async def test_sigkill_mid_send_keeps_acknowledged_messages_and_stores_resends_once(
    database_url: str, redis_url: str, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    env = server_env(database_url, redis_url, WS_FRAMES_PER_SECOND="10000")
    doomed, other = start_servers(ServerProcess(env), ServerProcess(env))
    try:
        buyer, room = await _chat_room(http, other)
        socket = await open_socket(http, doomed, buyer)
        sent: list[str] = []
        acks: dict[str, int] = {}
        enough = asyncio.Event()
        collector = asyncio.create_task(_collect_acks(socket, acks, enough))
        sender = asyncio.create_task(_send_all(socket, room, sent, 5000))
        async with asyncio.timeout(60):
            await enough.wait()
        assert doomed.process is not None
        os.kill(doomed.process.pid, signal.SIGKILL)
        await sender
        await collector
        assert len(acks) < len(sent)  # killed mid-stream: some sends were never answered

        stored = {
            row["client_id"]: row["id"]
            for row in await db.fetch(
                "SELECT client_id::text AS client_id, id FROM chat_messages WHERE room_id = $1",
                room,
            )
        }
        assert acks.items() <= stored.items()  # every acknowledged message is stored

        # The client sends again everything it has no ack for, and some it has, elsewhere.
        again = await open_socket(http, other, buyer)
        for client_id in sent:
            frame = await _send_and_wait(again, room, client_id)
            assert frame["op"] == "ack", frame
            if client_id in acks:
                assert frame["message"]["id"] == acks[client_id]  # the same message
        rows = await db.fetch(
            "SELECT client_id::text AS client_id, count(*) AS n FROM chat_messages"
            " WHERE room_id = $1 GROUP BY client_id",
            room,
        )
        assert {row["client_id"] for row in rows} == set(sent)
        assert {row["n"] for row in rows} == {1}  # each message once
    finally:
        stop_servers(doomed, other)
