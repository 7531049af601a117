"""Reading an event stream in tests, strictly: every message must have the shape the protocol
gives it (docs/protocol.md, "Server-Sent Events"), or the test fails on the spot."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson

from realtime.sse_frames import StreamComment, StreamDecoder, StreamMessage

READ_TIMEOUT_S = 15.0
JsonObject = dict[str, Any]
CURSOR = re.compile(r"^(|[0-9]{1,19})(,(|[0-9]{1,19}))*$")
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True, slots=True)
class Frame:
    """One message of the stream: its JSON, and its ``id`` (the cursor) when it has one."""

    id: str | None
    json: JsonObject

    @property
    def op(self) -> str:
        op: str = self.json["op"]
        return op


def carries_cursor(frame: JsonObject) -> bool:
    """Messages that move the cursor carry it as their id; the others have none (a refused
    channel's field empties too, without an id: resuming from its old value only gets the
    same refusal)."""
    return frame["op"] in ("subscribed", "event") or (
        frame["op"] == "error" and frame["code"] == "resync"
    )


@dataclass
class Cursor:
    """What the stream's cursor must be after each message, from the messages themselves."""

    channels: tuple[str, ...]
    fields: list[int | None]

    def after(self, frame: JsonObject) -> str:
        if frame["op"] in ("subscribed", "event", "error") and "channel" in frame:
            self._move(frame)
        return ",".join("" if field is None else str(field) for field in self.fields)

    def _move(self, frame: JsonObject) -> None:
        index = self.channels.index(frame["channel"])
        if frame["op"] == "event":
            self.fields[index] = frame["offset"]
        elif frame["op"] == "error":
            self.fields[index] = None
        elif self.fields[index] is None:  # subscribed fresh; with since the field keeps it
            self.fields[index] = frame["offset"]


@dataclass
class Stream:
    """One open stream and what came on it; comments (the opening, heartbeats) are counted.
    Every id is checked against the cursor its messages make."""

    response: aiohttp.ClientResponse
    cursor: Cursor
    decoder: StreamDecoder = field(default_factory=StreamDecoder)
    pending: list[StreamMessage | StreamComment] = field(default_factory=list)
    comments: int = 0
    frames: list[Frame] = field(default_factory=list)
    events: dict[str, list[JsonObject]] = field(default_factory=dict)
    closed: JsonObject | None = None  # the close message, once it came
    last_id: str | None = None

    async def _next(self, timeout: float) -> StreamMessage | StreamComment | None:
        """The next message or comment; None once the response has ended."""
        async with asyncio.timeout(timeout):
            while not self.pending:
                data = await self.response.content.readany()
                if not data:
                    assert self.decoder.buffer == b"", f"ended mid-message: {self.decoder.buffer!r}"
                    return None
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    async def next_frame(self, timeout: float = READ_TIMEOUT_S) -> Frame:
        """The next message, checked; comments are skipped (and counted)."""
        while True:
            item = await self._next(timeout)
            assert item is not None, "the stream ended"
            assert self.closed is None, f"a message after the close: {item}"
            if isinstance(item, StreamComment):
                self.comments += 1
                continue
            return self._checked(item)

    def _checked(self, message: StreamMessage) -> Frame:
        json = orjson.loads(message.data)
        assert isinstance(json, dict), message
        assert "\n" not in message.data, message
        cursor = self.cursor.after(json)
        if carries_cursor(json):
            assert message.fields == ("id", "data"), message
            assert message.id is not None and CURSOR.match(message.id), message
            assert message.id == cursor, (message, self.cursor)
            self.last_id = message.id
        else:
            assert message.fields == ("data",), message
        frame = Frame(message.id, json)
        self.frames.append(frame)
        if frame.op == "event":
            self.events.setdefault(json["channel"], []).append(json)
        elif frame.op == "close":
            self.closed = json
        return frame

    async def next_comment(self, timeout: float = READ_TIMEOUT_S) -> None:
        """Read until a comment comes (a heartbeat); a message before it fails the test."""
        item = await self._next(timeout)
        assert isinstance(item, StreamComment), item
        self.comments += 1

    async def wait_events(
        self, channel: str, count: int, timeout: float = 2 * READ_TIMEOUT_S
    ) -> list[JsonObject]:
        async with asyncio.timeout(timeout):
            while len(self.events.get(channel, [])) < count:
                await self.next_frame()
        return self.events[channel]

    async def end(self, timeout: float = READ_TIMEOUT_S) -> JsonObject:
        """Read to the close message, then to the end of the response; returns the close."""
        async with asyncio.timeout(timeout):
            while self.closed is None:
                await self.next_frame()
            after = await self._next(timeout)
        assert after is None, f"more after the close: {after}"
        assert self.closed is not None
        assert set(self.closed) == {"op", "code", "reason"}, self.closed
        return self.closed

    def offsets(self, channel: str) -> list[int]:
        return [event["offset"] for event in self.events.get(channel, [])]

    def pause_reading(self) -> asyncio.Transport:
        connection = self.response.connection
        assert connection is not None and connection.transport is not None
        transport = connection.transport
        transport.pause_reading()
        return transport


def parse_cursor(text: str | None, count: int) -> list[int | None]:
    if text is None:
        return [None] * count
    return [int(field) if field else None for field in text.split(",")]


async def started(
    response: aiohttp.ClientResponse, channels: Sequence[str], since: str | None = None
) -> Stream:
    """The stream of a 200 answer, checked down to its first bytes (the opening comment);
    ``since`` is the cursor it resumes from."""
    assert response.status == 200, await response.text()
    for name, value in STREAM_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    stream = Stream(response, Cursor(tuple(channels), parse_cursor(since, len(channels))))
    item = await stream._next(READ_TIMEOUT_S)
    assert isinstance(item, StreamComment), item
    stream.comments += 1
    return stream


BIG_EVENT_BYTES = 60_000  # events this large fill a reader's buffers in a few rounds


async def insert_big_events(db: asyncpg.Connection, channel: str, first: int) -> int:
    """Commit four large events on ``channel``, numbered from ``first``; returns the count."""
    await db.execute(
        "INSERT INTO outbox (channel, type, data) SELECT $1, 'test.big',"
        " jsonb_build_object('n', n, 'blob', repeat('x', $3::int))"
        " FROM generate_series($2::int, $2::int + 3) AS n",
        channel,
        first,
        BIG_EVENT_BYTES,
    )
    return 4
