"""The demo page: plain ES modules served as files, CSP-friendly, and its demo accounts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.demo import ASSETS_PATH, CLIENT_DIR, CLIENT_PATH, DEMO_DIR
from server.seed import DEMO_PASSWORD, seed
from server.settings import Settings
from tests.support import Client

IMPORT = re.compile(r"""^import .*? from '(\.{1,2}/[^']+)';$""", re.MULTILINE)
INLINE_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)
SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)


async def test_the_page_is_served_at_the_root_without_inline_scripts(client: Client) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    html = await response.text()
    scripts = SCRIPT_TAG.findall(html)
    assert scripts, "the page loads its modules"
    # A Content-Security-Policy of script-src 'self' allows only files, never inline code.
    assert all('src="/demo/' in attributes for attributes in scripts)
    assert INLINE_HANDLER.search(html) is None
    assert "<style" not in html


def served_file(path: str) -> Path:
    """The file behind a module's URL path: the demo's own, or the client library's."""
    for prefix, folder in ((ASSETS_PATH, DEMO_DIR), (CLIENT_PATH, CLIENT_DIR)):
        if path.startswith(prefix):
            return folder / path.removeprefix(prefix)
    raise AssertionError(f"{path} is outside every served folder")


def module_paths() -> set[str]:
    """Every module app.js reaches through relative imports, as URL paths."""
    seen: set[str] = set()
    pending = ["/demo/app.js"]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        source = served_file(path).read_text()
        assert INLINE_HANDLER.search(source) is None
        assert "eval(" not in source and "new Function" not in source
        folder = path.rsplit("/", 1)[0]
        for target in IMPORT.findall(source):
            parts = folder.split("/")
            for part in target.split("/"):
                if part == "..":
                    parts.pop()
                elif part != ".":
                    parts.append(part)
            pending.append("/".join(parts))
    return seen


async def test_every_module_is_served_as_javascript(client: Client) -> None:
    paths = module_paths()
    assert {"/demo/api.js", "/clients/js/jangteo.js", "/demo/views/feed.js"} <= paths
    for path in sorted(paths):
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type == "text/javascript", path
        assert response.headers["Cache-Control"] == "no-cache"
    css = await client.get("/demo/style.css")
    assert css.status == 200
    assert css.content_type == "text/css"


@pytest.mark.parametrize(
    "path",
    [
        "/demo/missing.js",
        "/demo/index.html",
        "/demo/..%2Fdemo.py",
        "/demo/views/..%2Fapp.js",
        "/clients/js/jangteo.d.ts",
        "/clients/js/README.md",
        "/clients/js/..%2F..%2Fserver%2Fdemo.py",
    ],
)
async def test_nothing_else_is_served(client: Client, path: str) -> None:
    assert (await client.get(path)).status == 404


async def test_demo_accounts_are_listed_only_once_seeded(
    client: Client, settings: Settings
) -> None:
    response = await client.get("/api/v1/demo/accounts")
    assert response.status == 200
    assert await response.json() == {"password": "", "accounts": []}

    await seed(settings, users=2, listings=0, if_empty=False)
    body = await (await client.get("/api/v1/demo/accounts")).json()
    assert body["password"] == DEMO_PASSWORD
    assert [account["email"] for account in body["accounts"]] == [
        "demo1@jangteo.dev",
        "demo2@jangteo.dev",
    ]
    assert set(body["accounts"][0]) == {"email", "nickname", "region"}
    login = await client.post(
        "/api/v1/auth/login",
        json={"email": body["accounts"][0]["email"], "password": body["password"]},
    )
    assert login.status == 200
