"""The realtime gateway: tickets, the socket and event stream endpoints, and their peers.

``POST /api/v1/ws/ticket`` turns an access token into a single-use ticket; ``GET
/api/v1/ws?ticket=`` redeems it and speaks the protocol of ``realtime.protocol``, and ``GET
/api/v1/sse?ticket=&channel=`` redeems it for a receive-only stream (``realtime.sse``). A
peer, socket or stream, belongs to the session (refresh-token family) its ticket came from:
the ``sessions`` channel, fed through the outbox like every other event, tells every
instance when a session is revoked, and a timer ends peers when their session expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import orjson
import redis.asyncio as aioredis
from aiohttp import WSMsgType, web

from db.queries.outbox import SESSIONS_CHANNEL
from realtime import disconnect
from realtime.channels import ChannelRules
from realtime.connection import Connection, Limits, OpHandler
from realtime.event import Delivery
from realtime.hub import TRANSIENT_ERRORS, Hub
from realtime.metrics import GatewayMetrics
from realtime.peer import Peer
from realtime.presence import Presence
from realtime.protocol import FRAMES, ClientFrame
from realtime.session_states import SessionStates
from realtime.sse import EventStream
from realtime.sse_metrics import StreamMetrics
from realtime.sse_request import parse_stream_request
from realtime.tickets import TicketHolder, Tickets, derive_ticket_secret
from server.errors import Forbidden, ServiceUnavailable, Unauthorized
from server.middlewares import echo_request_id
from server.redis_breaker import CLOSED, BreakerPool, RedisUnavailable
from server.settings import Settings

log = logging.getLogger(__name__)

SESSION_SWEEP_S = 30.0  # how late, at most, a peer notices that its session expired
# While this instance cannot receive from Redis it may miss revocations (the sessions
# channel then arrives only if a relay leader elsewhere can number it): after DEAF_AFTER_S
# without Redis, its sessions are checked against PostgreSQL every DEAF_CHECK_S. When
# that check fails too, the instance can deliver nothing: its sockets are closed (1013).
DEAF_AFTER_S = 3.0
DEAF_CHECK_S = 1.0
_ENDED_SESSIONS = """
SELECT family_id FROM refresh_tokens WHERE family_id = ANY($1::uuid[])
GROUP BY family_id HAVING bool_or(revoked_at IS NOT NULL) OR max(expires_at) <= now()
"""
P = TypeVar("P", bound=Peer)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        redis: aioredis.Redis,
        pool: asyncpg.Pool,
        metrics: GatewayMetrics,
        presence: Presence | None = None,
        *,
        stream_metrics: StreamMetrics,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.redis = redis
        self.tickets = Tickets(
            redis, derive_ticket_secret(settings.jwt_secret), settings.ws_ticket_ttl
        )
        self.pool = pool
        self.session_states = SessionStates(pool)
        self.metrics = metrics
        self.stream_metrics = stream_metrics
        self.presence = presence
        self.rules = ChannelRules()
        self.ops: dict[str, tuple[type[ClientFrame], OpHandler]] = {
            op: (model, _builtin) for op, model in FRAMES.items()
        }
        self.limits = Limits(
            max_subscriptions=settings.ws_max_subscriptions,
            frames_per_second=settings.ws_frames_per_second,
            max_bad_frames=settings.ws_max_bad_frames,
            send_queue=settings.ws_send_queue,
        )
        self.connections: set[Connection] = set()
        self.streams: set[EventStream] = set()
        self.sessions: dict[uuid.UUID, set[Peer]] = {}
        self.shutting_down = False
        self.background: set[asyncio.Task[None]] = set()
        # Until this instance follows the sessions channel it could miss a logout.
        self.following_sessions = asyncio.Event()

    def add_op(self, op: str, model: type[ClientFrame], handler: OpHandler) -> None:
        """Teach the gateway a client op (chat's send and typing come this way)."""
        self.ops[op] = (model, handler)

    # -- HTTP --------------------------------------------------------------------------

    def issue_ticket(self, user_id: int, session_id: uuid.UUID) -> str:
        """A signed ticket (no Redis round trip); refused while Redis is known to be down,
        since spending it at the upgrade needs Redis."""
        if _failing_fast(self.redis):
            raise RedisUnavailable("Redis cannot be reached: the ticket could not be spent")
        return self.tickets.issue(TicketHolder(user_id, session_id))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Check before the upgrade what can be refused with a status; the rest with a code."""
        self._admit(request, "sockets")
        holder = await self.tickets.redeem(request.query.get("ticket", ""))
        ws = web.WebSocketResponse(
            heartbeat=self.settings.ws_heartbeat,
            # aiohttp refuses a message of exactly max_msg_size; the limit is what is allowed.
            max_msg_size=self.settings.ws_max_frame_bytes + 1,
            compress=False,
            autoping=True,
        )
        echo_request_id(ws)
        await ws.prepare(request)
        if holder is None:
            return await self._refuse(ws, disconnect.BAD_TICKET)
        if self._full():
            return await self._refuse(ws, disconnect.FULL)
        assert request.transport is not None
        connection = Connection(
            ws,
            request.transport,
            user_id=holder.user_id,
            session_id=holder.session_id,
            limits=self.limits,
            hub=self.hub,
            rules=self.rules,
            ops=self.ops,
            metrics=self.metrics,
            presence=self.presence,
        )
        self._register(connection, self.connections)
        try:
            if await self._session_alive(connection):
                # Only this task reads the socket; frames are handled one at a time.
                while await _handle_next(ws, connection):
                    pass
        except Exception:
            # The socket is upgraded: an error may not travel as an HTTP response (the
            # client would read its bytes as a corrupt frame), only as a close code.
            log.exception("socket handler failed", extra={"user_id": connection.user_id})
            connection.close_soon(disconnect.INTERNAL_ERROR)
        finally:
            await self._unregister(connection, self.connections)
        return ws

    async def open_stream(self, request: web.Request) -> web.StreamResponse:
        """An event stream: every refusal is a status, until the stream has started."""
        self._admit(request, "event streams")
        holder = await self.tickets.redeem(request.query.get("ticket", ""))
        if holder is None:
            raise Unauthorized(disconnect.BAD_TICKET.reason)
        asked = parse_stream_request(
            request.query, request.headers, self.settings.ws_max_subscriptions
        )
        if self._full():
            raise ServiceUnavailable(disconnect.FULL.reason, retry_after=1)
        assert request.transport is not None
        stream = EventStream(
            request.transport,
            user_id=holder.user_id,
            session_id=holder.session_id,
            channels=asked.channels,
            since=asked.since,
            send_queue=self.settings.ws_send_queue,
            hub=self.hub,
            rules=self.rules,
            metrics=self.stream_metrics,
            presence=self.presence,
        )
        self._register(stream, self.streams)
        try:
            await self._session_alive(stream)
            if stream.refusal is None:
                await stream.start(request)
            elif stream.refusal == disconnect.SESSION_ENDED:
                raise Unauthorized(stream.refusal.reason)
            else:  # shutting down, or the session cannot be checked now
                raise ServiceUnavailable(stream.refusal.reason, retry_after=1)
            await stream.ended.wait()
        except Exception:
            if not stream.started:
                raise  # still answered with a status
            log.exception("event stream failed", extra={"user_id": stream.user_id})
            stream.close_soon(disconnect.INTERNAL_ERROR)
        finally:
            await self._unregister(stream, self.streams)
        return stream.response

    def _admit(self, request: web.Request, what: str) -> None:
        """What refuses a socket or a stream before its ticket is looked at."""
        if not self._origin_allowed(request):
            raise Forbidden(f"this Origin may not open {what} here")
        if self.shutting_down:
            raise ServiceUnavailable("shutting down; connect to another instance", retry_after=1)
        if not self.following_sessions.is_set():
            raise ServiceUnavailable("starting; try again", retry_after=1)

    def _full(self) -> bool:
        """Sockets and streams count alike against the instance's limit."""
        return len(self.connections) + len(self.streams) >= self.settings.ws_max_connections

    async def _refuse(
        self, ws: web.WebSocketResponse, why: disconnect.Disconnect
    ) -> web.WebSocketResponse:
        """Close a socket that never became a connection (upgraded, then refused)."""
        await ws.close(code=why.code, message=why.reason.encode())
        self.metrics.closes.labels(why.metric).inc()
        return ws

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: nothing to forge
        allowed = self.settings.allowed_origins
        if allowed:
            return "*" in allowed or origin in allowed
        return urlsplit(origin).netloc == request.host  # same origin only

    def peers(self) -> Iterator[Peer]:
        """Every socket and stream of this instance (a copy: they may end meanwhile)."""
        yield from list(self.connections)
        yield from list(self.streams)

    def _register(self, peer: P, kind: set[P]) -> None:
        kind.add(peer)
        self.sessions.setdefault(peer.session_id, set()).add(peer)
        self._count()

    async def _unregister(self, peer: P, kind: set[P]) -> None:
        """Forget the peer, then wait until its close (if any) is written or given up."""
        peer.leave_all()
        kind.discard(peer)
        same_session = self.sessions.get(peer.session_id)
        if same_session is not None:
            same_session.discard(peer)
            if not same_session:
                del self.sessions[peer.session_id]
        self._count()
        if peer.closing is not None:
            with contextlib.suppress(Exception):
                await peer.closing

    def _count(self) -> None:
        self.metrics.connections.set(len(self.connections))
        self.stream_metrics.streams.set(len(self.streams))

    async def beat_streams(self) -> None:
        """Heartbeats for every stream: one sweep for all, no timer per stream."""
        while True:
            await asyncio.sleep(self.settings.sse_heartbeat)
            for stream in list(self.streams):
                stream.beat()

    # -- session lifetime ----------------------------------------------------------------

    async def _session_alive(self, peer: Peer) -> bool:
        """Check the session (after registering, so a revocation racing this is seen)."""
        try:
            state = await self.session_states.get(peer.session_id)
        except TRANSIENT_ERRORS:
            peer.close_soon(disconnect.UNAVAILABLE)
            return False
        alive_until = state.alive_until()
        if alive_until is None:
            peer.close_soon(disconnect.SESSION_ENDED)
            return False
        peer.expires_at = alive_until
        return True

    async def expire_sessions(self) -> None:
        """End peers whose session ran out; one sweep for all, no timer per peer.

        A session that was refreshed meanwhile lives on (rotation extends it), so each
        apparently expired peer is checked against the database first.
        """
        while True:
            await asyncio.sleep(SESSION_SWEEP_S)
            now = datetime.now(UTC).timestamp()
            due = [p for p in self.peers() if p.expires_at <= now and p.closing is None]
            for peer in due:
                await self._session_alive(peer)

    async def check_sessions_while_deaf(self) -> None:
        """End the peers of ended sessions while revocations may not arrive."""
        loop = asyncio.get_running_loop()
        deaf_since: float | None = None
        while True:
            await asyncio.sleep(DEAF_CHECK_S)
            if self.hub.broker.healthy:
                deaf_since = None
                continue
            if deaf_since is None:
                deaf_since = loop.time()
            if loop.time() - deaf_since >= DEAF_AFTER_S and not await self.check_sessions():
                # Neither Redis nor PostgreSQL: its peers would stay open and silent.
                # Another instance can serve them; they resume there with `since`.
                for peer in self.peers():
                    peer.close_soon(disconnect.CUT_OFF)

    async def check_sessions(self) -> bool:
        """End with 4401 the peers of every local session PostgreSQL says ended;
        False when PostgreSQL did not answer."""
        if not self.sessions:
            return True
        try:
            rows = await self.pool.fetch(_ENDED_SESSIONS, list(self.sessions))
        except TRANSIENT_ERRORS as error:
            log.warning("session check failed", extra={"error": repr(error)})
            return False
        for row in rows:
            self.revoke(row["family_id"])
        return True

    def revoke(self, session_id: uuid.UUID) -> None:
        for peer in list(self.sessions.get(session_id, ())):
            peer.close_soon(disconnect.SESSION_ENDED)

    async def follow_sessions(self) -> None:
        """Stay subscribed to the internal sessions channel (retrying while PG is down)."""
        listener = _SessionListener(self)
        while True:
            try:
                await self.hub.join(SESSIONS_CHANNEL, listener)
                self.following_sessions.set()
                return
            except TRANSIENT_ERRORS as error:
                log.warning("cannot follow sessions yet", extra={"error": repr(error)})
                await asyncio.sleep(1.0)

    # -- shutdown ------------------------------------------------------------------------

    async def close_all(self) -> None:
        """End every socket and stream with 1001 (clients resume on another instance)."""
        self.shutting_down = True
        for peer in self.peers():
            peer.close_soon(disconnect.SHUTDOWN)
        closing = [p.closing for p in self.peers() if p.closing is not None]
        if closing:
            await asyncio.wait(closing, timeout=self.settings.shutdown_timeout)


class _SessionListener:
    """The gateway's subscriber to the sessions channel."""

    backlogged = False

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def drained(self) -> None:
        """Never backlogged: revocations are handled as they come."""

    def resync(self, channel: str) -> None:
        """Revocations may have been lost: check every local session, then follow again."""
        task = asyncio.create_task(self._follow_again())
        self.gateway.background.add(task)
        task.add_done_callback(self.gateway.background.discard)

    async def _follow_again(self) -> None:
        await self.gateway.check_sessions()
        await self.gateway.follow_sessions()

    def deliver(self, event: Delivery) -> None:
        try:
            session_id = uuid.UUID(orjson.loads(event.json)["data"]["session_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("malformed sessions event", extra={"offset": event.offset})
            return
        self.gateway.revoke(session_id)

    def send(self, frame: bytes) -> None:
        """Presence frames never come on this channel."""


_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


async def _handle_next(ws: web.WebSocketResponse, connection: Connection) -> bool:
    """Read and handle the socket's next frame; False once it is closed or closing. (A
    call of its own, so the last frame is not kept while an idle socket waits for the
    next: tens of thousands of them would each hold their subscribe.)"""
    message = await ws.receive()
    if message.type is WSMsgType.TEXT:
        await connection.handle_text(message.data)
    elif message.type is WSMsgType.BINARY:
        connection.handle_binary()
    elif message.type in _ENDED:
        return False
    return connection.closing is None


def _failing_fast(redis: aioredis.Redis) -> bool:
    """Whether the client's breaker would refuse a call now (open, or its probe is out);
    a cluster client's breakers are per node, and a ticket's node is not known here."""
    pool = getattr(redis, "connection_pool", None)
    breaker = pool.breaker if isinstance(pool, BreakerPool) else None
    if breaker is None or not breaker.enabled or breaker.state == CLOSED:
        return False
    return breaker.clock() < breaker.until


async def _builtin(connection: Connection, frame: ClientFrame) -> None:
    raise AssertionError("built-in ops are handled by the connection")  # pragma: no cover
