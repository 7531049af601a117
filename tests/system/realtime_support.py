"""Helpers for realtime tests against real server processes: accounts, sockets, events."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson

from tests.support import PASSWORD, ServerProcess

FRAME_TIMEOUT_S = 15.0


@dataclass
class User:
    user_id: int
    email: str
    access_token: str
    refresh_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def sign_up(http: aiohttp.ClientSession, server: ServerProcess) -> User:
    response = await http.post(
        f"{server.url}/api/v1/auth/signup",
        json={
            "email": f"rt-{uuid.uuid4().hex[:12]}@example.com",
            "password": PASSWORD,
            "nickname": "rt",
            "region": "seoul-mapo",
        },
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    return User(
        body["user"]["id"], body["user"]["email"], body["access_token"], body["refresh_token"]
    )


async def create_listing(http: aiohttp.ClientSession, server: ServerProcess, user: User) -> int:
    response = await http.post(
        f"{server.url}/api/v1/listings",
        json={"title": "lamp", "price": 1000, "category": "furniture"},
        headers=user.auth,
    )
    assert response.status == 201, await response.text()
    listing_id: int = (await response.json())["id"]
    return listing_id


async def open_room(
    http: aiohttp.ClientSession, server: ServerProcess, buyer: User, listing: int
) -> int:
    """The buyer opens the chat room about ``listing``; its id."""
    response = await http.post(f"{server.url}/api/v1/listings/{listing}/chats", headers=buyer.auth)
    assert response.status == 201, await response.text()
    room_id: int = (await response.json())["id"]
    return room_id


async def set_price(
    http: aiohttp.ClientSession, server: ServerProcess, user: User, listing_id: int, price: int
) -> None:
    response = await http.patch(
        f"{server.url}/api/v1/listings/{listing_id}",
        json={"price": price},
        headers={**user.auth, "If-Match": "*"},
    )
    assert response.status == 200, await response.text()


@dataclass
class Socket:
    """A raw protocol socket that records what arrives."""

    ws: aiohttp.ClientWebSocketResponse
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    others: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, **frame: Any) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def next_frame(self, timeout: float = FRAME_TIMEOUT_S) -> dict[str, Any]:
        message = await self.ws.receive(timeout)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket closed: {message.type} {self.ws.close_code}")
        frame: dict[str, Any] = orjson.loads(message.data)
        if frame["op"] == "event":
            self.events.setdefault(frame["channel"], []).append(frame)
        else:
            self.others.append(frame)
        return frame

    async def subscribe(self, channel: str, since: int | None = None) -> int:
        """Subscribe and return the `subscribed` offset (events may follow it)."""
        if since is None:
            await self.send(op="subscribe", channel=channel)
        else:
            await self.send(op="subscribe", channel=channel, since=since)
        while True:
            frame = await self.next_frame()
            if frame["op"] == "subscribed" and frame["channel"] == channel:
                offset: int = frame["offset"]
                return offset
            if frame["op"] == "error":
                raise AssertionError(f"subscribe refused: {frame}")

    async def wait_events(self, channel: str, count: int, timeout: float = 30.0) -> None:
        """Read until ``channel`` has ``count`` events recorded."""
        async with asyncio.timeout(timeout):
            while len(self.events.get(channel, [])) < count:
                await self.next_frame()

    async def wait_close(self, timeout: float = FRAME_TIMEOUT_S) -> int | None:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.receive()
                if message.type is aiohttp.WSMsgType.CLOSE:
                    # The server's code: ws.close_code says 1006 when the server drops the
                    # connection before the client's echoed close frame is written.
                    code: int = message.data
                    return code
                if message.type in (
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return self.ws.close_code

    def offsets(self, channel: str) -> list[int]:
        return [frame["offset"] for frame in self.events.get(channel, [])]


async def open_socket(http: aiohttp.ClientSession, server: ServerProcess, user: User) -> Socket:
    response = await http.post(f"{server.url}/api/v1/ws/ticket", headers=user.auth)
    assert response.status == 201, await response.text()
    ticket = (await response.json())["ticket"]
    ws = await http.ws_connect(f"ws://127.0.0.1:{server.port}/api/v1/ws?ticket={ticket}")
    return Socket(ws)


def own_channel(name: str) -> str:
    """A feed channel no other test uses (instances shared by tests keep what they saw)."""
    return f"feed:{name}-{uuid.uuid4().hex[:8]}"


async def insert_events(database_url: str, channel: str, count: int, start: int = 0) -> None:
    """Commit ``count`` events on ``channel`` straight into the outbox, one per transaction."""
    conn = await asyncpg.connect(database_url)
    try:
        for n in range(start, start + count):
            await conn.execute(
                "INSERT INTO outbox (channel, type, data) VALUES ($1, 'test.tick', $2::jsonb)",
                channel,
                orjson.dumps({"n": n}).decode(),
            )
    finally:
        await conn.close()


async def committed_offsets(database_url: str, channel: str, after: int = 0) -> list[int]:
    """The channel's published offsets in the database, in order."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT position FROM outbox WHERE channel = $1 AND position > $2 ORDER BY position",
            channel,
            after,
        )
    finally:
        await conn.close()
    return [row["position"] for row in rows]


async def metric(http: aiohttp.ClientSession, server: ServerProcess, name: str) -> float:
    text = await (await http.get(f"{server.url}/metrics")).text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
