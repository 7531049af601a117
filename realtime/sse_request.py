"""What an event stream request asks for: its channels, in order, and where to resume each.

Checked before anything is subscribed; every problem is a 400 that says what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from multidict import MultiMapping

from realtime.sse_frames import BadCursor, Cursor, parse_cursor
from server.errors import BadRequest

LAST_EVENT_ID = "Last-Event-ID"


@dataclass(frozen=True, slots=True)
class StreamRequest:
    channels: tuple[str, ...]
    since: tuple[int | None, ...]  # per channel: resume after this offset, or live only


PARAMETERS = ("ticket", "channel", "since")


def parse_stream_request(
    query: MultiMapping[str], headers: Mapping[str, str], max_channels: int
) -> StreamRequest:
    """The request's channels and cursor (``Last-Event-ID`` wins over ``since``)."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]}; they are {', '.join(PARAMETERS)}")
    for name in ("ticket", "since"):
        if len(query.getall(name, ())) > 1:
            raise BadRequest(f"give {name} once")
    channels = query.getall("channel", [])
    since = query.get("since")
    if not channels:
        raise BadRequest("give at least one channel: ?channel=listing:42&channel=feed:seoul")
    if len(channels) > max_channels:
        raise BadRequest(f"at most {max_channels} channels per stream")
    if len(set(channels)) != len(channels):
        raise BadRequest("each channel may be given once")
    last_event_id = headers.get(LAST_EVENT_ID)
    cursors = {"since": since, LAST_EVENT_ID: last_event_id}
    parsed: dict[str, Cursor] = {}
    for name, text in cursors.items():
        if text is None:
            continue
        try:
            parsed[name] = parse_cursor(text)
        except BadCursor as bad:
            raise BadRequest(f"{name}: {bad}") from None
        if len(parsed[name]) != len(channels):
            raise BadRequest(
                f"{name}: {len(parsed[name])} fields for {len(channels)} channels;"
                " a cursor has one field per channel, in the order of the channels"
            )
    cursor = parsed.get(LAST_EVENT_ID) or parsed.get("since") or [None] * len(channels)
    return StreamRequest(tuple(channels), tuple(cursor))
