"""OWASP API2, broken authentication: guessing is bounded by rate limits, and tokens never
travel in URLs nor land in logs.

The log test runs a real ``jangteo serve`` with its access log on at DEBUG level, goes
through every step that handles a secret (sign-up, login, refresh, a ticket, a socket,
logout, and the failures), then searches everything the process wrote for those secrets.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from server.settings import RateLimit, Settings
from tests.conftest import ClientFactory
from tests.support import PASSWORD, Client, ServerProcess, sign_up

LOGIN = "/api/v1/auth/login"


def _login(email: str, password: str = PASSWORD) -> dict[str, str]:
    return {"email": email, "password": password}


async def test_credential_stuffing_from_one_address_is_cut_off(
    make_client: ClientFactory, settings: Settings
) -> None:
    """Many accounts tried from one address: after the per-IP limit, 429 with Retry-After,
    and a right password then changes nothing (it is not even checked)."""
    client = await make_client(settings.replace(rate_limit_auth_ip=RateLimit(5, 60)))
    victim = await sign_up(client)  # counts as one attempt
    statuses = []
    for _ in range(4):
        leaked = _login(f"someone-{uuid.uuid4().hex[:8]}@example.com", "leaked password")
        statuses.append((await client.post(LOGIN, json=leaked)).status)
    assert statuses == [401] * 4
    refused = await client.post(LOGIN, json=_login(victim.email))
    assert refused.status == 429, await refused.text()
    assert 0 < int(refused.headers["Retry-After"]) <= 60


async def test_guessing_one_accounts_password_from_many_addresses_is_cut_off(
    make_client: ClientFactory, settings: Settings
) -> None:
    """The per-email limit holds however many addresses (behind a trusted proxy) guess."""
    client = await make_client(
        settings.replace(
            rate_limit_auth_email=RateLimit(3, 60), trusted_proxies=("127.0.0.1/32", "::1/128")
        )
    )
    victim = await sign_up(client)  # the first attempt for this email
    for n in range(2):
        guess = await client.post(
            LOGIN,
            json=_login(victim.email, f"guess {n}"),
            headers={"X-Forwarded-For": f"198.51.100.{n + 1}"},
        )
        assert guess.status == 401
    refused = await client.post(
        LOGIN, json=_login(victim.email), headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert refused.status == 429, await refused.text()
    assert "Retry-After" in refused.headers


async def test_a_token_in_the_url_is_not_accepted(client: Client) -> None:
    account = await sign_up(client)
    for name in ("access_token", "token", "jwt"):
        response = await client.get(f"/api/v1/me?{name}={account.access_token}")
        assert response.status == 401, name


async def test_the_documented_api_takes_no_secret_in_a_url(client: Client) -> None:
    """The only query parameter that carries anything secret is the single-use, 30-second
    ticket of a socket or an event stream, which is exactly why they use one."""
    spec = await (await client.get("/openapi.json")).json()
    in_query = {
        (path, parameter["name"])
        for path, operations in spec["paths"].items()
        for operation in operations.values()
        for parameter in operation.get("parameters", ())
        if parameter["in"] == "query"
    }
    secret_looking = {
        (path, name)
        for path, name in in_query
        if any(word in name for word in ("token", "password", "secret", "key", "ticket"))
    }
    assert secret_looking == {("/api/v1/ws", "ticket"), ("/api/v1/sse", "ticket")}


@pytest.fixture
def logged_server(server_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {**server_env, "JANGTEO_ACCESS_LOG": "on", "JANGTEO_LOG_LEVEL": "DEBUG"}
    server = ServerProcess(env).start()
    yield server
    server.stop()


async def _log_through(server: ServerProcess, path: str) -> str:
    """The process's output once the access log shows ``path`` (written after the answer)."""
    async with asyncio.timeout(30):
        while True:
            output = server.output()
            if f'"{path}"' in output:
                return output
            await asyncio.sleep(0.05)


async def test_no_secret_reaches_the_logs(logged_server: ServerProcess) -> None:
    base = logged_server.url + "/api/v1"
    email = f"logs-{uuid.uuid4().hex[:8]}@example.com"
    secrets = [PASSWORD]
    async with aiohttp.ClientSession() as http:
        signup = await http.post(
            base + "/auth/signup",
            json={"email": email, "password": PASSWORD, "nickname": "logs", "region": "seoul-mapo"},
        )
        assert signup.status == 201
        first = await signup.json()
        login = await http.post(base + "/auth/login", json=_login(email))
        pair = await login.json()
        refreshed = await http.post(
            base + "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        newest = await refreshed.json()
        auth = {"Authorization": f"Bearer {newest['access_token']}"}
        assert (await http.get(base + "/me", headers=auth)).status == 200
        ticket = (await (await http.post(base + "/ws/ticket", headers=auth)).json())["ticket"]
        async with http.ws_connect(f"{base}/ws?ticket={ticket}") as ws:
            await ws.send_json({"op": "ping"})
            assert (await ws.receive_json(timeout=10)) == {"op": "pong"}
        # Failures are logged too, and must not echo what they were given.
        wrong = await http.post(base + "/auth/login", json=_login(email, "Wrong-Password-123"))
        assert wrong.status == 401
        reused = await http.post(
            base + "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert reused.status == 401  # revokes the session: logged as such
        stale = await http.get(base + "/me", headers=auth)
        assert stale.status == 401
        out = await http.post(base + "/auth/logout", json={"refresh_token": first["refresh_token"]})
        assert out.status == 204
        secrets += [
            first["access_token"], first["refresh_token"], pair["access_token"],
            pair["refresh_token"], newest["access_token"], newest["refresh_token"], ticket,
            "Wrong-Password-123",
        ]  # fmt: skip
    output = await _log_through(logged_server, "/api/v1/auth/logout")
    for secret in secrets:
        assert secret not in output, "a secret reached the logs"
