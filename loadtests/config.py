"""Settings of the load tests, read once from ``JANGTEO_LOAD_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """Where the load goes, how many simulated users, and what they sign up with."""

    host: str = "http://127.0.0.1:8080"
    users: int = 50
    spawn_rate: float = 10.0
    wait_min: float = 0.5
    wait_max: float = 2.0
    region: str = "seoul-mapo"
    password: str = "load-test-password"  # noqa: S105 - the throwaway accounts' password
    email_domain: str = "load.example.com"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoadConfig:
        """Build the config from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(f"JANGTEO_LOAD_{name}", "").strip() or default

        config = cls(
            host=text("HOST", defaults.host).rstrip("/"),
            users=int(text("USERS", str(defaults.users))),
            spawn_rate=float(text("SPAWN_RATE", str(defaults.spawn_rate))),
            wait_min=float(text("WAIT_MIN", str(defaults.wait_min))),
            wait_max=float(text("WAIT_MAX", str(defaults.wait_max))),
            region=text("REGION", defaults.region),
            password=text("PASSWORD", defaults.password),
            email_domain=text("EMAIL_DOMAIN", defaults.email_domain),
        )
        if config.users < 1 or config.spawn_rate <= 0:
            raise ValueError("JANGTEO_LOAD_USERS and JANGTEO_LOAD_SPAWN_RATE must be positive")
        if not 0 <= config.wait_min <= config.wait_max:
            raise ValueError("need 0 <= JANGTEO_LOAD_WAIT_MIN <= JANGTEO_LOAD_WAIT_MAX")
        return config
