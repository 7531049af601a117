"""Settings of the load tests, read once from ``JANGTEO_LOAD_*`` environment variables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# The user classes of loadtests/scenarios, as named in JANGTEO_LOAD_WEIGHT_<NAME>.
USER_KINDS = ("browser", "watcher", "buyer", "seller", "chatter", "account")
# Answers a purchase may get in a busy market without anything being wrong (the last
# part of the problem's ``type``).
BUSY_MARKET = frozenset(
    {
        "insufficient-stock",
        "listing-not-on-sale",
        "own-listing",
        "insufficient-funds",
        "purchase-conflict",
    }
)


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``2m``, ``1h30m`` (locust's ``-t`` syntax)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"a duration looks like 60, 60s, 2m or 1h30m, got {text!r}")
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(number) * units[unit] for number, unit in parts)


def parse_limits(text: str) -> dict[str, float]:
    """``"POST /api/v1/listings/{id}/purchase=8000, WS connect=3000"`` -> {name: ms}."""
    limits: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.rpartition("=")
        if not name:
            raise ValueError(f"a p95 limit looks like 'GET /api/v1/me=500', got {item!r}")
        limits[name.strip()] = float(value)
    return limits


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """Where the load goes, who makes it, how long, and what a passing run must show."""

    host: str = "http://127.0.0.1:8080"
    # Every instance behind ``host`` that users may be spread over (default: host alone).
    hosts: tuple[str, ...] = ()
    users: int = 50
    spawn_rate: float = 10.0
    wait_min: float = 0.5
    wait_max: float = 2.0
    region: str = "seoul-mapo"
    password: str = "load-test-password"  # noqa: S105 - the throwaway accounts' password
    email_domain: str = "load.example.com"
    # The mix: relative number of users of each kind (0 leaves a kind out). Mostly
    # people reading and watching, as in a real market.
    weights: dict[str, int] = field(
        default_factory=lambda: {
            "browser": 10,
            "watcher": 4,
            "buyer": 3,
            "seller": 2,
            "chatter": 2,
            "account": 1,
        }
    )
    hot_listings: int = 3  # listings every buyer races for, created when the test starts
    hot_stock: int = 20  # quantity of each: they sell out within a minute
    records_dir: str = ""  # where users write what they saw, for the audit (empty: nowhere)
    drain: float = 3.0  # seconds sockets keep reading after the load stops
    # make loadtest (loadtests/run_loadtest.py)
    duration: float = 60.0
    # locust workers under one master (0: one locust process, no master)
    workers: int = 0
    max_failure_ratio: float = 0.02
    max_p95_ms: float = 5000.0  # for every request type, unless p95_limits names it
    # Password hashing (argon2id) is slow on purpose, and every user signs up while
    # the load ramps up: those requests queue for the CPU.
    p95_limits: dict[str, float] = field(
        default_factory=lambda: {
            "POST /api/v1/auth/signup": 20_000.0,
            "POST /api/v1/auth/login": 20_000.0,
        }
    )
    min_rps: float = 5.0
    database: str = "jangteo_loadtest"

    @property
    def all_hosts(self) -> tuple[str, ...]:
        return self.hosts or (self.host,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoadConfig:
        """Build the config from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(f"JANGTEO_LOAD_{name}", "").strip() or default

        def number(name: str, default: float) -> float:
            return float(text(name, str(default)))

        def integer(name: str, default: int) -> int:
            return int(text(name, str(default)))

        hosts = tuple(h.strip().rstrip("/") for h in text("HOSTS", "").split(",") if h.strip())
        weights = {
            kind: integer(f"WEIGHT_{kind.upper()}", default)
            for kind, default in defaults.weights.items()
        }
        config = cls(
            host=text("HOST", hosts[0] if hosts else defaults.host).rstrip("/"),
            hosts=hosts,
            users=integer("USERS", defaults.users),
            spawn_rate=number("SPAWN_RATE", defaults.spawn_rate),
            wait_min=number("WAIT_MIN", defaults.wait_min),
            wait_max=number("WAIT_MAX", defaults.wait_max),
            region=text("REGION", defaults.region),
            password=text("PASSWORD", defaults.password),
            email_domain=text("EMAIL_DOMAIN", defaults.email_domain),
            weights=weights,
            hot_listings=integer("HOT_LISTINGS", defaults.hot_listings),
            hot_stock=integer("HOT_STOCK", defaults.hot_stock),
            records_dir=text("RECORDS_DIR", ""),
            drain=number("DRAIN", defaults.drain),
            duration=parse_duration(text("DURATION", "60s")),
            workers=integer("WORKERS", defaults.workers),
            max_failure_ratio=number("MAX_FAILURE_RATIO", defaults.max_failure_ratio),
            max_p95_ms=number("MAX_P95_MS", defaults.max_p95_ms),
            p95_limits={**defaults.p95_limits, **parse_limits(text("P95_LIMITS", ""))},
            min_rps=number("MIN_RPS", defaults.min_rps),
            database=text("DATABASE", defaults.database),
        )
        config.check()
        return config

    def check(self) -> None:
        if self.users < 1 or self.spawn_rate <= 0:
            raise ValueError("JANGTEO_LOAD_USERS and JANGTEO_LOAD_SPAWN_RATE must be positive")
        if not 0 <= self.wait_min <= self.wait_max:
            raise ValueError("need 0 <= JANGTEO_LOAD_WAIT_MIN <= JANGTEO_LOAD_WAIT_MAX")
        if any(weight < 0 for weight in self.weights.values()) or not any(self.weights.values()):
            raise ValueError("JANGTEO_LOAD_WEIGHT_* must be >= 0, and one of them > 0")
        if self.hot_listings < 1 or not 1 <= self.hot_stock <= 10_000:
            raise ValueError("need JANGTEO_LOAD_HOT_LISTINGS >= 1, 1 <= HOT_STOCK <= 10000")
        if self.workers < 0:
            raise ValueError("JANGTEO_LOAD_WORKERS must be >= 0")
        if self.duration <= 0 or self.drain < 0:
            raise ValueError("JANGTEO_LOAD_DURATION must be positive, JANGTEO_LOAD_DRAIN >= 0")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database):
            raise ValueError("JANGTEO_LOAD_DATABASE must be a plain lower-case identifier")
