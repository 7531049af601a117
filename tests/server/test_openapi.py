"""/openapi.json describes every route the app serves, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import re
from typing import Any, cast

from aiohttp import web
from openapi_spec_validator import validate

from tests.support import Client


async def test_every_route_is_documented(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).json()
    served = {
        (route.resource.canonical, route.method.lower())
        for route in client.app.router.routes()
        if route.resource is not None
        and route.method not in ("HEAD", "*")
        # Static files (Swagger UI's assets) are not API operations.
        and not isinstance(route.resource, web.StaticResource)
    }
    documented = {(path, method) for path, methods in spec["paths"].items() for method in methods}
    assert served, "the app serves routes"
    assert served - documented == set(), "routes missing from /openapi.json"
    assert documented - served == set(), "documented routes that do not exist"


async def test_document_is_valid_openapi_3_1(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"] == "3.1.0"
    validate(spec)
    signup = spec["paths"]["/api/v1/auth/signup"]["post"]
    assert set(signup["responses"]) >= {"201", "400", "409", "413", "415", "422", "429"}
    me = spec["paths"]["/api/v1/me"]["get"]
    assert me["security"] == [{"bearer": []}]


async def test_what_the_server_takes_is_in_the_document(client: Client) -> None:
    """The patterns and answers that make a schema-valid request one the server accepts."""
    spec = await (await client.get("/openapi.json")).json()
    paths = spec["paths"]

    def parameter(path: str, method: str, name: str) -> dict[str, Any]:
        (found,) = [p for p in paths[path][method]["parameters"] if p["name"] == name]
        return cast(dict[str, Any], found)

    # Ids in paths are bigints; anything else names nothing (404).
    item = parameter("/api/v1/listings/{id}", "get", "id")["schema"]
    assert (item["type"], item["minimum"], item["maximum"]) == ("integer", 1, 2**63 - 1)
    # Cursors: exactly the strings the server takes.
    for path in ("/api/v1/listings", "/api/v1/orders", "/api/v1/chats"):
        assert parameter(path, "get", "cursor")["schema"]["pattern"], path
    # If-Match: "*" or an ETag as the server writes them; 412 and 428 say when they happen.
    patch = paths["/api/v1/listings/{id}"]["patch"]
    pattern = parameter("/api/v1/listings/{id}", "patch", "If-Match")["schema"]["pattern"]
    for good in ("*", '"1-2-0"', 'W/"9223372036854775807-1-0"'):
        assert re.fullmatch(pattern, good), good
    for bad in ("garbage", '"1-2"', '"' + "1" * 20 + '-1-0"', '"1-1-0", "1-2-0"'):
        assert not re.fullmatch(pattern, bad), bad
    assert "If-Match" in patch["responses"]["412"]["description"]
    assert "If-Match" in patch["responses"]["428"]["description"]
    # A reused Idempotency-Key is documented wherever a key is read.
    keyed = [
        ("/api/v1/wallet/topup", "post"),
        ("/api/v1/listings/{id}/purchase", "post"),
        ("/api/v1/orders/{id}/complete", "post"),
        ("/api/v1/orders/{id}/cancel", "post"),
    ]
    for path, method in keyed:
        responses = paths[path][method]["responses"]
        for status in ("400", "409", "422"):
            assert "Idempotency-Key" in responses[status]["description"], (path, status)
    # The socket's handshake: a plain GET is not one, and is answered 400.
    socket = paths["/api/v1/ws"]["get"]
    handshake = {p["name"] for p in socket["parameters"] if p["in"] == "header" and p["required"]}
    assert handshake == {"Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version"}
    assert not parameter("/api/v1/ws", "get", "ticket")["required"]  # refused after the upgrade
