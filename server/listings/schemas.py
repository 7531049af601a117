"""Request bodies and query parameters of the listing endpoints, and the listing shape."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field, StringConstraints

from server.auth.schemas import REGION_PATTERN
from server.cursors import Cursor
from server.jsonio import StrictModel
from server.text import NO_NUL, NOT_BLANK, STRIP

Category = Literal[
    "digital", "appliances", "furniture", "kids", "fashion", "beauty", "sports",
    "hobby", "books", "pets", "plants", "food", "tickets", "etc",
]  # fmt: skip
# A pattern as well as the length: the published schema cannot strip, so "   " must fail it.
Title = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NOT_BLANK), STRIP]
Description = Annotated[str, StringConstraints(max_length=5000, pattern=NO_NUL)]
Price = Annotated[int, Field(ge=0, le=10_000_000_000)]
Quantity = Annotated[int, Field(ge=0, le=10_000)]
Region = Annotated[str, StringConstraints(pattern=REGION_PATTERN)]
# Sellers set these two; "sold" follows from quantity 0 and "hidden" from DELETE.
SellerStatus = Literal["on_sale", "reserved"]
ListingStatus = Literal["on_sale", "reserved", "sold", "hidden"]


class ListingCreate(StrictModel):
    title: Title
    description: Description = ""
    price: Price
    quantity: Quantity = 1
    category: Category
    region: Region | None = None  # the seller's own region when left out


def _patch_schema(schema: dict[str, Any]) -> None:
    """A PATCH field may be left out but not sent as null (refused with 422), and a status
    sent with a quantity of 0 contradicts it (422: quantity 0 means sold): say so."""
    for described in schema["properties"].values():
        branches = described.pop("anyOf", [])
        kept = [branch for branch in branches if branch.get("type") != "null"]
        described.update(kept[0] if len(kept) == 1 else {"anyOf": kept} if kept else {})
        described.pop("default", None)
    schema["dependentSchemas"] = {"status": {"properties": {"quantity": {"minimum": 1}}}}


class ListingPatch(StrictModel):
    """A status on a listing whose quantity stays 0 is a conflict with its state (409)."""

    model_config = pydantic.ConfigDict(json_schema_extra=_patch_schema)

    title: Title | None = None
    description: Description | None = None
    price: Price | None = None
    quantity: Quantity | None = None
    category: Category | None = None
    status: SellerStatus | None = None


class FeedQuery(pydantic.BaseModel):
    """Query string of GET /listings; strings are converted, unknown names refused."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    region: Region | None = None
    category: Category | None = None
    q: (
        Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NOT_BLANK), STRIP]
        | None
    ) = None
    status: Literal["on_sale", "reserved", "sold"] | None = None
    seller: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None
    min_price: Price | None = None
    max_price: Price | None = None
    cursor: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class PhotoOut(pydantic.BaseModel):
    id: str
    url: str
    content_type: str


class ListingOut(pydantic.BaseModel):
    id: int
    seller_id: int
    title: str
    description: str
    price: int
    quantity: int
    category: Category
    region: str
    status: ListingStatus
    like_count: int
    version: int
    photos: list[PhotoOut]
    created_at: datetime
    updated_at: datetime


class ListingPage(pydantic.BaseModel):
    items: list[ListingOut]
    next_cursor: str | None
