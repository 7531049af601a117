"""Account: a signed-in person who mostly reads ``/me`` and rotates tokens now and then."""

from __future__ import annotations

from locust import task

from loadtests.scenarios.common import API, CONFIG, JSON_HEADERS, TIMEOUT, MarketUser, expect, fail


class Account(MarketUser):
    weight = CONFIG.weights["account"]
    role = "account"

    @task(10)
    def me(self) -> None:
        with self.client.get(
            f"{API}/me", headers=self.auth, catch_response=True, timeout=TIMEOUT
        ) as response:
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
            timeout=TIMEOUT,
        ) as response:
            body = expect(response, 200, "access_token", "refresh_token")
        if body is None:
            self.login()  # the session is gone; start another so later tasks mean something
            return
        self.keep_tokens(body)

    @task(1)
    def login(self) -> None:
        payload = {"email": self.email, "password": CONFIG.password}
        with self.client.post(
            f"{API}/auth/login",
            json=payload,
            headers=JSON_HEADERS,
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            body = expect(response, 200, "access_token", "refresh_token", "expires_in")
        if body is not None:
            self.keep_tokens(body)
