"""/docs is Swagger UI over /openapi.json, served with its assets by the app itself."""

from __future__ import annotations

import re

from tests.support import Client

JS_TYPES = ("text/javascript", "application/javascript")


def _references(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


async def test_docs_page_is_swagger_ui_without_external_urls(client: Client) -> None:
    response = await client.get("/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    html = await response.text()
    assert "swagger-ui-bundle.js" in html
    assert "<script>" not in html, "inline scripts would need 'unsafe-inline' in the CSP"
    references = _references(html)
    assert references, "the page loads its assets"
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in references)
    assert not re.search(r"https?://", html), "no CDN or other outside URL"


async def test_docs_assets_load_with_their_content_types(client: Client) -> None:
    html = await (await client.get("/docs")).text()
    seen = set()
    for ref in _references(html):
        response = await client.get(ref)
        assert response.status == 200, ref
        body = await response.read()
        assert body, ref
        suffix = ref.rsplit(".", 1)[-1]
        seen.add(suffix)
        expected = {"js": JS_TYPES, "css": ("text/css",), "png": ("image/png",)}[suffix]
        assert response.content_type in expected, (ref, response.content_type)
    assert {"js", "css"} <= seen


async def test_swagger_init_reads_the_one_document_and_calls_no_validator(
    client: Client,
) -> None:
    script = await (await client.get("/docs/assets/init.js")).text()
    assert 'url: "/openapi.json"' in script
    assert "validatorUrl: null" in script
    assert not re.search(r"https?://", script)


async def test_docs_csp_allows_only_this_origin(client: Client) -> None:
    response = await client.get("/docs")
    csp = response.headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["script-src"] == "'self'", "no inline or outside scripts"
    assert directives["connect-src"] == "'self'", "Try it out calls this server only"
    assert directives["default-src"] == "'none'"
    assert "unsafe" not in csp, "no inline scripts or styles, no eval"


async def test_bearer_scheme_backs_the_authorize_button(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert scheme == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    secured = [
        operation
        for methods in spec["paths"].values()
        for operation in methods.values()
        if operation.get("security") == [{"bearer": []}]
    ]
    assert secured, "operations that need a token say so, so Try it out sends it"
