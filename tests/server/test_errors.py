"""Every error is an RFC 9457 problem+json answer: 400/404/405/413/415/422/500/503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web

from jangteo.app import create_app
from server.embedded.process import free_port
from server.errors import PROBLEM_CONTENT_TYPE
from server.settings import Settings
from tests.support import PASSWORD, Client, sign_up

ClientFactory = Callable[[Settings], Awaitable[Client]]
AiohttpClient = Callable[..., Awaitable[Client]]

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
SECRET_MESSAGE = "kaboom: db password is hunter2"


async def problem(response: ClientResponse, status: int, slug: str | None = None) -> dict[str, Any]:
    """Check ``response`` is an RFC 9457 problem with ``status`` (and type slug); return it."""
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    body: dict[str, Any] = await response.json(content_type=PROBLEM_CONTENT_TYPE)
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["type"], str)
    assert body["type"].startswith("https://")
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    assert body["instance"] == response.url.path
    assert response.headers["X-Request-ID"]
    return body


def closed_port_url(scheme: str, path: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}{path}"


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never answers: a hung dependency."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    yield port
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()


# --- 400 / 415 / 422: request bodies -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b'{"email": "a@b.co", "password": ', b"", b"{'single': 'quotes'}", b"\xff\xfe{}", b"nul"],
    ids=["truncated", "empty", "single-quotes", "not-utf8", "bare-word"],
)
async def test_malformed_json_is_400(client: Client, raw: bytes) -> None:
    response = await client.post(LOGIN, data=raw, headers={"Content-Type": "application/json"})
    await problem(response, 400, "malformed-json")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
async def test_non_json_content_type_is_415(client: Client, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    body = b'{"email": "a@b.co", "password": "whatever1"}'
    response = await client.post(LOGIN, data=body, headers=headers)
    await problem(response, 415, "unsupported-media-type")


async def test_json_with_charset_parameter_is_accepted(client: Client) -> None:
    body = b'{"email": "nobody@example.com", "password": "whatever1"}'
    response = await client.post(
        LOGIN, data=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    await problem(response, 401, "invalid-credentials")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
async def test_body_that_is_not_an_object_is_422(client: Client, raw: bytes) -> None:
    response = await client.post(LOGIN, data=raw, headers={"Content-Type": "application/json"})
    body = await problem(response, 422, "validation-failed")
    assert len(body["errors"]) == 1


async def test_validation_problem_lists_field_errors(
    client: Client, db: asyncpg.Connection
) -> None:
    response = await client.post(
        SIGNUP, json={"email": "x", "password": "Pw7zq!", "nickname": "ok", "extra": 1}
    )
    body = await problem(response, 422, "validation-failed")
    errors = body["errors"]
    assert isinstance(errors, list)
    assert sorted(error["field"] for error in errors) == ["email", "extra", "password", "region"]
    for error in errors:
        assert set(error) == {"field", "code", "message"}
        assert all(isinstance(value, str) and value for value in error.values())
    # The submitted values are not echoed back (they may be passwords).
    assert "Pw7zq" not in await response.text()
    assert await db.fetchval("SELECT count(*) FROM users") == 0


# --- 413 -------------------------------------------------------------------------------


@pytest.fixture
async def small_client(make_client: ClientFactory, settings: Settings) -> Client:
    return await make_client(settings.replace(max_body_bytes=1024))


def padded_login(size: int) -> bytes:
    """A valid login body of exactly ``size`` bytes (trailing JSON whitespace)."""
    body = b'{"email": "nobody@example.com", "password": "whatever1"}'
    assert len(body) <= size
    return body + b" " * (size - len(body))


async def test_body_over_the_limit_with_content_length_is_413(small_client: Client) -> None:
    response = await small_client.post(
        LOGIN, data=padded_login(1025), headers={"Content-Type": "application/json"}
    )
    await problem(response, 413, "payload-too-large")


async def test_body_at_the_limit_is_accepted(small_client: Client) -> None:
    response = await small_client.post(
        LOGIN, data=padded_login(1024), headers={"Content-Type": "application/json"}
    )
    await problem(response, 401, "invalid-credentials")


async def test_chunked_body_over_the_limit_is_413(small_client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "nobody@example.com", "password": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}'

    response = await small_client.post(
        LOGIN, data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    await problem(response, 413, "payload-too-large")


async def test_chunked_body_under_the_limit_is_read(small_client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "nobody@example.com", '
        yield b'"password": "whatever1"}'

    response = await small_client.post(
        LOGIN, data=chunks(), headers={"Content-Type": "application/json"}
    )
    await problem(response, 401, "invalid-credentials")


async def test_default_limit_applies_to_the_real_app(client: Client, settings: Settings) -> None:
    response = await client.post(
        LOGIN,
        data=padded_login(settings.max_body_bytes + 1),
        headers={"Content-Type": "application/json"},
    )
    await problem(response, 413, "payload-too-large")


# --- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/api/v2/me", "/api/v1/auth"])
async def test_unknown_route_is_404(client: Client, path: str) -> None:
    response = await client.get(path)
    await problem(response, 404, "not-found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", LOGIN, {"POST"}),
        ("PUT", SIGNUP, {"POST"}),
        ("DELETE", "/api/v1/me", {"GET"}),
        ("POST", "/healthz", {"GET"}),
    ],
)
async def test_wrong_method_is_405_with_allow(
    client: Client, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path)
    await problem(response, 405, "method-not-allowed")
    listed = {part.strip() for part in response.headers["Allow"].split(",")}
    assert allowed <= listed
    assert method not in listed


# --- 500 -------------------------------------------------------------------------------


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError(SECRET_MESSAGE)


async def _boom_key(request: web.Request) -> web.Response:
    known: dict[str, str] = {}
    return web.json_response(known[request.match_info["name"]])


async def test_unhandled_error_is_500_without_leaking(
    aiohttp_client: AiohttpClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)
    app.router.add_get("/boom", _boom)
    app.router.add_get("/boom/{name}", _boom_key)
    client = await aiohttp_client(app)

    for path in ("/boom", "/boom/secret-key-name"):
        response = await client.get(path)
        body = await problem(response, 500, "internal-error")
        del body["instance"]  # the path echoed back is the client's own
        text = str(body)
        for leak in ("Traceback", "RuntimeError", "KeyError", "hunter2", "kaboom", "secret-key"):
            assert leak not in text
            assert leak not in str(dict(response.headers))
        assert set(body) <= {"type", "title", "status", "detail", "instance"}
    # The details go to the log instead, with the traceback.
    assert any(record.exc_info for record in caplog.records)
    # The app still serves after the failures.
    assert (await client.get("/healthz")).status == 200


# --- 503: dependencies down ------------------------------------------------------------


@pytest.fixture
async def no_postgres(make_client: ClientFactory, settings: Settings) -> Client:
    return await make_client(
        settings.replace(
            database_url=closed_port_url("postgresql", "/x").replace("://", "://postgres@"),
            pg_connect_timeout=1,
        )
    )


async def test_login_without_postgres_is_503(no_postgres: Client) -> None:
    response = await no_postgres.post(
        LOGIN, json={"email": "nobody@example.com", "password": "whatever1"}
    )
    body = await problem(response, 503, "service-unavailable")
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    assert "127.0.0.1" not in str(body)


async def test_signup_without_postgres_is_503(no_postgres: Client) -> None:
    response = await no_postgres.post(
        SIGNUP,
        json={"email": "a@example.com", "password": PASSWORD, "nickname": "n", "region": "seoul"},
    )
    await problem(response, 503, "service-unavailable")
    assert int(response.headers["Retry-After"]) >= 1


async def test_readyz_without_postgres_is_503(no_postgres: Client) -> None:
    response = await no_postgres.get("/readyz")
    body = await problem(response, 503, "service-unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["postgres"] != "ok"
    # Liveness does not depend on PostgreSQL.
    assert (await no_postgres.get("/healthz")).status == 200


async def test_rest_works_without_redis(
    make_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> None:
    client = await make_client(
        settings.replace(redis_url=closed_port_url("redis", "/0"), redis_timeout=0.5)
    )
    account = await sign_up(client)
    login = await client.post(LOGIN, json={"email": account.email, "password": PASSWORD})
    assert login.status == 200, await login.text()
    pair = await login.json()
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status == 200, await me.text()
    assert (await me.json())["id"] == account.user_id
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert refreshed.status == 200, await refreshed.text()
    # Logout still revokes the refresh tokens in PostgreSQL.
    new_refresh = (await refreshed.json())["refresh_token"]
    logout = await client.post("/api/v1/auth/logout", json={"refresh_token": new_refresh})
    assert logout.status == 204
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": new_refresh})
    await problem(again, 401, "invalid-token")
    assert await db.fetchval("SELECT count(*) FROM users") == 1

    ready = await client.get("/readyz")
    body = await problem(ready, 503, "service-unavailable")
    assert int(ready.headers["Retry-After"]) >= 1
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"] != "ok"


async def test_hung_postgres_gives_503_not_a_hang(
    make_client: ClientFactory, settings: Settings, silent_port: int
) -> None:
    client = await make_client(
        settings.replace(
            database_url=f"postgresql://postgres@127.0.0.1:{silent_port}/x", pg_connect_timeout=1
        )
    )
    response = await client.post(LOGIN, json={"email": "nobody@example.com", "password": "x"})
    await problem(response, 503, "service-unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    ready = await client.get("/readyz")
    await problem(ready, 503, "service-unavailable")


async def test_rest_works_with_a_hung_redis(
    make_client: ClientFactory, settings: Settings, silent_port: int
) -> None:
    client = await make_client(
        settings.replace(redis_url=f"redis://127.0.0.1:{silent_port}/0", redis_timeout=0.3)
    )
    account = await sign_up(client)
    me = await client.get("/api/v1/me", headers=account.auth)
    assert me.status == 200, await me.text()
    ready = await client.get("/readyz")
    body = await problem(ready, 503, "service-unavailable")
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"] != "ok"
