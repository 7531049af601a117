"""The Server-Sent Events wire format of the event stream, both ways, and its cursor.

Every message carries the JSON of the WebSocket frame for the same thing in one ``data``
line (no ``event`` field: clients dispatch on ``op``, as for socket frames), and an ``id``
when it moves the stream's cursor. The server writes messages straight to the transport,
so it frames each one as an HTTP/1.1 chunk itself (``chunk``). ``StreamDecoder`` reads the
format as the HTML standard defines it; the reference client and the tests use it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

# A cursor field: an offset, 0 to 2**63-1, in decimal; or empty.
_OFFSET = re.compile(r"^[0-9]{1,19}$")
MAX_OFFSET = 2**63 - 1
LAST_CHUNK = b"0\r\n\r\n"

Cursor = list[int | None]


class BadCursor(ValueError):
    """A ``since`` or ``Last-Event-ID`` the stream cannot resume from; the message says why."""


def parse_cursor(text: str) -> Cursor:
    """A cursor's fields; the caller checks their count against the stream's channels."""
    fields: Cursor = []
    for field in text.split(","):
        if field == "":
            fields.append(None)
        elif _OFFSET.match(field) and int(field) <= MAX_OFFSET:
            fields.append(int(field))
        else:
            raise BadCursor(f"cursor fields are offsets (0 to {MAX_OFFSET}) or empty")
    return fields


def format_cursor(fields: Sequence[int | None]) -> bytes:
    return b",".join(b"" if field is None else b"%d" % field for field in fields)


# -- writing -------------------------------------------------------------------------------


def chunk(body: bytes) -> bytes:
    """``body`` as one HTTP/1.1 chunk (RFC 9112 section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(body), body)


def message(data: bytes, cursor: bytes | None = None) -> bytes:
    """One SSE message: ``data`` on one line, and the cursor as its ``id`` when given."""
    if b"\n" in data or b"\r" in data:
        # A line break between JSON tokens would split the data; inside strings JSON has none.
        data = orjson.dumps(orjson.loads(data))
    if cursor is None:
        return b"data: %b\n\n" % data
    return b"id: %b\ndata: %b\n\n" % (cursor, data)


def comment(text: bytes = b"") -> bytes:
    """A comment line: readers skip it; proxies and clients see bytes flow."""
    return b": %b\n\n" % text if text else b":\n\n"


def websocket_payload(frame: bytes) -> bytes:
    """The payload of an unmasked WebSocket frame as ``frames.text_frame`` makes it: the hub
    hands ephemeral frames (presence) to every subscriber framed for sockets."""
    size = frame[1] & 0x7F
    return frame[2 + (size == 126) * 2 + (size == 127) * 8 :]


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One dispatched message: its data lines joined by newlines, and its fields in order."""

    data: str
    id: str | None
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StreamComment:
    text: str


class StreamDecoder:
    """Incremental reader of ``text/event-stream`` (HTML Living Standard, section 9.2.6).

    Lines end in CRLF, LF or CR; a blank line dispatches the fields read since the last one
    as a message (or a comment line on its own, as a comment); a field is ``name: value``.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.started = False
        self.fields: list[tuple[str, str]] = []

    def feed(self, data: bytes) -> list[StreamMessage | StreamComment]:
        """What ``data`` completes; raises UnicodeDecodeError on bytes that are not UTF-8."""
        self.buffer += data
        out: list[StreamMessage | StreamComment] = []
        while True:
            line = self._next_line()
            if line is None:
                return out
            if not self.started:
                self.started = True
                line = line.removeprefix("\ufeff")
            if line == "":
                if self.fields:
                    out.append(self._dispatch())
            elif line.startswith(":"):
                if not self.fields:
                    out.append(StreamComment(line[1:].removeprefix(" ")))
            else:
                name, _, value = line.partition(":")
                self.fields.append((name, value.removeprefix(" ")))

    def _next_line(self) -> str | None:
        buffer = self.buffer
        ends = [index for index in (buffer.find(b"\r"), buffer.find(b"\n")) if index >= 0]
        if not ends:
            return None
        end = min(ends)
        if buffer[end : end + 1] == b"\r":
            if end + 1 == len(buffer):
                return None  # a CR at the end may be the first half of a CRLF
            width = 2 if buffer[end + 1 : end + 2] == b"\n" else 1
        else:
            width = 1
        self.buffer = buffer[end + width :]
        return buffer[:end].decode()

    def _dispatch(self) -> StreamMessage:
        fields, self.fields = self.fields, []
        data = "\n".join(value for name, value in fields if name == "data")
        ids = [value for name, value in fields if name == "id"]
        return StreamMessage(data, ids[-1] if ids else None, tuple(name for name, _ in fields))
