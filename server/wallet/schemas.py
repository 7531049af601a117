"""Bodies of the wallet endpoints."""

from __future__ import annotations

from typing import Annotated

import pydantic
from pydantic import Field

from server.jsonio import StrictModel


class TopUpBody(StrictModel):
    amount: Annotated[int, Field(ge=1, le=10_000_000)]


class WalletOut(pydantic.BaseModel):
    balance: int
