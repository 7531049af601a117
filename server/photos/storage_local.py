"""Photos on local disk, uploaded through HMAC-signed URLs that jangteo serves itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import time
import uuid
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

from server.errors import BadRequest, Forbidden, PayloadTooLarge
from server.photos.formats import CONTENT_TYPE_OF_EXTENSION, HEAD_BYTES
from server.photos.storage import StoredObject, UploadTicket

UPLOAD_PATH = "/api/v1/uploads/"
PUBLIC_PATH = "/photos/"
# Keys are chosen by the service; anything else is refused before it can touch a path.
KEY_PATTERN = re.compile(r"^listings/[0-9]{1,19}/[0-9a-f]{32}\.(?:jpg|png|webp)$")
# Upload bodies are buffered up to this much before each write in a worker thread.
_WRITE_BATCH = 1024 * 1024


class InvalidUploadSignature(Forbidden):
    slug, title = "invalid-upload-signature", "Upload URL is not valid"


class UploadExpired(Forbidden):
    slug, title = "upload-expired", "Upload URL has expired"


@dataclass(frozen=True, slots=True)
class UploadGrant:
    """What a valid signed upload URL allows: exactly this key, type and size."""

    key: str
    content_type: str
    size: int


def derive_upload_secret(jwt_secret: str) -> bytes:
    """A key of its own for upload URLs, so an upload signature is never a token signature."""
    return hmac.new(jwt_secret.encode(), b"jangteo/photo-uploads/v1", hashlib.sha256).digest()


class LocalPhotoStorage:
    """Files under ``root`` named by their keys; uploads are checked against a signed grant."""

    def __init__(
        self,
        root: Path,
        secret: bytes,
        ticket_ttl: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self._secret = secret
        self._ticket_ttl = ticket_ttl
        self._clock = clock

    def _signature(self, key: str, expires: int, content_type: str, size: int) -> str:
        message = f"{key}|{expires}|{content_type}|{size}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def upload_ticket(self, key: str, content_type: str, size: int) -> UploadTicket:
        if not KEY_PATTERN.match(key):
            raise ValueError(f"not a photo key: {key!r}")
        expires = int(self._clock()) + self._ticket_ttl
        query = urlencode(
            {
                "expires": expires,
                "type": content_type,
                "size": size,
                "sig": self._signature(key, expires, content_type, size),
            }
        )
        return UploadTicket(
            url=f"{UPLOAD_PATH}{quote(key)}?{query}",
            method="PUT",
            expires_in=self._ticket_ttl,
            headers={"Content-Type": content_type},
        )

    def check_grant(self, key: str, query: Mapping[str, str]) -> UploadGrant:
        """The grant a signed upload URL carries; 403 when forged, altered or expired."""
        try:
            expires = int(query["expires"])
            content_type = query["type"]
            size = int(query["size"])
            signature = query["sig"]
        except (KeyError, ValueError):
            raise InvalidUploadSignature("expires, type, size and sig are required") from None
        expected = self._signature(key, expires, content_type, size)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise InvalidUploadSignature()
        if not KEY_PATTERN.match(key):
            raise InvalidUploadSignature()
        if expires < self._clock():
            raise UploadExpired("ask for a new upload URL")
        return UploadGrant(key, content_type, size)

    async def receive(
        self,
        grant: UploadGrant,
        *,
        content_type: str,
        content_length: int | None,
        chunks: AsyncIterable[bytes],
    ) -> None:
        """Store exactly ``grant.size`` bytes of ``grant.content_type`` under ``grant.key``.

        The body goes to a temporary file renamed into place only when complete, so a
        reader never sees half a photo.
        """
        if content_type != grant.content_type:
            raise BadRequest(f"send Content-Type: {grant.content_type}")
        if content_length is not None and content_length > grant.size:
            raise PayloadTooLarge(f"this upload takes exactly {grant.size} bytes")
        if content_length is not None and content_length < grant.size:
            raise BadRequest(f"this upload takes exactly {grant.size} bytes")
        path = self.path_of(grant.key)
        assert path is not None  # check_grant matched the key already
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        handle = await asyncio.to_thread(temp.open, "wb")
        try:
            await self._copy(chunks, handle, grant.size)
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, temp, path)
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    @staticmethod
    async def _copy(chunks: AsyncIterable[bytes], handle: BinaryIO, size: int) -> None:
        received = 0
        batch: list[bytes] = []
        batched = 0
        async for chunk in chunks:
            received += len(chunk)
            if received > size:
                raise PayloadTooLarge(f"this upload takes exactly {size} bytes")
            batch.append(chunk)
            batched += len(chunk)
            if batched >= _WRITE_BATCH:
                await asyncio.to_thread(handle.write, b"".join(batch))
                batch, batched = [], 0
        if received != size:
            raise BadRequest(f"this upload takes exactly {size} bytes, got {received}")
        if batch:
            await asyncio.to_thread(handle.write, b"".join(batch))

    async def inspect(self, key: str) -> StoredObject | None:
        path = self.path_of(key)
        if path is None:
            return None
        return await asyncio.to_thread(_read_head, path)

    def public_url(self, key: str) -> str:
        return f"{PUBLIC_PATH}{quote(key)}"

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        if path is not None:
            path.unlink(missing_ok=True)

    def path_of(self, key: str) -> Path | None:
        """Where ``key`` lives on disk; None for anything that is not a photo key."""
        if not KEY_PATTERN.match(key):
            return None
        return self.root / key

    @staticmethod
    def content_type_of(key: str) -> str:
        return CONTENT_TYPE_OF_EXTENSION[key.rsplit(".", 1)[-1]]


def _read_head(path: Path) -> StoredObject | None:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return StoredObject(size=size, head=handle.read(HEAD_BYTES))
    except (FileNotFoundError, NotADirectoryError):
        return None
