"""/openapi.json describes every route the app serves, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

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
