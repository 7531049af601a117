"""Client-to-server frames: parsed from JSON, validated, and looked up by ``op``.

Each op is a strict model (unknown fields and wrong types are refused, never coerced);
chat adds its ops by registering more models, so the dispatch stays open.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson
import pydantic


class ClientFrame(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


class Subscribe(ClientFrame):
    op: Literal["subscribe"]
    channel: str = pydantic.Field(min_length=1, max_length=200)
    since: int | None = pydantic.Field(default=None, ge=0, le=2**63 - 1)


class Unsubscribe(ClientFrame):
    op: Literal["unsubscribe"]
    channel: str = pydantic.Field(min_length=1, max_length=200)


class Ping(ClientFrame):
    op: Literal["ping"]


class BadFrame(Exception):
    """The frame cannot be understood; ``detail`` says why, for the error reply."""


FRAMES: dict[str, type[ClientFrame]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "ping": Ping,
}


def parse_frame(text: str, frames: Mapping[str, Any] = FRAMES) -> ClientFrame:
    """The frame as its op's model; ``frames`` maps ops to models (or to ``(model, ...)``)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadFrame("frames are JSON objects") from None
    if not isinstance(value, dict):
        raise BadFrame("frames are JSON objects")
    op = value.get("op")
    entry = frames.get(op) if isinstance(op, str) else None
    model: type[ClientFrame] | None = entry[0] if isinstance(entry, tuple) else entry
    if model is None:
        raise BadFrame(f"op must be one of {', '.join(sorted(frames))}")
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'frame'}: {item['msg']}"
            for item in error.errors()
        )
        raise BadFrame(problems) from None
