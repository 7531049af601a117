"""An event as an instance delivers it: its channel, offset, prev and its ready frame."""

from __future__ import annotations

from dataclasses import dataclass

from realtime.broker import TRACE_MARK, decode_message, split_trace
from realtime.frames import event_json, text_frame


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    offset: int
    prev: int
    json: bytes  # the event frame's JSON
    frame: bytes  # the same JSON as a complete WebSocket frame, the bytes every socket gets
    trace: str | None = None  # the traceparent of the change, when it was traced

    @classmethod
    def from_message(cls, channel: str, payload: bytes) -> Delivery:
        trace = None
        if payload[:1] == TRACE_MARK:
            trace, payload = split_trace(payload)
        offset, prev, json = decode_message(payload)
        return cls(channel, offset, prev, json, text_frame(json), trace)

    @classmethod
    def from_row(
        cls, channel: str, offset: int, prev: int, ts: int, type_: str, data_json: str
    ) -> Delivery:
        json = event_json(channel, offset, prev, ts, type_, data_json)
        return cls(channel, offset, prev, json, text_frame(json))
