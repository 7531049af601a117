"""Server-to-client frames, each encoded once and framed once as a complete WebSocket frame.

An event is turned into JSON once per instance and wrapped in its WebSocket frame header
once, so fanning it out to thousands of sockets is one ``transport.write`` of the same
bytes per socket. Compression is off on every socket, so the frames need no per-socket
state.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

_TEXT_FIN = 0x81  # FIN bit + text opcode; server frames are never masked


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked WebSocket text frame (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", _TEXT_FIN, size)
    elif size < 65536:
        header = struct.pack("!BBH", _TEXT_FIN, 126, size)
    else:
        header = struct.pack("!BBQ", _TEXT_FIN, 127, size)
    return header + payload


def event_json(channel: str, offset: int, prev: int, ts: int, type_: str, data_json: str) -> bytes:
    """The ``event`` frame's JSON; ``data_json`` is spliced in as stored, never re-encoded."""
    return b'{"op":"event","channel":%b,"offset":%d,"prev":%d,"ts":%d,"type":%b,"data":%b}' % (
        orjson.dumps(channel),
        offset,
        prev,
        ts,
        orjson.dumps(type_),
        data_json.encode(),
    )


def control_json(op: str, **fields: Any) -> bytes:
    """A non-event frame's JSON (event streams carry it as it is)."""
    return orjson.dumps({"op": op, **fields})


def control(op: str, **fields: Any) -> bytes:
    """A non-event frame (subscribed, error, pong, ...), ready to write."""
    return text_frame(control_json(op, **fields))


def error_json(code: str, detail: str, channel: str | None = None, **more: Any) -> bytes:
    fields: dict[str, Any] = {"code": code, "detail": detail, **more}
    if channel is not None:
        fields["channel"] = channel
    return control_json("error", **fields)


def error(code: str, detail: str, channel: str | None = None, **more: Any) -> bytes:
    return text_frame(error_json(code, detail, channel, **more))


PONG = control("pong")
