"""Bodies and query parameters of purchases and orders, and the order shape."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import pydantic
from pydantic import Field

from server.cursors import Cursor
from server.jsonio import StrictModel


class PurchaseBody(StrictModel):
    quantity: Annotated[int, Field(ge=1, le=10_000)] = 1


class OrdersQuery(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    role: Literal["buyer", "seller"] = "buyer"
    cursor: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class OrderOut(pydantic.BaseModel):
    id: int
    listing_id: int
    buyer_id: int
    seller_id: int
    quantity: int
    unit_price: int
    amount: int
    status: Literal["paid", "completed", "cancelled"]
    created_at: datetime
    updated_at: datetime


class OrderPage(pydantic.BaseModel):
    items: list[OrderOut]
    next_cursor: str | None
