"""The OpenAPI 3.1 document, assembled from the routes as they are registered."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}

_STATUS_TEXT = {
    101: "Switching protocols (WebSocket)",
    200: "OK",
    201: "Created",
    204: "No content",
    304: "Not modified",
    400: "Malformed request",
    401: "Missing, invalid or expired credentials",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    412: "Precondition failed",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Validation failed",
    428: "Precondition required",
    429: "Rate limited",
    503: "A dependency is unavailable",
}


# Path parameters by name: ids are bigints, photo ids UUIDs (any other name is a string).
# A value that is not one names nothing: 404, like an id nobody has.
_BIGINT_ID = {"type": "integer", "format": "int64", "minimum": 1, "maximum": 2**63 - 1}
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "id": _BIGINT_ID,
    "listing_id": _BIGINT_ID,
    "photo_id": {"type": "string", "format": "uuid"},
}


@dataclass(frozen=True, slots=True)
class Header:
    """A request header an operation reads; required ones are refused when missing.

    ``answers`` are the error statuses the header itself can cause, and why: every
    operation that reads the header documents them.
    """

    name: str
    description: str
    schema: dict[str, Any]
    required: bool = True
    answers: Mapping[int, str] = field(default_factory=dict)

    def parameter(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "header",
            "required": self.required,
            "description": self.description,
            "schema": self.schema,
        }


IDEMPOTENCY_KEY = Header(
    "Idempotency-Key",
    "Any 1-255 visible ASCII characters, new for each operation: the same key with the same"
    " request replays the first answer; with another request (body or path) it is refused",
    {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
    answers={
        400: "Idempotency-Key is missing or not 1-255 visible ASCII characters",
        409: "a request with this Idempotency-Key is still running",
        422: "this Idempotency-Key was used before with another request",
    },
)
# The opening handshake of RFC 6455, which a plain GET lacks (400).
_NOT_A_HANDSHAKE = {400: "not a WebSocket opening handshake"}
WEBSOCKET_HANDSHAKE = (
    Header("Upgrade", "websocket", {"type": "string", "enum": ["websocket"]}),
    Header("Connection", "Upgrade", {"type": "string", "enum": ["Upgrade"]}),
    Header(
        "Sec-WebSocket-Key",
        "16 random bytes in base64",
        {"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$"},
        answers=_NOT_A_HANDSHAKE,
    ),
    Header("Sec-WebSocket-Version", "13", {"type": "string", "enum": ["13"]}),
)


@dataclass(slots=True)
class ApiSpec:
    """Collects one OpenAPI operation per registered route."""

    title: str
    version: str
    paths: dict[str, dict[str, Any]] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)

    def route(
        self,
        app: web.Application,
        method: str,
        path: str,
        handler: Handler,
        *,
        summary: str,
        tag: str,
        body: type[pydantic.BaseModel] | None = None,
        response: type[pydantic.BaseModel] | None = None,
        status: int = 200,
        errors: tuple[int, ...] = (),
        auth: bool = False,
        content_type: str = "application/json",
        query: type[pydantic.BaseModel] | None = None,
        headers: tuple[Header, ...] = (),
        path_schemas: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        """Add the route to ``app`` and describe it; the two never drift apart.

        ``path_schemas`` describe path parameters beyond what their names say.
        """
        described_path = {**_PATH_SCHEMAS, **(path_schemas or {})}
        app.router.add_route(method, path, handler)
        operation: dict[str, Any] = {
            "summary": summary,
            "tags": [tag],
            "operationId": handler.__name__,
            "responses": {str(status): self._response(status, response, content_type)},
        }
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": described_path.get(name, {"type": "string"}),
            }
            for name in _path_parameters(path)
        ]
        if query is not None:
            parameters += _query_parameters(query)
        parameters += [header.parameter() for header in headers]
        if parameters:
            operation["parameters"] = parameters
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self._schema(body)}},
            }
        problem_statuses = set(errors)
        if body is not None:
            problem_statuses |= {400, 413, 415, 422}
        if auth:
            operation["security"] = [{"bearer": []}]
            problem_statuses.add(401)
        reasons: dict[int, list[str]] = {}
        for header in headers:
            for code, reason in header.answers.items():
                reasons.setdefault(code, []).append(reason)
        for code in sorted(problem_statuses | set(reasons)):
            generic = [_STATUS_TEXT.get(code, "Error")] if code in problem_statuses else []
            described = "; ".join(generic + reasons.get(code, []))
            operation["responses"][str(code)] = {
                "description": described[:1].upper() + described[1:],
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            }
        self.paths.setdefault(path, {})[method.lower()] = operation

    def document(self) -> dict[str, Any]:
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": self.paths,
            "components": {
                "schemas": {"Problem": _PROBLEM_SCHEMA, **self.schemas},
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                },
            },
        }

    def _response(
        self, status: int, model: type[pydantic.BaseModel] | None, content_type: str
    ) -> dict[str, Any]:
        described: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "OK")}
        if model is not None:
            described["content"] = {content_type: {"schema": self._schema(model)}}
        return described

    def _schema(self, model: type[pydantic.BaseModel]) -> dict[str, str]:
        schema = _json_schema(model, "#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            self.schemas[name] = definition
        self.schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_schema(model: type[pydantic.BaseModel], ref_template: str) -> dict[str, Any]:
    """A fresh copy of the model's JSON schema, which callers may take apart."""
    schema: dict[str, Any] = json.loads(_generated_json_schema(model, ref_template))
    return schema


@functools.cache
def _generated_json_schema(model: type[pydantic.BaseModel], ref_template: str) -> str:
    """Generated once per model in a process: pydantic builds it afresh at each call, and
    every app a process builds (the test suite builds hundreds) describes the same models.
    Kept as JSON text, which parses into a copy several times faster than a deep copy."""
    return json.dumps(model.model_json_schema(ref_template=ref_template))


def _query_parameters(model: type[pydantic.BaseModel]) -> list[dict[str, Any]]:
    """One parameter per field; an optional field is simply left out, never sent as null."""
    schema = _json_schema(model, pydantic.json_schema.DEFAULT_REF_TEMPLATE)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field_schema in schema.get("properties", {}).items():
        described = dict(field_schema)
        branches = described.pop("anyOf", None)
        if branches is not None:
            kept = [branch for branch in branches if branch.get("type") != "null"]
            described.update(kept[0] if len(kept) == 1 else {"anyOf": kept})
        described.pop("title", None)
        if described.get("default", "") is None:
            del described["default"]
        parameters.append(
            {"name": name, "in": "query", "required": name in required, "schema": described}
        )
    return parameters


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
