"""Debian's Chromium for the browser tests: found on PATH, or installed with apt-get."""

from __future__ import annotations

from server.embedded.debian import apt_get, find_binary, install

NAMES = ("chromium", "chromium-browser")
FONTS = ("fonts-noto-cjk", "fonts-noto-color-emoji")


def find_chromium() -> str | None:
    return find_binary(*NAMES)


def install_chromium() -> tuple[str | None, str]:
    """Install Debian's chromium package; (its path or None, what apt-get said)."""
    said = install(["chromium"])
    if find_chromium() is not None:
        # Best effort, for readable screenshots: Korean listing titles and category emoji.
        apt_get("install", "-y", *FONTS)
    return find_chromium(), said
