"""The demo page at ``/``: static ES modules served as they are (no build), and its accounts;
also the JavaScript client library (``clients/js/``), which the page imports as any app would."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
from aiohttp import web

from server import keys
from server.errors import NotFound
from server.jsonio import json_response
from server.openapi import ApiSpec
from server.seed import DEMO_PASSWORD

DEMO_DIR = Path(__file__).parent / "static" / "demo"
ASSETS_PATH = "/demo/"
# The library lives beside the server packages, not inside them: apps take it from the tree.
CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js"
CLIENT_PATH = "/clients/js/"
# Names only, never paths: nothing outside the folders served here can be asked for.
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*\.(js|css|svg)$")
_CONTENT_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
# Revalidated on every load: a changed module shows at once, an unchanged one costs a 304.
_NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
DEMO_ACCOUNTS_SHOWN = 6


class DemoAccount(pydantic.BaseModel):
    email: str
    nickname: str
    region: str


class DemoAccounts(pydantic.BaseModel):
    """Seeded accounts share one published password; empty when nothing was seeded."""

    password: str
    accounts: list[DemoAccount]


def _asset(folder: Path, name: str) -> web.FileResponse:
    match = _ASSET_NAME.match(name)
    path = folder / name
    if match is None or not path.is_file():
        raise NotFound("no such file")
    headers = {**_NO_CACHE, "Content-Type": _CONTENT_TYPES[match.group(1)]}
    return web.FileResponse(path, headers=headers)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        DEMO_DIR / "index.html", headers={**_NO_CACHE, "Content-Type": "text/html"}
    )


async def asset(request: web.Request) -> web.FileResponse:
    return _asset(DEMO_DIR, request.match_info["name"])


async def view_asset(request: web.Request) -> web.FileResponse:
    return _asset(DEMO_DIR / "views", request.match_info["name"])


async def client_asset(request: web.Request) -> web.FileResponse:
    return _asset(CLIENT_DIR, request.match_info["name"])


async def demo_accounts(request: web.Request) -> web.Response:
    """The accounts ``jangteo seed`` made, for one-click sign-in on the demo page.

    Their password is published (README, seed output); listing them only says which exist.
    """
    rows = await request.app[keys.pg_pool_key].fetch(
        "SELECT email, nickname, region FROM users"
        " WHERE email LIKE 'demo%@jangteo.dev' ORDER BY id LIMIT $1",
        DEMO_ACCOUNTS_SHOWN,
    )
    accounts = [DemoAccount(**dict(row)) for row in rows]
    body = DemoAccounts(password=DEMO_PASSWORD if accounts else "", accounts=accounts)
    return json_response(body)


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    spec.route(
        app, "GET", "/", index, summary="Demo page (plain ES modules, no build)", tag="demo",
        content_type="text/html",
    )  # fmt: skip
    name = {"name": {"type": "string", "pattern": _ASSET_NAME.pattern}}
    spec.route(
        app, "GET", ASSETS_PATH + "{name}", asset, summary="Demo page scripts and styles",
        tag="demo", content_type="text/javascript", errors=(404,), path_schemas=name,
    )  # fmt: skip
    spec.route(
        app, "GET", ASSETS_PATH + "views/{name}", view_asset, summary="Demo page views",
        tag="demo", content_type="text/javascript", errors=(404,), path_schemas=name,
    )  # fmt: skip
    spec.route(
        app, "GET", CLIENT_PATH + "{name}", client_asset,
        summary="The JavaScript realtime client library (clients/js/)", tag="demo",
        content_type="text/javascript", errors=(404,), path_schemas=name,
    )  # fmt: skip
    spec.route(
        app, "GET", "/api/v1/demo/accounts", demo_accounts,
        summary="Seeded demo accounts for one-click sign-in", tag="demo", response=DemoAccounts,
    )  # fmt: skip
