"""Helpers of the security suite: accounts over plain HTTP, and the app's own routes."""

from __future__ import annotations

import uuid

import requests

from tests.support import PASSWORD


def signed_up_token(base_url: str, region: str = "seoul-mapo") -> str:
    """A new account's access token, from a served app (blocking: for sync tests)."""
    email = f"sec-{uuid.uuid4().hex[:12]}@example.com"
    response = requests.post(
        base_url + "/api/v1/auth/signup",
        json={"email": email, "password": PASSWORD, "nickname": "security", "region": region},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["access_token"]
    return token
