"""orjson in and out: JSON responses, and request bodies parsed then validated by a model."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
import pydantic
from aiohttp import web

from server.errors import MalformedJson, UnsupportedMediaType, ValidationFailed

JSON_CONTENT_TYPE = "application/json"
Model = TypeVar("Model", bound=pydantic.BaseModel)


class StrictModel(pydantic.BaseModel):
    """A request body: no unknown fields, no silent type coercion."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        """JSON has one number type: 57.0 is the integer 57, as JSON Schema (and so the
        published OpenAPI document) says; 57.5 and "57" stay refused."""
        if not isinstance(data, dict):
            return data
        return {
            name: int(value) if isinstance(value, float) and value.is_integer() else value
            for name, value in data.items()
        }


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(body), status=status, headers=headers, content_type=JSON_CONTENT_TYPE
    )


async def read_json(request: web.Request, model: type[Model]) -> Model:
    """Parse and validate the body: 415 when not JSON, 400 when malformed, 422 when invalid."""
    if request.content_type != JSON_CONTENT_TYPE:
        raise UnsupportedMediaType(f"send Content-Type: {JSON_CONTENT_TYPE}")
    raw = await request.read()  # aiohttp answers 413 beyond client_max_size
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MalformedJson(str(error)) from None
    return validate(data, model)


def validate(data: Any, model: type[Model]) -> Model:
    """Validate already-parsed data against ``model``; every failing field is reported."""
    if not isinstance(data, dict):
        raise ValidationFailed([{"field": "", "code": "type", "message": "expected an object"}])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        raise ValidationFailed(
            [
                {
                    "field": ".".join(str(part) for part in item["loc"]),
                    "code": item["type"],
                    "message": item["msg"],
                }
                for item in error.errors(include_url=False, include_input=False)
            ]
        ) from None
