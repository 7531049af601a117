"""Debian's Chromium for the browser tests: found on PATH, or installed with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess

NAMES = ("chromium", "chromium-browser")
FONTS = ("fonts-noto-cjk", "fonts-noto-color-emoji")
# apt-get may have to wait for another apt process's lock, and fetch ~100 MB.
INSTALL_TIMEOUT_S = 900


def find_chromium() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def _apt_get(*args: str) -> tuple[bool, str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            ["apt-get", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"apt-get {' '.join(args)}: {exc}"
    return done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]


def install_chromium() -> tuple[str | None, str]:
    """Install Debian's chromium package; (its path or None, what apt-get said)."""
    said: list[str] = []
    for step in (("install", "-y", "chromium"), ("update",), ("install", "-y", "chromium")):
        ok, output = _apt_get(*step)
        said.append(f"$ apt-get {' '.join(step)}\n{output}")
        if step[0] == "install" and ok:
            break
    if find_chromium() is not None:
        # Best effort, for readable screenshots: Korean listing titles and category emoji.
        _apt_get("install", "-y", *FONTS)
    return find_chromium(), "\n".join(said)
