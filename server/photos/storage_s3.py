"""Photos in an S3 bucket (MinIO, AWS, moto): presigned uploads straight from the client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from server.errors import ServiceUnavailable
from server.photos.formats import HEAD_BYTES
from server.photos.storage import StoredObject, UploadTicket
from server.settings import Settings

log = logging.getLogger(__name__)

# SigV4 presigned URLs live at most 7 days.
PUBLIC_URL_TTL = 7 * 24 * 3600
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_BUCKET_EXISTS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


class StorageUnavailable(ServiceUnavailable):
    slug, title = "storage-unavailable", "Photo storage is unavailable"


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """S3 unreachable, too slow or failing on its side: a 503, not a 500."""
    try:
        yield
    except (BotoConnectionError, HTTPClientError) as error:
        log.warning("s3 unavailable", extra={"error": str(error)})
        raise StorageUnavailable("s3 is unavailable") from None
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if int(status) >= 500:
            log.warning("s3 failed", extra={"error": str(error)})
            raise StorageUnavailable("s3 is unavailable") from None
        raise


def _config(settings: Settings, config_class: type[Config]) -> Config:
    return config_class(
        connect_timeout=settings.s3_timeout,
        read_timeout=settings.s3_timeout,
        retries={"total_max_attempts": 3, "mode": "standard"},
        signature_version="s3v4",
        # Path style works with MinIO and moto, and with bucket names containing dots.
        s3={"addressing_style": "path"},
    )


def _client_arguments(settings: Settings) -> dict[str, Any]:
    return {
        "endpoint_url": settings.s3_endpoint,
        "region_name": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key,
        "aws_secret_access_key": settings.s3_secret_key,
    }


def _signing_client(settings: Settings) -> Any:
    """A synchronous botocore client used only to presign URLs, which needs no network.

    ``public_url`` is synchronous (listing representations call it per photo), and
    aiobotocore's presigning is a coroutine. Its endpoint is S3 as the clients reach it,
    which differs from jangteo's own when S3 sits on an internal network.
    """
    arguments = _client_arguments(settings)
    arguments["endpoint_url"] = settings.s3_presign_endpoint or settings.s3_endpoint
    session = botocore.session.get_session()
    return session.create_client("s3", config=_config(settings, Config), **arguments)


class S3PhotoStorage:
    """One aiobotocore client for object reads and bucket set-up; presigning is local."""

    def __init__(self, client: Any, signer: Any, settings: Settings) -> None:
        self._client = client
        self._signer = signer
        self.bucket = settings.s3_bucket
        self._region = settings.s3_region
        self._ticket_ttl = settings.photo_upload_ttl
        self._public_base = settings.s3_public_url.rstrip("/") if settings.s3_public_url else None
        self._bucket_ready = False

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, settings: Settings) -> AsyncIterator[S3PhotoStorage]:
        """A storage for ``settings``; its bucket is created if missing (or on first use)."""
        session = get_session()
        config = _config(settings, AioConfig)
        async with session.create_client(
            "s3", config=config, **_client_arguments(settings)
        ) as client:
            signer = await asyncio.to_thread(_signing_client, settings)
            storage = cls(client, signer, settings)
            try:
                await storage.ensure_bucket()
            except StorageUnavailable:
                # Start anyway: the bucket is created when S3 answers again.
                log.warning("photo bucket not checked: s3 unavailable at start-up")
            try:
                yield storage
            finally:
                signer.close()

    async def ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with _unavailable_as_503():
            try:
                await self._client.head_bucket(Bucket=self.bucket)
            except ClientError as error:
                if _error_code(error) not in _MISSING:
                    raise
                await self._create_bucket()
        self._bucket_ready = True

    async def _create_bucket(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if self._region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        try:
            await self._client.create_bucket(**arguments)
            log.info("photo bucket created", extra={"bucket": self.bucket})
        except ClientError as error:
            # Another replica created it between our check and our create.
            if _error_code(error) not in _BUCKET_EXISTS:
                raise

    async def upload_ticket(self, key: str, content_type: str, size: int) -> UploadTicket:
        await self.ensure_bucket()
        # Content-Type and Content-Length are signed, so S3 refuses other values; not
        # every S3-compatible server checks the length, so completion checks it again.
        url: str = self._signer.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ContentType": content_type,
                "ContentLength": size,
            },
            ExpiresIn=self._ticket_ttl,
        )
        return UploadTicket(
            url=url,
            method="PUT",
            expires_in=self._ticket_ttl,
            headers={"Content-Type": content_type},
        )

    async def inspect(self, key: str) -> StoredObject | None:
        with _unavailable_as_503():
            try:
                head = await self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as error:
                if _error_code(error) in _MISSING:
                    return None
                raise
            size = int(head["ContentLength"])
            if size == 0:
                return StoredObject(size=0, head=b"")
            try:
                response = await self._client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes=0-{HEAD_BYTES - 1}"
                )
            except ClientError as error:
                if _error_code(error) in _MISSING:
                    return None
                raise
            async with response["Body"] as body:
                first: bytes = await body.read()
        return StoredObject(size=size, head=first[:HEAD_BYTES])

    async def delete(self, key: str) -> None:
        with _unavailable_as_503():
            await self._client.delete_object(Bucket=self.bucket, Key=key)

    def public_url(self, key: str) -> str:
        if self._public_base is not None:
            return f"{self._public_base}/{key}"
        url: str = self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PUBLIC_URL_TTL
        )
        return url
