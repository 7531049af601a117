"""Locust users for the REST API: accounts that sign up, read themselves and rotate tokens."""

from __future__ import annotations

import uuid
from typing import Any

from locust import HttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.clients import ResponseContextManager
from locust.exception import StopUser

from loadtests.config import LoadConfig

CONFIG = LoadConfig.from_env()
API = "/api/v1"
JSON_HEADERS = {"Content-Type": "application/json"}


def _defaults_from_config(parser: LocustArgumentParser, **_: Any) -> None:
    """``-u`` and ``-r`` default to ``JANGTEO_LOAD_USERS`` and ``JANGTEO_LOAD_SPAWN_RATE``."""
    parser.set_defaults(num_users=CONFIG.users, spawn_rate=CONFIG.spawn_rate)


events.init_command_line_parser.add_listener(_defaults_from_config)  # type: ignore[no-untyped-call]


def fail(response: ResponseContextManager, reason: str) -> None:
    """Count ``response`` as a failure in locust's statistics."""
    response.failure(reason)  # type: ignore[no-untyped-call]  # unannotated in locust


def expect(response: ResponseContextManager, status: int, *fields: str) -> dict[str, Any] | None:
    """Mark ``response`` failed unless it has ``status`` and a JSON object with ``fields``.

    Returns the parsed body on success (``{}`` when no field is asked for), else None.
    """
    body: dict[str, Any] = {}
    problem: str | None = None
    if not response.status_code:
        problem = f"no response: {response.error}"
    elif response.status_code != status:
        detail = (response.text or "")[:200]
        problem = f"expected {status}, got {response.status_code}: {detail}"
    elif fields:
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            problem = "response body is not a JSON object"
        else:
            body = parsed
            missing = [name for name in fields if name not in body]
            if missing:
                problem = f"response lacks {', '.join(missing)}"
    if problem is not None:
        fail(response, problem)
        return None
    response.success()  # type: ignore[no-untyped-call]  # unannotated in locust
    return body


class AccountUser(HttpUser):
    """A person with an account: mostly reads ``/me``, now and then refreshes or logs in again."""

    host = CONFIG.host
    wait_time = between(CONFIG.wait_min, CONFIG.wait_max)

    user_id: int
    email: str
    access_token: str
    refresh_token: str

    def on_start(self) -> None:
        self.email = f"load-{uuid.uuid4().hex}@{CONFIG.email_domain}"
        payload = {
            "email": self.email,
            "password": CONFIG.password,
            "nickname": "load tester",
            "region": CONFIG.region,
        }
        with self.client.post(
            f"{API}/auth/signup", json=payload, headers=JSON_HEADERS, catch_response=True
        ) as response:
            body = expect(response, 201, "user", "access_token", "refresh_token")
        if body is None:
            raise StopUser()
        self.user_id = int(body["user"]["id"])
        self._keep_tokens(body)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    def _keep_tokens(self, body: dict[str, Any]) -> None:
        self.access_token = str(body["access_token"])
        self.refresh_token = str(body["refresh_token"])

    @task(10)
    def me(self) -> None:
        with self.client.get(f"{API}/me", headers=self.auth, catch_response=True) as response:
            body = expect(response, 200, "id", "email")
            if body is not None and body["id"] != self.user_id:
                fail(response, f"/me answered user {body['id']}, expected {self.user_id}")

    @task(3)
    def refresh(self) -> None:
        with self.client.post(
            f"{API}/auth/refresh",
            json={"refresh_token": self.refresh_token},
            headers=JSON_HEADERS,
            catch_response=True,
        ) as response:
            body = expect(response, 200, "access_token", "refresh_token")
        if body is None:
            self.login()  # the session is gone; start another so later tasks mean something
            return
        self._keep_tokens(body)

    @task(1)
    def login(self) -> None:
        payload = {"email": self.email, "password": CONFIG.password}
        with self.client.post(
            f"{API}/auth/login", json=payload, headers=JSON_HEADERS, catch_response=True
        ) as response:
            body = expect(response, 200, "access_token", "refresh_token", "expires_in")
        if body is not None:
            self._keep_tokens(body)
