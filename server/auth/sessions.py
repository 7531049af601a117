"""Who is calling: a bearer access token of a session not revoked (revocations.py)."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.auth.tokens import AccessClaims
from server.errors import InvalidToken


async def authenticate(request: web.Request) -> AccessClaims:
    """The caller's claims from ``Authorization: Bearer``; 401 when absent or invalid."""
    if keys.claims_key in request:
        return request[keys.claims_key]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("send Authorization: Bearer <access token>")
    claims = request.app[keys.token_issuer_key].decode_access(token.strip())
    if await request.app[keys.session_revocations_key].is_revoked(claims.session_id):
        raise InvalidToken("this session was logged out")
    request[keys.claims_key] = claims
    return claims
