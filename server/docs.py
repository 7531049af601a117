"""``/openapi.json`` and ``/docs``: Swagger UI ("Try it out") over that one document.

Swagger UI's assets come from the ``swagger-ui-bundle-v2`` package (Swagger UI 5, which
reads OpenAPI 3.1) and are served by this app, so the page works offline and loads
nothing from a CDN.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from aiohttp import web

from server import keys
from server.jsonio import dumps

_OWN_ASSETS = Path(__file__).parent / "static" / "docs"

# Swagger UI 5 styles through the DOM (no inline <style>, checked in a browser by
# tests/browser/test_docs_ui.py) and draws its icons as data: URIs; its script and ours are
# files from this origin, and "Try it out" calls this origin only.
DOCS_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


def swagger_ui_dir() -> Path:
    """The installed Swagger UI distribution (its folder name carries the version)."""
    vendor = Path(str(importlib.resources.files("swagger_ui_bundle") / "vendor"))
    found = sorted(vendor.glob("swagger-ui-*/swagger-ui-bundle.js"))
    if not found:
        raise RuntimeError(f"no Swagger UI under {vendor}; install swagger-ui-bundle-v2")
    return found[-1].parent


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=dumps(request.app[keys.api_spec_key].document()), content_type="application/json"
    )


async def docs(request: web.Request) -> web.Response:
    return web.Response(
        body=(_OWN_ASSETS / "index.html").read_bytes(),
        content_type="text/html",
        headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"},
    )


def setup_routes(app: web.Application) -> None:
    spec = app[keys.api_spec_key]
    spec.route(app, "GET", "/openapi.json", openapi_json, summary="This document", tag="ops")
    spec.route(
        app, "GET", "/docs", docs, summary="Interactive API reference (Swagger UI)", tag="ops",
        content_type="text/html",
    )  # fmt: skip
    # Static files, not API operations: left out of /openapi.json on purpose.
    app.router.add_static("/docs/swagger-ui", swagger_ui_dir(), name="swagger-ui")
    app.router.add_static("/docs/assets", _OWN_ASSETS, name="docs-assets")
