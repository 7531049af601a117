"""Listing reads this process holds in its near cache, answered before aiohttp routes them.

Such a read costs a dict lookup, yet the general way around it (resolving the path among
every route, the middleware chain, the response-prepare hook, the handler) cost a process
about as much CPU again as a bare aiohttp app spends on the whole request (BENCHMARKS.md,
cached ``GET /listings/{id}``). So
``GET /api/v1/listings/<digits>`` whose near-cache copy is served is answered here, with
exactly what that way would add: the handler's own answer (``detail_response``: ETag,
Cache-Control, Content-Type, 304 on If-None-Match), the request id, the security headers,
the request's latency and count under the route's label, and the cache's ``local``
outcome. The route needs no account and has no rate limit, so there is none to check.

Everything else goes the general way, unchanged: other paths and methods, a query string,
a body, an ``Expect``, an id with no copy (filled there, from Redis or PostgreSQL), and
the empty copy of an unknown id (answered 404 there). The copy is read exactly as
``ListingCache`` reads it (``near.get``, which serves nothing without a subscription and a
lease), so read-your-writes holds as before.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from multidict import CIMultiDict

from server import keys
from server.listings.cache import ListingCache, detail_base
from server.listings.handlers import ITEM, PREFIX, detail_response
from server.middlewares import REQUEST_ID_HEADER, request_id_of
from server.request_stats import LoopCount, RouteStats
from server.security_headers import EVERY_RESPONSE

RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ITEM_PREFIX = PREFIX + "/"
_MAX_DIGITS = 19  # a bigint id; longer ones are never cached (see path_id)
_MAX_PREPARED = 4096


class ListingFastPath:
    """Called by aiohttp's server for every request, in place of the app's own handling."""

    def __init__(self, general: RequestHandler) -> None:
        self.general = general  # the app's own handling: routing, middlewares, handler
        self.enabled = True
        self._cache: ListingCache | None = None  # set at startup, once the cache exists
        self._stats: RouteStats | None = None
        self._local: LoopCount | None = None  # the cache's (detail, local) counter, bound once
        # A 200's body and headers by the entry they come from, as taking an entry apart and
        # building its headers cost about as much as the rest of the answer. Keyed by the
        # entry's bytes, so a changed listing (a new entry) never gets an old answer;
        # emptied when full.
        self._prepared: dict[bytes, tuple[bytes, CIMultiDict[str]]] = {}

    async def startup(self, app: web.Application) -> None:
        self._cache = app[keys.listing_cache_key]
        metrics = app[keys.metrics_key]
        self._stats = metrics.request_stats.route(hdrs.METH_GET, ITEM)
        self._local = metrics.cache.labels("detail", "local")

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        entry = self._copy(request)
        if not entry:
            return await self.general(request)
        assert self._stats is not None and self._local is not None  # set with the cache
        if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
        if if_none_match is None:
            body, headers = self._prepared.get(entry) or self._prepare(entry)
            response = web.Response(body=body, headers=headers)
        else:
            response = detail_response(entry, if_none_match)
            response.headers.update(EVERY_RESPONSE)
        response.headers[REQUEST_ID_HEADER] = request_id_of(request)
        self._local.inc()
        self._stats.count(response.status, time.perf_counter() - started)
        return response

    def _copy(self, request: web.Request) -> bytes | None:
        """The near-cache entry this request reads, if the fast path may answer it."""
        path = request.raw_path
        cache = self._cache
        if (
            not path.startswith(_ITEM_PREFIX)
            or request.method != hdrs.METH_GET
            or request.body_exists
            or hdrs.EXPECT in request.headers
            or cache is None
            or not cache.enabled
            or not self.enabled
        ):
            return None
        digits = path[len(_ITEM_PREFIX) :]
        if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS):
            return None
        return cache.near.get(detail_base(int(digits)))

    def _prepare(self, entry: bytes) -> tuple[bytes, CIMultiDict[str]]:
        """The handler's own 200 for ``entry``, with the headers every response gets."""
        answer = detail_response(entry, None)
        assert isinstance(answer.body, bytes)
        headers = CIMultiDict(answer.headers)
        headers.update(EVERY_RESPONSE)
        if len(self._prepared) >= _MAX_PREPARED:
            self._prepared.clear()
        self._prepared[entry] = answer.body, headers
        return answer.body, headers


fast_path_key = web.AppKey("listing_fast_path", ListingFastPath)


def install(app: web.Application) -> ListingFastPath:
    """Put the fast path in front of ``app``'s request handling; call before it starts.

    aiohttp has no public hook before routing: its server calls ``app._handle`` (looked up
    when the server is made), so the fast path takes that attribute's place and hands
    every other request to the original. ``tests/server/test_listing_fast_path.py`` fails
    if an aiohttp upgrade stops calling it.
    """
    fast_path = ListingFastPath(app._handle)
    app.on_startup.append(fast_path.startup)
    app._handle = fast_path  # type: ignore[method-assign]
    app[fast_path_key] = fast_path
    return fast_path
