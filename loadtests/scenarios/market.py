"""The market a test starts with: a few hot listings that every buyer races for.

Created once per locust process when the test starts (``test_start``), by a seller
account of their own, on the first host; their ids and stock are recorded for the audit.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import requests
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner

from loadtests.scenarios.common import API, CONFIG, RECORDS, TIMEOUT

log = logging.getLogger(__name__)

HOT: list[int] = []  # the hot listings' ids, filled at test start
HOT_PRICE = 10_000


def create_hot_listings(host: str) -> list[int]:
    """Sign up a seller and list ``CONFIG.hot_listings`` items with ``CONFIG.hot_stock`` each."""
    session = requests.Session()
    session.trust_env = False
    account = {
        "email": f"load-hot-{uuid.uuid4().hex}@{CONFIG.email_domain}",
        "password": CONFIG.password,
        "nickname": "hot seller",
        "region": CONFIG.region,
    }
    response = session.post(f"{host}{API}/auth/signup", json=account, timeout=TIMEOUT)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    seller_id = int(body["user"]["id"])
    RECORDS.write("user", user_id=seller_id, role="hot-seller", host=host)
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    ids = []
    for number in range(CONFIG.hot_listings):
        listing: dict[str, Any] = {
            "title": f"한정판 굿즈 #{number + 1} (hot)",
            "description": "everybody wants one",
            "price": HOT_PRICE,
            "quantity": CONFIG.hot_stock,
            "category": "hobby",
        }
        response = session.post(
            f"{host}{API}/listings", json=listing, headers=headers, timeout=TIMEOUT
        )
        response.raise_for_status()
        listing_id = int(response.json()["id"])
        RECORDS.write(
            "listing", listing_id=listing_id, seller_id=seller_id, quantity=CONFIG.hot_stock
        )
        ids.append(listing_id)
    return ids


def _make_market(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the workers' users do the work, each worker makes its own market
    # JANGTEO_LOAD_HOSTS wins over --host, as it does for the users (common.MarketUser).
    host = CONFIG.host if CONFIG.hosts else (environment.host or CONFIG.host).rstrip("/")
    try:
        HOT[:] = create_hot_listings(host)
    except (requests.RequestException, KeyError, ValueError) as error:
        log.error("could not create the hot listings on %s: %r", host, error)
        HOT.clear()


events.test_start.add_listener(_make_market)  # type: ignore[no-untyped-call]
