"""The same realtime scenarios over either transport: a socket subscribed to channels, or an
event stream opened on them. Both record what arrives the same way, so a test's assertions
hold for both."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal, Protocol
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest

from tests.realtime.sse_support import READ_TIMEOUT_S, Stream, started
from tests.support import ServerProcess
from tests.system.realtime_support import FRAME_TIMEOUT_S, Socket, User, open_socket

Transport = Literal["websocket", "sse"]
TRANSPORTS: list[Transport] = ["websocket", "sse"]
each_transport = pytest.mark.parametrize("transport", TRANSPORTS)
JsonObject = dict[str, Any]


class Receiver(Protocol):
    """What a test reads from: the events of each channel, in arrival order."""

    events: dict[str, list[JsonObject]]
    answers: dict[str, JsonObject]  # per channel, `subscribed` or the error refusing it

    async def next_frame(self, timeout: float = FRAME_TIMEOUT_S) -> JsonObject: ...

    async def wait_events(self, channel: str, count: int, timeout: float = 30.0) -> None: ...

    async def wait_close(self, timeout: float = FRAME_TIMEOUT_S) -> int | None: ...

    def offsets(self, channel: str) -> list[int]: ...

    def pause_reading(self) -> asyncio.Transport: ...

    async def close(self) -> None: ...


class SocketReceiver:
    def __init__(self, socket: Socket) -> None:
        self.socket = socket
        self.events = socket.events
        self.answers: dict[str, JsonObject] = {}

    async def subscribe(self, channel: str, since: int | None) -> None:
        if since is None:
            await self.socket.send(op="subscribe", channel=channel)
        else:
            await self.socket.send(op="subscribe", channel=channel, since=since)
        while channel not in self.answers:
            frame = await self.socket.next_frame()
            if frame["op"] in ("subscribed", "error") and frame.get("channel") == channel:
                self.answers[channel] = frame

    async def next_frame(self, timeout: float = FRAME_TIMEOUT_S) -> JsonObject:
        return await self.socket.next_frame(timeout)

    async def wait_events(self, channel: str, count: int, timeout: float = 30.0) -> None:
        await self.socket.wait_events(channel, count, timeout)

    async def wait_close(self, timeout: float = FRAME_TIMEOUT_S) -> int | None:
        """The server's close code, recording the events that come before it."""
        ws = self.socket.ws
        async with asyncio.timeout(timeout):
            while True:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.TEXT:
                    frame = orjson.loads(message.data)
                    if frame["op"] == "event":
                        self.events.setdefault(frame["channel"], []).append(frame)
                    continue
                if message.type is aiohttp.WSMsgType.CLOSE:
                    code: int = message.data  # ws.close_code may say 1006 (see realtime_support)
                    return code
                return ws.close_code

    def offsets(self, channel: str) -> list[int]:
        return self.socket.offsets(channel)

    def pause_reading(self) -> asyncio.Transport:
        connection = self.socket.ws._response.connection
        assert connection is not None and connection.transport is not None
        connection.transport.pause_reading()
        return connection.transport

    async def close(self) -> None:
        await self.socket.ws.close()


class StreamReceiver:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.events = stream.events
        self.answers: dict[str, JsonObject] = {}

    async def wait_answers(self, channels: int) -> None:
        while len(self.answers) < channels:
            frame = await self.stream.next_frame()
            if frame.op in ("subscribed", "error") and "channel" in frame.json:
                self.answers.setdefault(frame.json["channel"], frame.json)

    async def next_frame(self, timeout: float = FRAME_TIMEOUT_S) -> JsonObject:
        return (await self.stream.next_frame(timeout)).json

    async def wait_events(self, channel: str, count: int, timeout: float = 30.0) -> None:
        await self.stream.wait_events(channel, count, timeout)

    async def wait_close(self, timeout: float = FRAME_TIMEOUT_S) -> int | None:
        code: int = (await self.stream.end(timeout))["code"]
        return code

    def offsets(self, channel: str) -> list[int]:
        return self.stream.offsets(channel)

    def pause_reading(self) -> asyncio.Transport:
        return self.stream.pause_reading()

    async def close(self) -> None:
        self.stream.response.close()


class Receivers:
    """Opens receivers on ``http`` and closes them all at the end, so that no stream's
    connection outlives the test (a response left open is a ResourceWarning)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.opened: list[Receiver] = []

    async def __aenter__(self) -> Receivers:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for receiver in self.opened:
            await receiver.close()

    async def open(
        self,
        server: ServerProcess,
        user: User,
        transport: Transport,
        channels: Mapping[str, int | None],
    ) -> Receiver:
        """A socket subscribed to each channel (from its since, when not None), or a stream
        on them; returned once every channel was answered."""
        receiver = await self._open(server, user, transport, channels)
        self.opened.append(receiver)
        if isinstance(receiver, StreamReceiver):
            await receiver.wait_answers(len(channels))
        return receiver

    async def _open(
        self,
        server: ServerProcess,
        user: User,
        transport: Transport,
        channels: Mapping[str, int | None],
    ) -> SocketReceiver | StreamReceiver:
        http = self.http
        if transport == "websocket":
            receiver = SocketReceiver(await open_socket(http, server, user))
            for channel, since in channels.items():
                await receiver.subscribe(channel, since)
            return receiver
        response = await http.post(f"{server.url}/api/v1/ws/ticket", headers=user.auth)
        assert response.status == 201, await response.text()
        query = [("ticket", (await response.json())["ticket"])]
        query += [("channel", channel) for channel in channels]
        cursor = ",".join("" if field is None else str(field) for field in channels.values())
        if cursor.strip(","):
            query.append(("since", cursor))
        timeout = aiohttp.ClientTimeout(total=None, sock_read=READ_TIMEOUT_S * 4)
        answer = await http.get(f"{server.url}/api/v1/sse?{urlencode(query)}", timeout=timeout)
        try:
            return StreamReceiver(await started(answer, list(channels), cursor))
        except BaseException:
            answer.close()
            raise
