"""RFC 9457 problem details: the exceptions handlers raise and the JSON they become."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://jangteo.dev/problems/"


class Problem(Exception):
    """An error answer. Subclasses fix ``status``, ``slug`` and ``title``."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class MalformedJson(Problem):
    status, slug, title = 400, "malformed-json", "Request body is not valid JSON"


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="jangteo"'}, **extra)


class InvalidCredentials(Unauthorized):
    slug, title = "invalid-credentials", "Email or password is wrong"


class InvalidToken(Unauthorized):
    slug, title = "invalid-token", "Token is missing, malformed, expired or revoked"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(Problem):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class EmailTaken(Conflict):
    slug, title = "email-taken", "An account with this email already exists"


class PreconditionFailed(Problem):
    status, slug, title = 412, "precondition-failed", "The resource changed since you read it"


class PreconditionRequired(Problem):
    status, slug, title = 428, "precondition-required", "Send If-Match with the ETag you read"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Request body is too large"


class UnsupportedMediaType(Problem):
    status, slug, title = 415, "unsupported-media-type", "Request body must be application/json"


class ValidationFailed(Problem):
    status, slug, title = 422, "validation-failed", "Request failed validation"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(f"{len(errors)} field error(s)", errors=errors)


class RateLimited(Problem):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"try again in {retry_after} s", headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(Problem):
    status, slug, title = 503, "service-unavailable", "A dependency is unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 2, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, **extra)


class HttpError(Problem):
    """Any other HTTP error status aiohttp raises, kept as it is."""

    slug = "http-error"

    def __init__(self, status: int, title: str, headers: Mapping[str, str]) -> None:
        super().__init__(None, headers=headers)
        self.status = status
        self.title = title


# Problems for plain HTTP errors that aiohttp itself raises (routing, body size).
HTTP_STATUS_PROBLEMS: dict[int, type[Problem]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}
