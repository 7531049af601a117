"""Seller: lists things and drops their prices (PATCH with ``If-Match`` from the ETag).

A seller never changes a quantity, so the audit can hold every listing's stock to the
quantity it was created with minus what was sold (recorded as ``listing``).
"""

from __future__ import annotations

import random

from locust import task

from loadtests.scenarios.common import (
    API,
    CONFIG,
    RECORDS,
    TIMEOUT,
    MarketUser,
    expect,
    succeed,
)

THINGS = (
    ("중고 의자 팝니다", "furniture", 15_000),
    ("아이폰 케이스", "digital", 8_000),
    ("Kids bike 16 inch", "kids", 45_000),
    ("소설책 묶음", "books", 12_000),
    ("겨울 패딩", "fashion", 30_000),
    ("LEGO 세트", "hobby", 25_000),
)


class Seller(MarketUser):
    weight = CONFIG.weights["seller"]
    role = "seller"

    mine: list[int]

    def on_start(self) -> None:
        super().on_start()
        self.mine = []
        self.sell()

    @task(2)
    def sell(self) -> None:
        title, category, price = random.choice(THINGS)
        quantity = random.randint(1, 5)
        with self.client.post(
            f"{API}/listings",
            json={"title": title, "price": price, "category": category, "quantity": quantity},
            headers=self.auth_json,
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            body = expect(response, 201, "id", "version")
        if body is not None:
            listing_id = int(body["id"])
            self.mine.append(listing_id)
            RECORDS.write(
                "listing", listing_id=listing_id, seller_id=self.user_id, quantity=quantity
            )

    @task(4)
    def drop_price(self) -> None:
        """Read the listing, then lower its price if nobody changed it in between."""
        if not self.mine:
            return
        listing_id = random.choice(self.mine[-10:])
        with self.client.get(
            f"{API}/listings/{listing_id}",
            name=f"{API}/listings/{{id}}",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            body = expect(response, 200, "price", "status")
            etag = response.headers.get("ETag", "")
        if body is None or body["status"] != "on_sale":
            return
        price = max(1_000, int(body["price"] * 0.9) // 100 * 100)
        with self.client.patch(
            f"{API}/listings/{listing_id}",
            json={"price": price},
            headers={**self.auth_json, "If-Match": etag},
            name=f"{API}/listings/{{id}} (price drop)",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            if response.status_code == 412:
                succeed(response)  # a buyer took stock in between: the ETag went stale
            else:
                expect(response, 200, "price", "version")

    @task(1)
    def sales(self) -> None:
        with self.client.get(
            f"{API}/orders",
            params={"role": "seller"},
            headers=self.auth,
            name=f"{API}/orders?role=seller",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            expect(response, 200, "items")
