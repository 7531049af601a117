"""docker-compose.yml's services as the apps see them: interpolated environments, roles."""

from __future__ import annotations

import re
from typing import Any

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: object) -> str:
    """Compose's ``${NAME:-default}`` with nothing set in the environment: the default."""
    return _VARIABLE.sub(
        lambda match: "$" if match.group(0) == "$$" else (match.group(2) or ""), str(value)
    )


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either of compose's two spellings."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(name): interpolate(value) for name, value in raw.items()}


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The jangteo replicas: built from this repository and running the image's default."""
    return {
        name: service
        for name, service in services.items()
        if service.get("build") == "." and "command" not in service
    }


def is_locust(service: dict[str, Any]) -> bool:
    return "load" in service.get("profiles", [])
