"""HTTP routes of the realtime gateway: the ticket, the socket and the event stream."""

from __future__ import annotations

from typing import Annotated

import pydantic
from aiohttp import web

from realtime.keys import gateway_key
from realtime.sse_request import LAST_EVENT_ID
from server import keys
from server.auth.sessions import authenticate
from server.handler_params import limit_writes
from server.jsonio import StrictModel, json_response
from server.openapi import WEBSOCKET_HANDSHAKE, ApiSpec, Header

# One field per channel, in the order of the channels: an offset, or empty.
CURSOR_PATTERN = r"^(|[0-9]{1,19})(,(|[0-9]{1,19}))*$"


class TicketOut(StrictModel):
    ticket: str
    expires_in: int


class SocketQuery(StrictModel):
    """A bad or missing ticket is refused after the upgrade (close 1008), not with a status."""

    ticket: str | None = None


class StreamQuery(StrictModel):
    """Refusals are statuses: 401 for the ticket, then 400 for the rest (docs/protocol.md)."""

    ticket: Annotated[str, pydantic.Field(min_length=1, max_length=100)]
    channel: Annotated[
        list[str],
        pydantic.Field(
            min_length=1,
            description="A channel to follow, repeated for each; at most"
            " JANGTEO_WS_MAX_SUBSCRIPTIONS (100), each once. One that may not be followed"
            " gets an error message in the stream, not a status",
            json_schema_extra={"uniqueItems": True},
        ),
    ]
    since: Annotated[
        str | None,
        pydantic.Field(
            default=None,
            pattern=CURSOR_PATTERN,
            description="A cursor (the id of a message): per channel, the offset to resume"
            " after, or empty for live only",
        ),
    ] = None


STREAM_CURSOR = Header(
    LAST_EVENT_ID,
    "A cursor, as `since`; wins over it",
    {"type": "string", "pattern": CURSOR_PATTERN},
    required=False,
    answers={400: "a cursor with another field count than channels, or an offset past 2^63-1"},
)


async def ws_ticket(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    settings = request.app[keys.settings_key]
    await limit_writes(request, claims.user_id)
    ticket = request.app[gateway_key].issue_ticket(claims.user_id, claims.session_id)
    out = TicketOut(ticket=ticket, expires_in=settings.ws_ticket_ttl)
    return json_response(out, status=201, headers={"Cache-Control": "no-store"})


async def ws_connect(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].handle(request)


async def sse_connect(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].open_stream(request)


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    prefix = "/api/v1"
    spec.route(
        app, "POST", f"{prefix}/ws/ticket", ws_ticket,
        summary="A single-use ticket (30 s) for opening a WebSocket on any instance",
        tag="realtime", response=TicketOut, status=201, auth=True, errors=(429, 503),
    )  # fmt: skip
    spec.route(
        app, "GET", f"{prefix}/ws", ws_connect,
        summary="Open the realtime WebSocket: GET /api/v1/ws?ticket=... (docs/protocol.md)",
        tag="realtime", status=101, errors=(400, 403, 503), query=SocketQuery,
        headers=WEBSOCKET_HANDSHAKE,
    )  # fmt: skip
    spec.route(
        app, "GET", f"{prefix}/sse", sse_connect,
        summary="Open a receive-only event stream (Server-Sent Events): GET /api/v1/sse?ticket="
        "...&channel=... (docs/protocol.md)",
        tag="realtime", content_type="text/event-stream", errors=(400, 401, 403, 503),
        query=StreamQuery, headers=(STREAM_CURSOR,),
    )  # fmt: skip
