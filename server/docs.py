"""``/openapi.json`` and ``/docs``, a self-contained page that renders it (no CDN needed)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server import keys
from server.jsonio import dumps

_DOCS_PAGE = Path(__file__).parent / "static" / "docs.html"


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=dumps(request.app[keys.api_spec_key].document()), content_type="application/json"
    )


async def docs(request: web.Request) -> web.Response:
    return web.Response(body=_DOCS_PAGE.read_bytes(), content_type="text/html")


def setup_routes(app: web.Application) -> None:
    spec = app[keys.api_spec_key]
    spec.route(app, "GET", "/openapi.json", openapi_json, summary="This document", tag="ops")
    spec.route(
        app, "GET", "/docs", docs, summary="Human-readable API reference", tag="ops",
        content_type="text/html",
    )  # fmt: skip
