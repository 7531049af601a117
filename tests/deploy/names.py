"""What the deployment files must agree with: setting names, defaults, routes, repo paths."""

from __future__ import annotations

import itertools
import shlex
from functools import cache
from pathlib import Path
from typing import Any

from jangteo.app import create_app
from loadtests.config import LoadConfig
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# What jangteo needs of the PostgreSQL server it runs on (as the embedded one starts):
# commit timestamps, so that an event's `ts` is its commit time.
POSTGRES_SERVER_SETTINGS = {"track_commit_timestamp": "on"}
_POSTGRES_TRUE = frozenset({"on", "true", "yes", "1"})


def postgres_options(command: list[str] | str) -> dict[str, str]:
    """The settings a ``postgres`` command line passes: ``-c name=value``, ``--name=value``."""
    words = shlex.split(command) if isinstance(command, str) else [str(word) for word in command]
    assignments = [word for flag, word in itertools.pairwise(words) if flag == "-c"]
    assignments += [word[2:] for word in words if word.startswith("--") and "=" in word]
    return {
        name.strip().replace("-", "_"): value.strip()
        for name, _, value in (assignment.partition("=") for assignment in assignments)
    }


def postgres_value_matches(value: str | None, wanted: str) -> bool:
    """PostgreSQL's spellings of one value: ``on``, ``true``, ``yes`` and ``1`` are alike."""
    if value is None:
        return False
    value, wanted = value.strip().strip("'\"").lower(), wanted.lower()
    return value == wanted or {value, wanted} <= _POSTGRES_TRUE


class _AskedFor(dict[str, str]):
    """An empty environment that remembers every name it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


@cache
def setting_names() -> frozenset[str]:
    """Every ``JANGTEO_*`` name the server reads: asked of Settings itself, never listed."""
    env = _AskedFor()
    Settings.from_env(env)
    return frozenset(name for name in env.asked if name.startswith("JANGTEO_"))


@cache
def load_setting_names() -> frozenset[str]:
    """Every ``JANGTEO_LOAD_*`` name the locust users read (loadtests/config.py)."""
    env = _AskedFor()
    LoadConfig.from_env(env)
    return frozenset(name for name in env.asked if name.startswith("JANGTEO_LOAD_"))


@cache
def app_paths() -> frozenset[str]:
    """Paths the app routes, so a probe cannot name one that does not exist."""
    app = create_app(Settings(jwt_secret="route-listing-only-" + "x" * 32))
    return frozenset(
        resource.canonical for resource in app.router.resources() if resource.canonical
    )


def settings_from(env: dict[str, str]) -> Settings:
    """Settings as a deployment's environment makes them (raises on a bad value)."""
    return Settings.from_env(env)


def seconds(text: str | int | float) -> float:
    """``25s``, ``1m30s``, ``1h``, ``90`` -> seconds (compose and nginx durations)."""
    value = str(text).strip()
    if value.replace(".", "", 1).isdigit():
        return float(value)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    total, number = 0.0, ""
    index = 0
    while index < len(value):
        char = value[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if value.startswith("ms", index) else char
        if unit not in units or not number:
            raise ValueError(f"not a duration: {text!r}")
        total += float(number) * units[unit]
        number = ""
        index += len(unit)
    if number:
        raise ValueError(f"not a duration: {text!r}")
    return total


def size_bytes(text: str) -> int:
    """nginx sizes: ``1m``, ``512k``, ``2048`` -> bytes."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = text.strip().lower()
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)
