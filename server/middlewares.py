"""Request id, metrics and logging around every request; every error as problem+json."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import re
import time

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server import keys
from server.errors import (
    HTTP_STATUS_PROBLEMS,
    PROBLEM_CONTENT_TYPE,
    HttpError,
    PayloadTooLarge,
    Problem,
    ServiceUnavailable,
)
from server.jsonio import dumps
from server.logs import request_id_var
from server.photos.storage_local import UPLOAD_PATH as STREAMED_UPLOAD_PATH

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Failures that mean "PostgreSQL or Redis is unreachable or too slow", not a bug here.
POSTGRES_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.QueryCanceledError,
    asyncpg.AdminShutdownError,
    # asyncpg's protocol confused by a server that died mid-message (a FATAL read, the
    # close not yet): seen when PostgreSQL shuts down under load. The pool drops it.
    asyncpg.InternalClientError,
)
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)


def problem_response(problem: Problem, request: web.Request) -> web.Response:
    headers = dict(problem.headers)
    headers["Content-Type"] = PROBLEM_CONTENT_TYPE
    return web.Response(
        body=dumps(problem.body(instance=request.path)), status=problem.status, headers=headers
    )


def _from_http_exception(error: web.HTTPException) -> Problem:
    problem_class = HTTP_STATUS_PROBLEMS.get(error.status)
    kept = {name: value for name, value in error.headers.items() if name in ("Allow",)}
    if problem_class is None:
        return HttpError(error.status, error.reason, kept)
    detail = error.text if error.text and not error.text.startswith(str(error.status)) else None
    return problem_class(detail, headers=kept)


def _dependency(error: BaseException) -> str | None:
    if isinstance(error, POSTGRES_ERRORS):
        return "postgres"
    if isinstance(error, REDIS_ERRORS):
        return "redis"
    if isinstance(error, TimeoutError):
        return "timeout"  # e.g. no pooled connection free in time
    if isinstance(error, OSError):
        return "network"
    return None


def answer_failure(error: Exception, request: web.Request) -> web.Response:
    """The problem+json answer for a failed request; a 500 never shows a traceback."""
    if isinstance(error, Problem):
        return problem_response(error, request)
    if isinstance(error, web.HTTPException):
        return problem_response(_from_http_exception(error), request)
    dependency = _dependency(error)
    if dependency is not None:
        request.app[keys.metrics_key].dependency_errors.labels(dependency).inc()
        log.warning(
            "dependency unavailable", extra={"dependency": dependency, "error": repr(error)}
        )
        detail = (
            "a dependency did not answer in time"
            if dependency == "timeout"
            else f"{dependency} is unavailable"
        )
        return problem_response(ServiceUnavailable(detail), request)
    log.exception("unhandled error", exc_info=error)
    return problem_response(Problem(), request)


def _check_declared_size(request: web.Request) -> None:
    declared = request.content_length
    if declared is not None:
        limit = request.app[keys.settings_key].max_body_bytes
        streamed = request.path.startswith(STREAMED_UPLOAD_PATH)  # has its own, larger limit
        if declared > limit and not streamed:
            raise PayloadTooLarge(f"at most {limit} bytes")


# Request ids only need to be unique, not secret: a random per-process prefix and a counter
# (32 hex characters) cost far less than reading the system's random source per request.
_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):020x}"


def request_id_of(request: web.BaseRequest) -> str:
    """The client's ``X-Request-ID`` when it is a plain token, else a new one."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    return incoming if incoming and _CLIENT_REQUEST_ID.match(incoming) else _new_id()


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Around every request: an id (echoed back, logged), its latency by route, and every
    failure turned into problem+json. One middleware, as every layer costs each request."""
    request_id = request_id_of(request)
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        _check_declared_size(request)
        response = await handler(request)
    except web.HTTPException as error:
        if error.status < 400:  # 304 and redirects travel as exceptions
            error.headers[REQUEST_ID_HEADER] = request_id
            _observe(request, error.status, started, token)
            raise
        response = answer_failure(error, request)
    except asyncio.CancelledError:
        _observe(request, 499, started, token)
        raise
    except Exception as error:
        response = answer_failure(error, request)
    response.headers[REQUEST_ID_HEADER] = request_id
    _observe(request, response.status, started, token)
    return response


def echo_request_id(response: web.StreamResponse) -> None:
    """Give a response the request's id before it is prepared: a WebSocket's 101 and an
    event stream's 200 are sent by their handler, before the middleware could add it."""
    request_id = request_id_var.get()
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def _observe(
    request: web.Request, status: int, started: float, token: contextvars.Token[str | None]
) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[keys.metrics_key].observe_request(
        request.method, route, status, time.perf_counter() - started
    )
    request_id_var.reset(token)
