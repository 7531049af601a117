"""OWASP API8, security misconfiguration: the headers every answer carries, pages under a
Content-Security-Policy, no server version, and CORS closed (there is no CORS setting).

The answers checked are every GET route of the router without parameters, plus the ones
aiohttp and the middleware make on their own: 304, 401, 404, 405, 413, 422, WebSocket
handshakes accepted and refused, and static files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping

from aiohttp import ClientResponse

from server.settings import Settings
from tests.server.listings_support import create_listing, etag_of, item_url
from tests.support import Account, Client, sign_up

# Headers that would open the API to scripts of other origins.
CORS_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
)
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)


def assert_hardened(where: str, headers: Mapping[str, str]) -> None:
    assert headers.get("X-Content-Type-Options") == "nosniff", (where, dict(headers))
    server = headers.get("Server", "")
    assert not re.search(r"\d|aiohttp|python", server, re.IGNORECASE), (where, server)
    for name in CORS_HEADERS:
        assert name not in headers, (where, name)


def page_policy(where: str, headers: Mapping[str, str], html: str) -> dict[str, list[str]]:
    """The page's CSP as {directive: sources}; it must exist, forbid framing and inline or
    evaluated scripts, and the page must need neither."""
    policy_text = headers.get("Content-Security-Policy")
    assert policy_text, (where, "an HTML page without a Content-Security-Policy")
    policy = {
        name: sources
        for name, *sources in (part.split() for part in policy_text.split(";") if part.strip())
    }
    assert policy.get("frame-ancestors") == ["'none'"], (where, policy)
    assert "default-src" in policy, (where, policy)
    scripts = policy.get("script-src", policy["default-src"])
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts, (where, policy)
    assert "*" not in scripts, (where, policy)
    assert not _INLINE_SCRIPT.search(html), (where, "an inline script the policy would block")
    return policy


def _get_routes(client: Client) -> list[str]:
    return sorted(
        {
            route.resource.canonical
            for route in client.app.router.routes()
            if route.method == "GET"
            and route.resource is not None
            and "{" not in route.resource.canonical
        }
    )


async def _check(where: str, response: ClientResponse) -> None:
    assert_hardened(where, response.headers)
    if response.content_type == "text/html":
        page_policy(where, response.headers, await response.text())


async def test_every_get_route_answers_with_the_security_headers(client: Client) -> None:
    account = await sign_up(client)
    routes = _get_routes(client)
    assert {"/", "/docs", "/openapi.json", "/healthz", "/api/v1/me"} <= set(routes)
    pages = []
    for path in routes:
        for headers in ({}, account.auth):
            response = await client.get(path, headers=headers)
            await _check(f"GET {path}", response)
            if response.content_type == "text/html":
                pages.append(path)
    assert {"/", "/docs"} <= set(pages), pages


async def test_answers_made_outside_the_handlers_carry_them_too(client: Client) -> None:
    seller = await sign_up(client)
    listing = await create_listing(client, seller)
    url = item_url(listing["id"])
    answers = {
        "304": await client.get(url, headers={"If-None-Match": etag_of(listing)}),
        "401": await client.post("/api/v1/listings", json={}),
        "404": await client.get("/no/such/page"),
        "405": await client.put("/healthz"),
        "413": await client.post(
            "/api/v1/auth/login", data=b"x" * 70_000, headers={"Content-Type": "application/json"}
        ),
        "422": await client.post("/api/v1/listings", json={"nope": 1}, headers=seller.auth),
        "WebSocket 403": await client.get("/api/v1/ws", headers={"Origin": "https://evil.example"}),
    }
    for status, response in answers.items():
        assert str(response.status) == status.split()[-1], (status, response.status)
        await _check(status, response)
    swagger_files = await client.get("/docs/swagger-ui/swagger-ui-bundle.js")
    assert swagger_files.status == 200
    await _check("static file", swagger_files)


async def test_an_accepted_websocket_handshake_carries_them(client: Client) -> None:
    account = await sign_up(client)
    await _handshake(client, account)


async def _handshake(client: Client, account: Account) -> None:
    ticket = await client.post("/api/v1/ws/ticket", headers=account.auth)
    assert ticket.status == 201
    ws = await client.ws_connect(f"/api/v1/ws?ticket={(await ticket.json())['ticket']}")
    try:
        assert_hardened("WebSocket 101", ws._response.headers)
    finally:
        await ws.close()


def test_there_is_no_cors_setting() -> None:
    """Pinned: should one be added, CORS must become configurable and this suite extended."""
    names = [field.name for field in dataclasses.fields(Settings)]
    assert not [name for name in names if "cors" in name or "allow_origin" in name]


async def test_cors_is_closed(client: Client) -> None:
    account = await sign_up(client)
    evil = {"Origin": "https://evil.example"}
    preflight = await client.options(
        "/api/v1/me",
        headers={
            **evil,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status == 405  # no preflight is answered, so browsers send nothing
    assert_hardened("preflight", preflight.headers)
    cross_site = await client.get("/api/v1/me", headers={**evil, **account.auth})
    assert cross_site.status == 200
    assert_hardened("cross-origin GET", cross_site.headers)


async def test_a_request_aiohttp_cannot_parse_names_no_version(client: Client) -> None:
    """Answered by aiohttp before any app code runs: the one answer no hook sees."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        head = (await reader.read(4096)).decode(errors="replace")
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.split("\r\n")[0].split()[1] == "400", head
    server = next(line for line in head.split("\r\n") if line.lower().startswith("server:"))
    assert not re.search(r"\d|aiohttp|python", server, re.IGNORECASE), server
