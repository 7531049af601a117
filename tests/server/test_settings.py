"""Settings come from JANGTEO_* variables once, with clear errors for bad values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server.settings import RateLimit, Settings, SettingsError


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.data_dir == Path(".data")
    assert settings.database_url is None and settings.redis_url is None
    assert settings.purchase_strategy == "atomic"
    assert settings.access_token_ttl == 900
    assert settings.rate_limits_enabled is True


def test_values_are_read_and_typed() -> None:
    settings = Settings.from_env(
        {
            "JANGTEO_PORT": "9000",
            "JANGTEO_DATABASE_URL": "postgresql://db/x",
            "JANGTEO_RATE_LIMITS": "off",
            "JANGTEO_RATE_LIMIT_AUTH_IP": "5/10",
            "JANGTEO_PG_ACQUIRE_TIMEOUT": "1.5",
            "JANGTEO_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "JANGTEO_PURCHASE_STRATEGY": "redis_lock",
            "JANGTEO_REDIS_MODE": "cluster",
            "OTHER_VARIABLE": "ignored",
        }
    )
    assert settings.port == 9000
    assert settings.database_url == "postgresql://db/x"
    assert settings.rate_limits_enabled is False
    assert settings.rate_limit_auth_ip == RateLimit(5, 10)
    assert settings.pg_acquire_timeout == 1.5
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.purchase_strategy == "redis_lock"
    assert settings.redis_mode == "cluster"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("JANGTEO_PORT", "eighty", "must be an integer"),
        ("JANGTEO_REDIS_TIMEOUT", "soon", "must be a number"),
        ("JANGTEO_RATE_LIMITS", "maybe", "must be on or off"),
        ("JANGTEO_RATE_LIMIT_WRITES", "10", "hits/seconds"),
        ("JANGTEO_RATE_LIMIT_WRITES", "0/10", "must be positive"),
        ("JANGTEO_PURCHASE_STRATEGY", "yolo", "must be one of"),
        ("JANGTEO_REDIS_MODE", "sentinel", "must be one of single, cluster"),
    ],
)
def test_bad_values_are_refused(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({name: value})


def test_redis_breaker_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.redis_breaker, defaults.redis_breaker_failures) == (True, 3)
    assert defaults.redis_breaker_cooldown == 2.0
    changed = Settings.from_env(
        {
            "JANGTEO_REDIS_BREAKER": "off",
            "JANGTEO_REDIS_BREAKER_FAILURES": "5",
            "JANGTEO_REDIS_BREAKER_COOLDOWN": "0.5",
        }
    )
    assert (changed.redis_breaker, changed.redis_breaker_failures) == (False, 5)
    assert changed.redis_breaker_cooldown == 0.5
    with pytest.raises(SettingsError, match="must be a number"):
        Settings.from_env({"JANGTEO_REDIS_BREAKER_COOLDOWN": "soon"})


def test_jwt_secret_is_created_once_per_data_dir(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path).with_jwt_secret()
    second = Settings(data_dir=tmp_path).with_jwt_secret()
    assert len(first.jwt_secret) >= 48
    assert first.jwt_secret == second.jwt_secret
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o777 == 0o600
    given = Settings(data_dir=tmp_path, jwt_secret="given").with_jwt_secret()
    assert given.jwt_secret == "given"


def _changed(value: object) -> str:
    """A value for a variable that reads as something other than ``value``."""
    if isinstance(value, bool):
        return "off" if value else "on"
    if isinstance(value, int):
        return str(value + 1)
    if isinstance(value, float):
        # Smaller, so the relay's poll stays within its lock timeout; that one grows.
        return str(value * 0.75)
    if isinstance(value, RateLimit):
        return f"{value.limit + 1}/{value.window_seconds}"
    if isinstance(value, tuple):
        return "https://a.example"
    return "/elsewhere" if isinstance(value, Path) else "other"


def test_every_setting_is_read_from_its_own_variable() -> None:
    """Each field of Settings comes from one JANGTEO_* variable: its name in capitals,
    or the one it names; a value given there is what the field holds."""
    defaults = Settings()
    renamed = {"rate_limits_enabled": "RATE_LIMITS", "cache_enabled": "CACHE"}
    special = {
        "purchase_strategy", "redis_mode", "trusted_proxies", "log_level", "event_retention",
        "otel_endpoint",
    }  # fmt: skip
    for field in dataclasses.fields(Settings):
        name = "JANGTEO_" + renamed.get(field.name, field.name.upper())
        if field.name in special:
            continue
        default = getattr(defaults, field.name)
        changed = str(default + 1) if field.name == "relay_lock_timeout" else _changed(default)
        read = getattr(Settings.from_env({name: changed}), field.name)
        assert read != default, name
