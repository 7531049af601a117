"""Ready-made frames: WebSocket headers that real readers accept, and the event JSON layout."""

from __future__ import annotations

import json
import struct

import orjson
import pytest
from aiohttp import ClientSession, WSMsgType, web
from pytest_aiohttp import AiohttpServer

from realtime import frames
from realtime.broker import decode_message, encode_message
from realtime.event import Delivery

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70_000]


def payload(size: int) -> bytes:
    return bytes(ord("a") + i % 26 for i in range(size))


def parse_frame(data: bytes) -> tuple[int, bytes, int]:
    """(first byte, payload, header length) of one unmasked frame, by RFC 6455 section 5.2."""
    first, second = data[0], data[1]
    assert second & 0x80 == 0, "server frames are not masked"
    length = second & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack_from("!H", data, offset)
        assert length >= 126, "not the minimal length encoding"
        offset += 2
    elif length == 127:
        (length,) = struct.unpack_from("!Q", data, offset)
        assert 65536 <= length < 2**63, "not the minimal length encoding"
        offset += 8
    body = data[offset : offset + length]
    assert len(body) == length
    assert len(data) == offset + length, "trailing bytes after the frame"
    return first, body, offset


@pytest.mark.parametrize("size", SIZES)
def test_text_frame_header_by_hand(size: int) -> None:
    body = payload(size)
    first, parsed, header = parse_frame(frames.text_frame(body))
    assert first == 0x81  # FIN, text
    assert parsed == body
    assert header == (2 if size < 126 else 4 if size < 65536 else 10)


async def test_text_frames_read_by_aiohttp(aiohttp_server: AiohttpServer) -> None:
    """Frames written straight to the transport, as the gateway does, read by a real client."""
    bodies = [payload(size) for size in SIZES]
    bodies.append('{"text":"한국어 é ✓"}'.encode())

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        assert request.transport is not None
        for body in bodies:
            request.transport.write(frames.text_frame(body))
        request.transport.write(frames.PONG)
        await ws.receive()  # the client's close
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = await aiohttp_server(app)
    async with ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        for body in bodies:
            message = await ws.receive(timeout=30)
            assert message.type == WSMsgType.TEXT
            assert message.data == body.decode()
        pong = await ws.receive(timeout=30)
        assert pong.type == WSMsgType.TEXT
        assert json.loads(pong.data) == {"op": "pong"}


def test_event_json_has_the_fields_of_the_protocol_and_splices_data_verbatim() -> None:
    data_json = '{"price":  12000, "title":"\\u00e9 \\"q\\"", "tags":[1.50, null],"z":{}}'
    raw = frames.event_json('room:7 "x"', 1301, 1290, 1764590000123, "chat.message", data_json)
    event = orjson.loads(raw)
    assert list(event) == ["op", "channel", "offset", "prev", "ts", "type", "data"]
    assert event == {
        "op": "event",
        "channel": 'room:7 "x"',
        "offset": 1301,
        "prev": 1290,
        "ts": 1764590000123,
        "type": "chat.message",
        "data": json.loads(data_json),
    }
    assert raw.endswith(b',"data":' + data_json.encode() + b"}")  # not re-encoded
    assert json.loads(raw) == event  # strict JSON for any client


def test_event_json_of_non_ascii_channel_and_type() -> None:
    raw = frames.event_json("feed:서울-마포", 1, 0, 0, "listing.created\n", '"é"')
    assert orjson.loads(raw) == {
        "op": "event",
        "channel": "feed:서울-마포",
        "offset": 1,
        "prev": 0,
        "ts": 0,
        "type": "listing.created\n",
        "data": "é",
    }


def test_a_broker_message_and_a_log_row_make_the_same_delivery() -> None:
    from_row = Delivery.from_row("listing:42", 1301, 1290, 1764590000123, "t", '{"a": 1}')
    message = encode_message(1301, 1290, from_row.json)
    assert decode_message(message) == (1301, 1290, from_row.json)
    from_message = Delivery.from_message("listing:42", message)
    assert from_message == from_row
    _, body, _ = parse_frame(from_row.frame)
    assert body == from_row.json
    with pytest.raises(ValueError, match="unpack"):
        Delivery.from_message("listing:42", b"garbage")


def test_control_and_error_frames() -> None:
    _, body, _ = parse_frame(frames.error("resync", "too old", channel="listing:1"))
    assert orjson.loads(body) == {
        "op": "error",
        "code": "resync",
        "detail": "too old",
        "channel": "listing:1",
    }
    _, body, _ = parse_frame(frames.control("subscribed", channel="listing:1", offset=5))
    assert orjson.loads(body) == {"op": "subscribed", "channel": "listing:1", "offset": 5}
