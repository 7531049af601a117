"""The image types a listing photo may have: their file extensions and magic numbers."""

from __future__ import annotations

from typing import Final, Literal, get_args

PhotoContentType = Literal["image/jpeg", "image/png", "image/webp"]
CONTENT_TYPES: Final[tuple[str, ...]] = get_args(PhotoContentType)

EXTENSIONS: Final[dict[str, str]] = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
CONTENT_TYPE_OF_EXTENSION: Final[dict[str, str]] = {ext: ct for ct, ext in EXTENSIONS.items()}

# How many leading bytes are enough to recognise every type below.
HEAD_BYTES: Final = 16


def has_magic_number(content_type: str, head: bytes) -> bool:
    """True when ``head`` (the object's first bytes) starts the way ``content_type`` must."""
    if content_type == "image/jpeg":
        return head.startswith(b"\xff\xd8\xff")
    if content_type == "image/png":
        return head.startswith(b"\x89PNG\r\n\x1a\n")
    if content_type == "image/webp":
        # RIFF container: "RIFF", 4 bytes of little-endian length, then "WEBP".
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return False
