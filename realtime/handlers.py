"""HTTP routes of the realtime gateway: the ticket endpoint and the socket endpoint."""

from __future__ import annotations

from aiohttp import web

from realtime.keys import gateway_key
from server import keys
from server.auth.sessions import authenticate
from server.handler_params import limit_writes
from server.jsonio import StrictModel, json_response
from server.openapi import WEBSOCKET_HANDSHAKE, ApiSpec


class TicketOut(StrictModel):
    ticket: str
    expires_in: int


class SocketQuery(StrictModel):
    """A bad or missing ticket is refused after the upgrade (close 1008), not with a status."""

    ticket: str | None = None


async def ws_ticket(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    settings = request.app[keys.settings_key]
    await limit_writes(request, claims.user_id)
    ticket = await request.app[gateway_key].issue_ticket(claims.user_id, claims.session_id)
    out = TicketOut(ticket=ticket, expires_in=settings.ws_ticket_ttl)
    return json_response(out, status=201, headers={"Cache-Control": "no-store"})


async def ws_connect(request: web.Request) -> web.StreamResponse:
    return await request.app[gateway_key].handle(request)


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
