"""What every simulated user shares: the config, response checks, accounts, records, hosts.

Records: when ``JANGTEO_LOAD_RECORDS_DIR`` is set, each locust process appends what its
users saw (orders they were answered 201 for, acked chat messages, every event frame of
every socket) to ``records-<host>-<pid>.jsonl`` there, one JSON object a line, for the
audit of ``loadtests/audit.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import IO, Any

from locust import HttpUser, between
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.exception import StopUser

from loadtests.config import LoadConfig

CONFIG = LoadConfig.from_env()
API = "/api/v1"
JSON_HEADERS = {"Content-Type": "application/json"}
TIMEOUT = 30.0  # seconds per HTTP request


class Records:
    """This process's records file (opened on first use); a write is one line, whole."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.file: IO[bytes] | None = None

    def write(self, kind: str, **fields: Any) -> None:
        if not self.directory:
            return
        if self.file is None:
            path = Path(self.directory) / f"records-{socket.gethostname()}-{os.getpid()}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = path.open("ab")
        # One write per line: greenlets never interleave inside it.
        line = json.dumps({"kind": kind, **fields}, separators=(",", ":")) + "\n"
        self.file.write(line.encode())
        self.file.flush()


RECORDS = Records(CONFIG.records_dir)
_NEXT_HOST = itertools.count()


def next_host() -> str:
    """The instances of ``JANGTEO_LOAD_HOSTS`` in turn, so users spread evenly."""
    hosts = CONFIG.all_hosts
    return hosts[next(_NEXT_HOST) % len(hosts)]


def now_ms() -> float:
    return time.time() * 1000.0


def fail(response: ResponseContextManager, reason: str) -> None:
    """Count ``response`` as a failure in locust's statistics."""
    response.failure(reason)  # type: ignore[no-untyped-call]  # unannotated in locust


def succeed(response: ResponseContextManager) -> None:
    response.success()  # type: ignore[no-untyped-call]  # unannotated in locust


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
    succeed(response)
    return body


def problem_slug(response: ResponseContextManager) -> str:
    """The last part of a problem+json ``type`` ("insufficient-stock"), else ""."""
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("type", "")).rsplit("/", 1)[-1] if isinstance(body, dict) else ""


def retryable(response: ResponseContextManager) -> bool:
    """No answer, 503, or the same idempotency key still in flight: send it again."""
    code = response.status_code
    return not code or code == 503 or problem_slug(response) == "idempotency-key-in-flight"


class MarketUser(HttpUser):
    """A signed-up neighbour on one of the instances; the base of every scenario user."""

    abstract = True
    host = CONFIG.host
    wait_time = between(CONFIG.wait_min, CONFIG.wait_max)

    role = "user"
    user_id: int
    email: str
    access_token: str
    refresh_token: str

    def __init__(self, environment: Environment) -> None:
        if CONFIG.hosts:
            self.host = next_host()  # before HttpUser makes its session for self.host
        super().__init__(environment)  # type: ignore[no-untyped-call]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    @property
    def auth_json(self) -> dict[str, str]:
        return {**self.auth, **JSON_HEADERS}

    def on_start(self) -> None:
        self.sign_up()

    def sign_up(self) -> None:
        self.email = f"load-{uuid.uuid4().hex}@{CONFIG.email_domain}"
        payload = {
            "email": self.email,
            "password": CONFIG.password,
            "nickname": f"load {self.role}",
            "region": CONFIG.region,
        }
        with self.client.post(
            f"{API}/auth/signup",
            json=payload,
            headers=JSON_HEADERS,
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            body = expect(response, 201, "user", "access_token", "refresh_token")
        if body is None:
            raise StopUser()
        self.user_id = int(body["user"]["id"])
        self.keep_tokens(body)
        RECORDS.write("user", user_id=self.user_id, role=self.role, host=self.host)

    def keep_tokens(self, body: dict[str, Any]) -> None:
        self.access_token = str(body["access_token"])
        self.refresh_token = str(body["refresh_token"])

    def feed_page(self, cursor: str | None = None) -> dict[str, Any] | None:
        params = {"region": CONFIG.region}
        if cursor:
            params["cursor"] = cursor
        with self.client.get(
            f"{API}/listings",
            params=params,
            name=f"{API}/listings?region" + ("&cursor" if cursor else ""),
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            return expect(response, 200, "items", "next_cursor")

    def others_listings(self) -> list[int]:
        """Ids on the first feed page that are on sale and not this user's own."""
        body = self.feed_page()
        if not body:
            return []
        return [
            int(item["id"])
            for item in body["items"]
            if item["seller_id"] != self.user_id and item["status"] == "on_sale"
        ]
