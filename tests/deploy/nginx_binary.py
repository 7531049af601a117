"""Debian's nginx binary, for ``nginx -t`` only (no server is ever started)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = "nginx"


def installed_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def find_or_install_nginx() -> str:
    """The nginx on this machine, else installed with apt-get (the test set-up is root)."""
    found = installed_nginx()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"nginx is not installed; run: sudo apt-get install -y {PACKAGE}")
    # RUNLEVEL=1: the package's post-install script must not start a server on port 80.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]
    outputs = []
    for command in (install, ["apt-get", "update"], install):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=540, check=False
        )
        outputs.append(f"$ {' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        if command is install and result.returncode == 0:
            break
    found = installed_nginx()
    if not found:
        pytest.fail("could not install nginx for `nginx -t`:\n" + "\n".join(outputs))
    return found


def nginx_test(binary: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``config``; ``-p`` and ``-e`` keep it away from nginx's own paths."""
    return subprocess.run(
        [binary, "-t", "-q", "-e", "stderr", "-p", str(config.parent), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
