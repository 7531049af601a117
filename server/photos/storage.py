"""What a photo store must do; ``storage_local`` and ``storage_s3`` are the two implementations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UploadTicket:
    """A short-lived, signed request the client sends the photo bytes with."""

    url: str
    method: str
    expires_in: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What the store holds under a key: its size and its first bytes (for magic numbers)."""

    size: int
    head: bytes


class PhotoStorage(Protocol):
    async def upload_ticket(self, key: str, content_type: str, size: int) -> UploadTicket:
        """A signed upload for exactly this key, type and size."""
        ...

    async def inspect(self, key: str) -> StoredObject | None:
        """The stored object, or None when nothing was uploaded under ``key``."""
        ...

    def public_url(self, key: str) -> str:
        """A URL clients can GET the photo from."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object if there is one (abandoned uploads)."""
        ...
