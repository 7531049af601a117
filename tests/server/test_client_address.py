"""Rate limits count the real client behind trusted proxies, and only behind them."""

from __future__ import annotations

import pytest

from server.settings import RateLimit, Settings, SettingsError
from tests.conftest import ClientFactory


async def _login_statuses(
    client_factory: ClientFactory, settings: Settings, hops: list[str]
) -> list[int]:
    client = await client_factory(settings.replace(rate_limit_auth_ip=RateLimit(2, 60)))
    statuses = []
    for n, hop in enumerate(hops):
        response = await client.post(
            "/api/v1/auth/login",
            json={"email": f"nobody{n}@example.com", "password": "whatever"},
            headers={"X-Forwarded-For": hop},
        )
        statuses.append(response.status)
    return statuses


async def test_behind_a_trusted_proxy_each_client_has_its_own_limit(
    make_client: ClientFactory, settings: Settings
) -> None:
    trusting = settings.replace(trusted_proxies=("127.0.0.0/8", "::1"))
    hops = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "198.51.100.9, 203.0.113.3"]
    # Each address signs in once or twice: nobody goes over 2; the last one spoofed a hop on
    # the left, which is ignored, so it counts as 203.0.113.3 (its second attempt).
    assert await _login_statuses(make_client, trusting, hops) == [401, 401, 401, 401]
    third = await _login_statuses(make_client, trusting, ["203.0.113.7"] * 3)
    assert third == [401, 401, 429]


async def test_without_trust_the_header_is_ignored(
    make_client: ClientFactory, settings: Settings
) -> None:
    statuses = await _login_statuses(
        make_client, settings, ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    )
    assert statuses == [401, 401, 429]


def test_bad_proxy_networks_are_refused() -> None:
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        Settings.from_env({"JANGTEO_TRUSTED_PROXIES": "10.0.0.0/8 not-an-address"})
    assert Settings.from_env({"JANGTEO_TRUSTED_PROXIES": "10.0.0.0/8, ::1"}).trusted_proxies == (
        "10.0.0.0/8",
        "::1",
    )
