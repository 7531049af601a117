"""Locust users for the REST API: accounts that rotate tokens, and neighbours who trade."""

from __future__ import annotations

import random
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


class MarketUser(AccountUser):
    """A neighbour who browses, searches, likes, lists things and buys from the wallet.

    Purchases accept the answers a busy market gives (sold out, reserved, someone else's
    sale in between) and count anything else, above all a 5xx, as a failure.
    """

    weight = 3
    seen: list[int]

    def on_start(self) -> None:
        super().on_start()
        self.seen = []
        key = uuid.uuid4().hex
        with self.client.post(
            f"{API}/wallet/topup",
            json={"amount": 1_000_000},
            headers={**self.auth, **JSON_HEADERS, "Idempotency-Key": key},
            catch_response=True,
        ) as response:
            expect(response, 200, "balance")

    @task(10)
    def feed(self) -> None:
        with self.client.get(
            f"{API}/listings",
            params={"region": CONFIG.region},
            name=f"{API}/listings?region",
            catch_response=True,
        ) as response:
            body = expect(response, 200, "items", "next_cursor")
        if body:
            self.seen = [int(item["id"]) for item in body["items"]][:20] or self.seen

    @task(8)
    def listing(self) -> None:
        if not self.seen:
            return
        listing_id = random.choice(self.seen)
        with self.client.get(
            f"{API}/listings/{listing_id}", name=f"{API}/listings/{{id}}", catch_response=True
        ) as response:
            expect(response, 200, "id", "price", "version")

    @task(2)
    def search(self) -> None:
        with self.client.get(
            f"{API}/listings",
            params={"q": random.choice(SEARCH_WORDS), "limit": "10"},
            name=f"{API}/listings?q",
            catch_response=True,
        ) as response:
            expect(response, 200, "items")

    @task(2)
    def like(self) -> None:
        if not self.seen:
            return
        listing_id = random.choice(self.seen)
        method = self.client.put if random.random() < 0.7 else self.client.delete
        with method(
            f"{API}/listings/{listing_id}/like",
            headers=self.auth,
            name=f"{API}/listings/{{id}}/like",
            catch_response=True,
        ) as response:
            expect(response, 204)

    @task(1)
    def sell(self) -> None:
        title, category, price = random.choice(THINGS)
        with self.client.post(
            f"{API}/listings",
            json={"title": title, "price": price, "category": category, "quantity": 3},
            headers={**self.auth, **JSON_HEADERS},
            catch_response=True,
        ) as response:
            expect(response, 201, "id", "version")

    @task(1)
    def buy(self) -> None:
        if not self.seen:
            return
        listing_id = random.choice(self.seen)
        with self.client.post(
            f"{API}/listings/{listing_id}/purchase",
            json={"quantity": 1},
            headers={**self.auth, **JSON_HEADERS, "Idempotency-Key": uuid.uuid4().hex},
            name=f"{API}/listings/{{id}}/purchase",
            catch_response=True,
        ) as response:
            if response.status_code == 409 and _problem_slug(response) in BUSY_MARKET:
                response.success()
            else:
                expect(response, 201, "id", "amount", "status")


SEARCH_WORDS = ("아이폰", "의자", "bike", "LEGO", "책", "패딩")
THINGS = (
    ("중고 의자 팝니다", "furniture", 15_000),
    ("아이폰 케이스", "digital", 8_000),
    ("Kids bike 16 inch", "kids", 45_000),
    ("소설책 묶음", "books", 12_000),
)
# Answers a purchase may get in a busy market without anything being wrong.
BUSY_MARKET = {
    "insufficient-stock",
    "listing-not-on-sale",
    "own-listing",
    "insufficient-funds",
    "purchase-conflict",
}


def _problem_slug(response: ResponseContextManager) -> str:
    try:
        return str(response.json().get("type", "")).rsplit("/", 1)[-1]
    except ValueError:
        return ""
