"""Photo rules: only the seller adds photos, at most ten, each verified before it shows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from db.queries import photos as queries
from db.queries.outbox import Event, insert_events
from server.errors import Conflict, NotFound, Problem, ValidationFailed
from server.listings.service import ListingNotFound, NotTheSeller, event_snapshot
from server.photos.formats import CONTENT_TYPES, EXTENSIONS, has_magic_number
from server.photos.schemas import CompletedPhotoOut, PhotoUploadOut
from server.photos.storage import PhotoStorage, StoredObject

MAX_PHOTOS_PER_LISTING = 10


class PhotoNotFound(NotFound):
    slug, title = "photo-not-found", "No such photo on this listing"


class TooManyPhotos(Conflict):
    slug, title = "too-many-photos", "This listing has as many photos as it may have"


class PhotoNotUploaded(Conflict):
    slug, title = "photo-not-uploaded", "Nothing was uploaded for this photo yet"


class PhotoInvalid(Problem):
    status, slug, title = 422, "photo-invalid", "The uploaded photo is not what was declared"


@dataclass(frozen=True, slots=True)
class PhotoCompletion:
    """The ready photo, and the region of its listing when this call made it ready."""

    photo: CompletedPhotoOut
    changed_region: str | None


def photo_key(listing_id: int, content_type: str) -> str:
    """A fresh, unguessable object key; the server chooses it, never the client."""
    return f"listings/{listing_id}/{uuid.uuid4().hex}.{EXTENSIONS[content_type]}"


def _check_declaration(content_type: str, size: int, max_bytes: int) -> None:
    errors = []
    if content_type not in CONTENT_TYPES:
        errors.append(
            {
                "field": "content_type",
                "code": "literal_error",
                "message": f"Input should be one of {', '.join(CONTENT_TYPES)}",
            }
        )
    if size < 1:
        errors.append(
            {"field": "size", "code": "greater_than_equal", "message": "Input should be >= 1"}
        )
    elif size > max_bytes:
        errors.append(
            {
                "field": "size",
                "code": "less_than_equal",
                "message": f"Input should be less than or equal to {max_bytes}",
            }
        )
    if errors:
        raise ValidationFailed(errors)


def _check_seller(listing: asyncpg.Record | None, user_id: int) -> None:
    # Hidden listings are gone for everyone, the seller included (DELETE hides them).
    if listing is None or listing["status"] == "hidden":
        raise ListingNotFound()
    if listing["seller_id"] != user_id:
        raise NotTheSeller()


async def request_upload(
    pool: asyncpg.Pool,
    storage: PhotoStorage,
    *,
    listing_id: int,
    user_id: int,
    content_type: str,
    size: int,
    max_bytes: int,
    ticket_ttl: int,
) -> PhotoUploadOut:
    """Reserve a photo slot on the listing and sign an upload for it."""
    _check_declaration(content_type, size, max_bytes)
    photo_id = uuid.uuid4()
    key = photo_key(listing_id, content_type)
    # Signed first, outside the transaction: signing may have to reach S3 (to create the
    # bucket after an outage), and no row lock is held meanwhile; when S3 is down no
    # slot is taken by a photo nobody could upload.
    ticket = await storage.upload_ticket(key, content_type, size)
    async with pool.acquire() as conn, conn.transaction():
        # The lock makes count-then-insert safe against the seller's parallel requests.
        _check_seller(await queries.lock_listing_for_photos(conn, listing_id), user_id)
        # Pending photos whose ticket expired free their slot; a ready photo keeps it.
        if await queries.count_photo_slots(conn, listing_id, ticket_ttl) >= MAX_PHOTOS_PER_LISTING:
            raise TooManyPhotos(f"at most {MAX_PHOTOS_PER_LISTING} photos per listing")
        await queries.insert_photo(
            conn,
            photo_id=photo_id,
            listing_id=listing_id,
            object_key=key,
            content_type=content_type,
            size_bytes=size,
        )
    return PhotoUploadOut(
        photo_id=str(photo_id),
        upload_url=ticket.url,
        method=ticket.method,
        headers=ticket.headers,
        expires_in=ticket.expires_in,
    )


def _check_upload(stored: StoredObject | None, content_type: str, size: int) -> None:
    if stored is None:
        raise PhotoNotUploaded("upload the bytes to upload_url first")
    if stored.size != size:
        raise PhotoInvalid(f"declared {size} bytes, uploaded {stored.size}")
    if not has_magic_number(content_type, stored.head):
        raise PhotoInvalid(f"the uploaded bytes are not {content_type}")


async def complete_upload(
    pool: asyncpg.Pool,
    storage: PhotoStorage,
    *,
    listing_id: int,
    photo_id: uuid.UUID,
    user_id: int,
) -> PhotoCompletion:
    """Verify the uploaded object and make the photo show on its listing; safe to repeat."""
    row = await queries.photo_of_listing(pool, listing_id, photo_id)
    _check_seller(row, user_id)
    assert row is not None
    if row["id"] is None:
        raise PhotoNotFound()
    key: str = row["object_key"]
    content_type: str = row["content_type"]
    photo = CompletedPhotoOut(
        id=str(photo_id), url=storage.public_url(key), content_type=content_type, status="ready"
    )
    if row["status"] == "ready":
        return PhotoCompletion(photo, changed_region=None)
    # Storage is read outside the transaction: no lock is held while S3 answers.
    _check_upload(await storage.inspect(key), content_type, row["size_bytes"])
    async with pool.acquire() as conn, conn.transaction():
        _check_seller(await queries.lock_listing_for_photos(conn, listing_id), user_id)
        if await queries.count_ready_photos(conn, listing_id) >= MAX_PHOTOS_PER_LISTING:
            raise TooManyPhotos(f"at most {MAX_PHOTOS_PER_LISTING} photos per listing")
        if not await queries.mark_photo_ready(conn, photo_id):
            return PhotoCompletion(photo, changed_region=None)  # a parallel call won
        listing = await queries.bump_listing_version(conn, listing_id)
        data = {
            **event_snapshot(listing),
            "listing_id": listing_id,
            "photo_id": str(photo_id),
            "changed": ["photos"],
        }
        await insert_events(conn, [Event(f"listing:{listing_id}", "listing.updated", data)])
    return PhotoCompletion(photo, changed_region=listing["region"])
