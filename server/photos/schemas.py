"""Request and response bodies of the photo endpoints."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field

from server.jsonio import StrictModel
from server.photos.formats import PhotoContentType


class PhotoUploadBody(StrictModel):
    content_type: PhotoContentType
    # The upper bound is a setting (JANGTEO_PHOTO_MAX_BYTES), checked by the service.
    size: Annotated[int, Field(ge=1)]


class PhotoUploadOut(pydantic.BaseModel):
    photo_id: str
    upload_url: str
    method: str
    headers: dict[str, str]
    expires_in: int


class CompletedPhotoOut(pydantic.BaseModel):
    id: str
    url: str
    content_type: str
    status: Literal["ready"]
