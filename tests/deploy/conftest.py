"""Fixtures for the deployment checks: the files, parsed, and an nginx binary for ``-t``."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.names import ROOT
from tests.deploy.nginx_binary import find_or_install_nginx


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """Debian's nginx for ``nginx -t``, installed with apt-get when missing."""
    return find_or_install_nginx()
