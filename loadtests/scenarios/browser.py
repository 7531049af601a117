"""Browser: pages through the neighbourhood feed, opens listings, searches, likes."""

from __future__ import annotations

import random

from locust import task

from loadtests.scenarios.common import API, CONFIG, TIMEOUT, MarketUser, expect, succeed
from loadtests.scenarios.market import HOT

SEARCH_WORDS = ("아이폰", "의자", "bike", "LEGO", "책", "패딩", "굿즈")


class Browser(MarketUser):
    weight = CONFIG.weights["browser"]
    role = "browser"

    seen: list[int]
    etags: dict[int, str]

    def on_start(self) -> None:
        super().on_start()  # an account: likes need one, reading does not
        self.seen = []
        self.etags = {}

    def pick(self) -> int | None:
        choices = self.seen + HOT
        return random.choice(choices) if choices else None

    @task(10)
    def feed(self) -> None:
        body = self.feed_page()
        if not body:
            return
        self.seen = [int(item["id"]) for item in body["items"]][:20] or self.seen
        if body["next_cursor"] and random.random() < 0.3:
            self.feed_page(body["next_cursor"])

    @task(8)
    def listing(self) -> None:
        listing_id = self.pick()
        if listing_id is None:
            return
        headers = {}
        if listing_id in self.etags and random.random() < 0.5:
            headers["If-None-Match"] = self.etags[listing_id]  # an app refreshing a screen
        with self.client.get(
            f"{API}/listings/{listing_id}",
            headers=headers,
            name=f"{API}/listings/{{id}}",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            if headers and response.status_code == 304:
                succeed(response)
                return
            if expect(response, 200, "id", "price", "version") is not None:
                self.etags[listing_id] = response.headers.get("ETag", "")

    @task(2)
    def search(self) -> None:
        with self.client.get(
            f"{API}/listings",
            params={"q": random.choice(SEARCH_WORDS), "limit": "10"},
            name=f"{API}/listings?q",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            expect(response, 200, "items")

    @task(2)
    def like(self) -> None:
        listing_id = self.pick()
        if listing_id is None:
            return
        method = self.client.put if random.random() < 0.7 else self.client.delete
        with method(
            f"{API}/listings/{listing_id}/like",
            headers=self.auth,
            name=f"{API}/listings/{{id}}/like",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            expect(response, 204)
