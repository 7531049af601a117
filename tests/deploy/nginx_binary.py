"""Debian's nginx binary, for ``nginx -t`` only (no server is ever started)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from server.embedded.debian import PackageMissing, ensure_binary


def find_or_install_nginx() -> str:
    """The nginx on this machine, else installed with apt-get (the test set-up is root)."""
    try:
        return ensure_binary(["nginx"], "nginx")
    except PackageMissing as missing:
        pytest.fail(str(missing))


def nginx_test(binary: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``config``; ``-p`` and ``-e`` keep it away from nginx's own paths."""
    return subprocess.run(
        [binary, "-t", "-q", "-e", "stderr", "-p", str(config.parent), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
