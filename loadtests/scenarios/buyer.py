"""Buyer: tops up the wallet, races everybody for the hot listings, settles orders.

Every money-moving POST carries an ``Idempotency-Key``; when a request gets no answer
(a network error, 503, or the key still in flight) it is sent again with the SAME key,
so a purchase that did go through is answered with its order instead of buying twice.
Each 201 is recorded (``order``) for the audit; a purchase that never got an answer is
recorded as ``purchase_unresolved`` (an order may or may not exist for it).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

import gevent
from locust import task
from locust.clients import ResponseContextManager

from loadtests.config import BUSY_MARKET
from loadtests.scenarios.common import (
    API,
    CONFIG,
    RECORDS,
    TIMEOUT,
    MarketUser,
    expect,
    fail,
    problem_slug,
    retryable,
    succeed,
)
from loadtests.scenarios.market import HOT

ATTEMPTS = 4
TOPUP = 1_000_000


class Buyer(MarketUser):
    weight = CONFIG.weights["buyer"]
    role = "buyer"

    def on_start(self) -> None:
        super().on_start()
        self.top_up()

    def send_once(
        self,
        path: str,
        name: str,
        payload: dict[str, Any] | None,
        judge: Callable[[ResponseContextManager], dict[str, Any] | None],
    ) -> tuple[bool, dict[str, Any] | None]:
        """POST with one Idempotency-Key, again with the same key while there is no answer.

        Returns (answered, what ``judge`` made of the answer).
        """
        base = self.auth if payload is None else self.auth_json
        headers = {**base, "Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(ATTEMPTS):
            with self.client.post(
                f"{API}{path}",
                json=payload,
                headers=headers,
                name=f"{API}{name}",
                catch_response=True,
                timeout=TIMEOUT,
            ) as response:
                if retryable(response) and attempt + 1 < ATTEMPTS:
                    fail(response, f"no answer ({response.status_code}); same key again")
                    gevent.sleep(0.2 * (attempt + 1))
                    continue
                if retryable(response):
                    fail(response, f"no answer after {ATTEMPTS} attempts")
                    return False, None
                return True, judge(response)
        return False, None

    def top_up(self) -> None:
        self.send_once(
            "/wallet/topup", "/wallet/topup", {"amount": TOPUP}, lambda r: expect(r, 200, "balance")
        )

    def buy(self, listing_id: int) -> None:
        funds = False

        def judge(response: ResponseContextManager) -> dict[str, Any] | None:
            nonlocal funds
            slug = problem_slug(response) if response.status_code == 409 else ""
            if slug in BUSY_MARKET:
                funds = slug == "insufficient-funds"
                succeed(response)  # sold out, or lost the race: the market, not a fault
                return None
            return expect(response, 201, "id", "amount", "status")

        answered, order = self.send_once(
            f"/listings/{listing_id}/purchase",
            "/listings/{id}/purchase",
            {"quantity": 1},
            judge,
        )
        if order is not None:
            RECORDS.write(
                "order",
                order_id=int(order["id"]),
                buyer_id=self.user_id,
                listing_id=listing_id,
                quantity=int(order["quantity"]),
                amount=int(order["amount"]),
            )
        elif not answered:
            RECORDS.write("purchase_unresolved", buyer_id=self.user_id, listing_id=listing_id)
        if funds:
            self.top_up()

    @task(6)
    def race(self) -> None:
        if HOT:
            self.buy(random.choice(HOT))

    @task(2)
    def bargain(self) -> None:
        listings = self.others_listings()
        if listings:
            self.buy(random.choice(listings))

    @task(2)
    def settle(self) -> None:
        """Confirm receipt of a paid order (escrow to the seller), or now and then cancel."""
        with self.client.get(
            f"{API}/orders",
            params={"role": "buyer"},
            headers=self.auth,
            name=f"{API}/orders?role=buyer",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            body = expect(response, 200, "items")
        paid = [order for order in (body or {}).get("items", []) if order["status"] == "paid"]
        if not paid:
            return
        order_id = random.choice(paid)["id"]
        action = "complete" if random.random() < 0.75 else "cancel"
        self.send_once(
            f"/orders/{order_id}/{action}",
            f"/orders/{{id}}/{action}",
            None,
            lambda r: expect(r, 200, "status"),
        )

    @task(1)
    def wallet(self) -> None:
        with self.client.get(
            f"{API}/wallet", headers=self.auth, catch_response=True, timeout=TIMEOUT
        ) as response:
            expect(response, 200, "balance")
