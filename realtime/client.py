"""Reference Python client of jangteo's realtime protocol (docs/protocol.md).

Tests and load tests drive the gateway with it, over the WebSocket or, receive-only, over
Server-Sent Events; the JS client (clients/js/) mirrors it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeAlias, TypeVar

import aiohttp
import orjson
from yarl import URL

from realtime.disconnect import CloseCode, rule_for
from realtime.sse_frames import StreamDecoder, StreamMessage, format_cursor

State: TypeAlias = Literal["idle", "connecting", "live", "reconnecting", "closed"]
Transport: TypeAlias = Literal["websocket", "sse"]
# An access token, or an async callable returning a fresh one, asked on every (re)connect; if it
# raises anything but a network error the client stops with that as the cause.
TokenProvider: TypeAlias = str | Callable[[], Awaitable[str]]

TICKET_PATH = "/api/v1/ws/ticket"
WS_PATH = "/api/v1/ws"
SSE_PATH = "/api/v1/sse"
# An event stream silent this long is taken for dead (the server's comment lines come every
# JANGTEO_SSE_HEARTBEAT, 15 s, by default).
SSE_SILENCE_S = 45.0

# Channel errors worth retrying after a backoff; any other error about a channel drops it.
_RETRYABLE_CODES = frozenset({"unavailable", "rate_limited"})
# HTTP statuses that say "not now" rather than "never" (408 and 429 are the 4xx of that kind).
_TRANSIENT_4XX = frozenset({408, 429})

_T = TypeVar("_T")


class RealtimeClosed(Exception):
    """The client has stopped for good; ``code`` is the WebSocket close code or HTTP status."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ClientClosed(RealtimeClosed):
    """``close()`` was called: the normal end."""


class SessionRevoked(RealtimeClosed):
    """Closed with 4401, or the ticket endpoint refused the token (401): sign in again."""


class PolicyClosed(RealtimeClosed):
    """Closed with 1008 (bad ticket, repeated bad frames) or 1009 (a frame too large):
    reconnecting would only repeat it."""


class Rejected(RealtimeClosed):
    """The ticket request or the upgrade was refused with a 4xx, e.g. 403 for a bad Origin."""


class ProtocolError(RealtimeClosed):
    """The server sent something the protocol does not allow: a server bug, so stop loudly."""


@dataclass(frozen=True, slots=True)
class Event:
    """One change on a channel, delivered once and in offset order."""

    channel: str
    offset: int
    prev: int  # offset of the channel's previous event, 0 when none
    ts: int  # commit time, epoch milliseconds
    type: str
    data: Any


@dataclass(frozen=True, slots=True)
class Resync:
    """The server cannot replay ``channel`` from our offset: reload its state over REST.

    The client has already resubscribed without ``since``; events after the reload follow.
    """

    channel: str


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """An ``error`` frame as received; ``channel`` is set when it is about one."""

    code: str
    channel: str | None
    detail: str | None


class SubscriptionError(Exception):
    """The server refused a subscription (forbidden, bad_channel, too_many_subscriptions, ...)."""

    def __init__(self, error: ErrorFrame) -> None:
        super().__init__(f"{error.code} on {error.channel}: {error.detail}")
        self.error = error


Notice: TypeAlias = Event | Resync


class _Transient(Exception):
    """A failure that another attempt after a backoff may not see (5xx, 429, network)."""


class RealtimeClient:
    """One WebSocket that survives reconnects: new ticket, resubscribe with ``since``, dedupe.

    Use ``async with RealtimeClient(...) as client`` (or ``connect()`` / ``close()``).
    ``uniform`` and ``sleep`` are injectable so tests can check the backoff without a clock.

    With ``transport="sse"`` it receives over an event stream instead, which can only
    receive: every change of the channels (subscribe, unsubscribe, resync) reopens the
    stream with a new ticket and the kept offsets as its cursor, with no backoff; a stream
    that drops or ends is reopened by the same rules as a socket. Without channels no
    stream is open, and the client counts as live. ``heartbeat`` is then how long the
    stream may stay silent before it is taken for dead (``SSE_SILENCE_S`` by default).
    """

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        *,
        origin: str | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        heartbeat: float | None = None,
        request_timeout: float = 15.0,
        record_frames: bool = False,
        session: aiohttp.ClientSession | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: Transport = "websocket",
    ) -> None:
        base = URL(base_url.rstrip("/"))
        schemes = {"http": "ws", "https": "wss"}
        if base.scheme not in schemes:
            raise ValueError(f"base_url must be http:// or https://, not {base_url!r}")
        if transport not in ("websocket", "sse"):
            raise ValueError(f"transport must be websocket or sse, not {transport!r}")
        self.transport = transport
        self.ticket_url = URL(f"{base}{TICKET_PATH}")
        self.ws_url = URL(f"{base.with_scheme(schemes[base.scheme])}{WS_PATH}")
        self.sse_url = URL(f"{base}{SSE_PATH}")
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._token = token
        self._origin = origin
        self._heartbeat = heartbeat
        self._request_timeout = request_timeout
        self._record = record_frames
        self._session = session
        self._own_session = session is None
        self._uniform = uniform
        self._sleep = sleep

        self.state: State = "idle"
        self.closed_reason: RealtimeClosed | None = None
        # Per channel, the last offset received (or `subscribed.offset` when subscribed fresh).
        self.last_offsets: dict[str, int] = {}
        self.errors: list[ErrorFrame] = []  # every error frame, in order of arrival
        self.frames: list[dict[str, Any]] = []  # every frame received, when record_frames
        self.connections = 0  # sockets or streams opened (upgrades or 200s)
        self.duplicates = 0  # events dropped because offset <= last offset of their channel
        self.gaps = 0  # events whose `prev` is after the last offset we had: one was missed

        self._wanted: dict[str, None] = {}  # channels to (re)subscribe, in subscription order
        self._since_sent: dict[str, int | None] = {}  # `since` of the last subscribe sent
        self._waiters: dict[str, list[asyncio.Future[int]]] = {}
        self._retries: dict[str, asyncio.Task[None]] = {}
        self._retry_attempts: dict[str, int] = {}
        self._events: asyncio.Queue[Notice | None] = asyncio.Queue()  # None: closed
        self._errors_read = 0
        self._changed = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._stream: aiohttp.ClientResponse | None = None
        self._stream_changes = 0  # channel changes asked for: each reopens the stream
        self._runner: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the connection task (it reconnects on its own) and wait until live.

        Like every wait here it has no timeout of its own: bound it with ``asyncio.timeout``.
        """
        if self.state == "idle":
            if self._session is None:
                client_timeout = aiohttp.ClientTimeout(total=self._request_timeout)
                self._session = aiohttp.ClientSession(timeout=client_timeout)
            self._set_state("connecting")
            self._runner = asyncio.create_task(self._run(), name="realtime-client")
        await self.wait_live()

    async def close(self) -> None:
        """Close the socket with 1000 and stop reconnecting; safe to call twice."""
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner})
        # Also covers a client never started, or a runner cancelled before it began.
        self._finish(ClientClosed("closed by the client", 1000))
        retries = list(self._retries.values())
        if retries:
            await asyncio.wait(retries)
        if self._own_session and self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> RealtimeClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- subscriptions -----------------------------------------------------------------------

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return tuple(self._wanted)

    async def subscribe(self, channel: str, since: int | None = None) -> int:
        """Subscribe and wait for ``subscribed``, so nothing published after this is missed.

        Returns the channel's latest offset. Survives reconnects and resyncs while waiting;
        raises ``SubscriptionError`` if the server refuses the channel.
        """
        self._check_usable()
        self._wanted[channel] = None
        self._cancel_retry(channel)
        if since is None:
            self.last_offsets.pop(channel, None)
        else:
            self.last_offsets[channel] = since
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        try:
            await self._send_subscribe(channel)
            return await waiter
        finally:
            waiters = self._waiters.get(channel, [])
            if waiter in waiters:
                waiters.remove(waiter)

    async def unsubscribe(self, channel: str) -> None:
        """Stop the channel; its events still in flight are dropped, not delivered.

        A ``subscribe()`` of it still waiting raises ``SubscriptionError`` (code "unsubscribed").
        """
        self._wanted.pop(channel, None)
        self.last_offsets.pop(channel, None)
        self._since_sent.pop(channel, None)
        self._cancel_retry(channel)
        gone = ErrorFrame("unsubscribed", channel, "unsubscribed while waiting")
        for waiter in self._waiters.pop(channel, []):
            if not waiter.done():
                waiter.set_exception(SubscriptionError(gone))
        if self._ws is not None:
            await self._send(self._ws, {"op": "unsubscribe", "channel": channel})
        elif self.transport == "sse":
            self._reopen_stream()

    # -- what arrives ------------------------------------------------------------------------

    async def next_event(self) -> Notice:
        """The next event or resync notice; once stopped and drained, raises ``closed_reason``."""
        item = await self._events.get()
        if item is None:
            self._events.put_nowait(None)  # every later call must see the end too
            raise self._stopped()
        return item

    async def events(self) -> AsyncIterator[Notice]:
        """Every event and resync notice in order; ends after ``close()``, raises on other stops."""
        while True:
            try:
                item = await self.next_event()
            except ClientClosed:
                return
            yield item

    async def next_error(self) -> ErrorFrame:
        """The next error frame this method has not returned yet (all stay in ``errors``)."""

        def unread_or_closed() -> bool:
            return len(self.errors) > self._errors_read or self.state == "closed"

        await self.wait_until(unread_or_closed)
        if len(self.errors) == self._errors_read:
            raise self._stopped()
        self._errors_read += 1
        return self.errors[self._errors_read - 1]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is checked after every frame and state change."""
        while not predicate():
            await self._changed.wait()

    async def wait_live(self) -> None:
        """Wait until a socket is open and every channel's subscribe was sent on it."""
        await self.wait_until(lambda: self.state in ("live", "closed"))
        if self.state == "closed":
            raise self._stopped()

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)], so clients spread out."""
        return self._uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** min(attempt, 64)))

    # -- connection task ---------------------------------------------------------------------

    async def _run(self) -> None:
        reason: RealtimeClosed = ClientClosed("closed by the client", 1000)  # if cancelled
        try:
            reason = await self._connect_loop()
        except RealtimeClosed as exc:
            reason = exc
        except Exception as exc:
            reason = RealtimeClosed(f"client failed: {exc!r}")
            reason.__cause__ = exc
        finally:
            self._finish(reason)

    async def _connect_loop(self) -> RealtimeClosed:
        attempt = 0
        connect_once = self._stream_until_dropped if self.transport == "sse" else self._connect_once
        while True:
            fatal, served = await connect_once()
            if fatal is not None:
                return fatal
            if served:
                attempt = 0
            self._set_state("reconnecting" if self.connections else "connecting")
            await self._sleep(self.backoff_delay(attempt))
            attempt += 1

    async def _connect_once(self) -> tuple[RealtimeClosed | None, bool]:
        """One socket from ticket to close: (why to stop, or None to retry; did it serve us).

        "Served" means the server sent a frame: an instance that is full or rejects the ticket
        accepts the upgrade and closes at once, which must not reset the backoff.
        """
        assert self._session is not None
        try:
            ticket = await self._fetch_ticket()
            ws = await self._session.ws_connect(
                self.ws_url.with_query(ticket=ticket),
                origin=self._origin,
                heartbeat=self._heartbeat,
            )
        except aiohttp.WSServerHandshakeError as exc:
            refusal = _refusal(exc.status, "WebSocket upgrade")
            if refusal is None:
                return None, False
            return refusal, False
        except RealtimeClosed as exc:
            return exc, False
        except (_Transient, aiohttp.ClientError, OSError, TimeoutError):
            return None, False

        self.connections += 1
        self._ws = ws
        served = False
        close_code: int | None = None
        try:
            for channel in list(self._wanted):  # channels added meanwhile send themselves
                self._cancel_retry(channel)
                await self._send_subscribe(channel)
            self._set_state("live")
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    served = True
                    await self._on_frame(msg.data)
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    # The server's code; ws.close_code may say 1006 when the server drops
                    # the connection before our echoed close frame is written.
                    close_code = msg.data
                    break
                elif msg.type is not aiohttp.WSMsgType.BINARY:
                    break  # CLOSING, CLOSED or ERROR; binary frames are not ours
        finally:
            self._ws = None
            await ws.close()
        return _fatal_close(close_code if close_code is not None else ws.close_code), served

    # -- event stream ------------------------------------------------------------------------

    async def _stream_until_dropped(self) -> tuple[RealtimeClosed | None, bool]:
        """Event streams, each reopened at once when the channels change, until one drops,
        ends or is refused: (why to stop, or None to retry; did any serve us)."""
        served_any = False
        while True:
            if not self._wanted:
                self._set_state("live")  # nothing to receive: no stream is needed
                await self.wait_until(lambda: bool(self._wanted))
            changes = self._stream_changes
            fatal, served = await self._stream_once()
            served_any = served_any or served
            if fatal is not None or self._stream_changes == changes:
                return fatal, served_any

    async def _stream_once(self) -> tuple[RealtimeClosed | None, bool]:
        """One event stream from ticket to end; "served" as for a socket: a message came."""
        assert self._session is not None
        channels = tuple(self._wanted)
        since = [self.last_offsets.get(channel) for channel in channels]
        query = [("channel", channel) for channel in channels]
        if any(field is not None for field in since):
            query.append(("since", format_cursor(since).decode()))
        headers = {} if self._origin is None else {"Origin": self._origin}
        silence = self._heartbeat if self._heartbeat is not None else SSE_SILENCE_S
        timeout = aiohttp.ClientTimeout(sock_connect=self._request_timeout, sock_read=silence)
        changes = self._stream_changes
        try:
            ticket = await self._fetch_ticket()
            response = await self._session.get(
                self.sse_url.with_query([("ticket", ticket), *query]),
                headers=headers,
                timeout=timeout,
            )
        except RealtimeClosed as exc:
            return exc, False
        except (_Transient, aiohttp.ClientError, OSError, TimeoutError):
            return None, False
        served = False
        close_code: int | None = None
        try:
            if response.status != 200:
                return _refusal(response.status, "event stream request"), False
            if response.content_type != "text/event-stream":
                raise ProtocolError(f"event stream answered as {response.content_type!r}")
            self.connections += 1
            self._stream = response
            self._since_sent.update(zip(channels, since, strict=True))
            self._set_state("live")
            if self._stream_changes != changes:
                return None, False  # the channels changed while it opened: open it again
            served, close_code = await self._read_stream(response)
        finally:
            self._stream = None
            response.close()
        return _fatal_close(close_code), served

    async def _read_stream(self, response: aiohttp.ClientResponse) -> tuple[bool, int | None]:
        """Handle its messages until it ends: (was a message handled, the close code sent)."""
        decoder = StreamDecoder()
        served = False
        try:
            async for data in response.content.iter_any():
                for item in decoder.feed(data):
                    if not isinstance(item, StreamMessage):
                        continue  # a comment: the opening line, a heartbeat
                    frame = self._stream_frame(item)
                    if frame.get("op") == "close":
                        return served, _field(frame, "code", int)
                    served = True
                    await self._on_frame_object(frame)
        except UnicodeDecodeError as exc:
            raise ProtocolError("event stream is not UTF-8") from exc
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass  # dropped, or closed here to change the channels
        return served, None

    def _stream_frame(self, message: StreamMessage) -> dict[str, Any]:
        if message.fields not in (("data",), ("id", "data")):
            raise ProtocolError(f"event stream message with fields {message.fields!r}")
        return self._parse_frame(message.data)

    def _reopen_stream(self) -> None:
        """Ask for the stream to be reopened with the channels as they are now."""
        self._stream_changes += 1
        if self._stream is not None:
            self._stream.close()
        self._notify()

    async def _fetch_ticket(self) -> str:
        """A new single-use ticket for one upgrade (any instance accepts it for 30 s)."""
        assert self._session is not None
        token = self._token if isinstance(self._token, str) else await self._token()
        headers = {"Authorization": f"Bearer {token}"}
        if self._origin is not None:
            headers["Origin"] = self._origin
        async with self._session.post(self.ticket_url, headers=headers) as response:
            if response.status != 201:
                refusal = _refusal(response.status, "ticket request")
                if refusal is None:
                    raise _Transient(f"ticket request answered {response.status}")
                raise refusal
            body = await response.read()
        try:
            ticket = orjson.loads(body)["ticket"]
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            raise ProtocolError(f"ticket response without a ticket: {body[:200]!r}") from exc
        if not isinstance(ticket, str) or not ticket:
            raise ProtocolError(f"ticket response without a ticket: {body[:200]!r}")
        return ticket

    # -- frames ------------------------------------------------------------------------------

    async def _on_frame(self, text: str) -> None:
        await self._on_frame_object(self._parse_frame(text))

    @staticmethod
    def _parse_frame(text: str) -> dict[str, Any]:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"frame is not JSON: {text[:200]!r}") from exc
        if not isinstance(frame, dict):
            raise ProtocolError(f"frame is not an object: {text[:200]!r}")
        return frame

    async def _on_frame_object(self, frame: dict[str, Any]) -> None:
        if self._record:
            self.frames.append(frame)
        op = frame.get("op")
        if op == "event":
            self._on_event(frame)
        elif op == "subscribed":
            self._on_subscribed(frame)
        elif op == "error":
            await self._on_error(frame)
        # unsubscribed, pong and ops of later versions need nothing from us.
        self._notify()

    def _on_event(self, frame: dict[str, Any]) -> None:
        event = Event(
            channel=_field(frame, "channel", str),
            offset=_field(frame, "offset", int),
            prev=_field(frame, "prev", int),
            ts=_field(frame, "ts", int),
            type=_field(frame, "type", str),
            data=frame.get("data"),
        )
        if event.channel not in self._wanted:
            return  # in flight when we unsubscribed
        last = self.last_offsets.get(event.channel)
        if last is not None:
            if event.offset <= last:
                self.duplicates += 1
                return
            if event.prev > last:
                self.gaps += 1
        self.last_offsets[event.channel] = event.offset
        self._events.put_nowait(event)

    def _on_subscribed(self, frame: dict[str, Any]) -> None:
        channel = _field(frame, "channel", str)
        offset = _field(frame, "offset", int)
        if channel not in self._wanted:
            return
        if self._since_sent.get(channel) is None:
            # Fresh subscription: the server sends what comes after `offset`.
            self.last_offsets[channel] = max(offset, self.last_offsets.get(channel, offset))
        self._retry_attempts.pop(channel, None)
        for waiter in self._waiters.pop(channel, []):
            if not waiter.done():
                waiter.set_result(offset)

    async def _on_error(self, frame: dict[str, Any]) -> None:
        error = ErrorFrame(
            code=_field(frame, "code", str),
            channel=_optional_str(frame, "channel"),
            detail=_optional_str(frame, "detail"),
        )
        self.errors.append(error)
        channel = error.channel
        if channel is None or channel not in self._wanted:
            return
        if error.code == "resync":
            self.last_offsets.pop(channel, None)
            self._events.put_nowait(Resync(channel))
            await self._send_subscribe(channel)
        elif error.code in _RETRYABLE_CODES:
            self._retry_later(channel)
        else:
            self._wanted.pop(channel, None)
            self.last_offsets.pop(channel, None)
            for waiter in self._waiters.pop(channel, []):
                if not waiter.done():
                    waiter.set_exception(SubscriptionError(error))

    # -- sending -----------------------------------------------------------------------------

    async def _send_subscribe(self, channel: str) -> None:
        """Subscribe on the current socket, if any, from the last offset we hold (an event
        stream is reopened for it)."""
        if self.transport == "sse":
            self._reopen_stream()
            return
        ws = self._ws
        if ws is None:
            return  # the next connection subscribes every wanted channel
        since = self.last_offsets.get(channel)
        frame: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if since is not None:
            frame["since"] = since
        self._since_sent[channel] = since
        await self._send(ws, frame)

    @staticmethod
    async def _send(ws: aiohttp.ClientWebSocketResponse[bool], frame: dict[str, Any]) -> None:
        # A socket closing under us is the connection task's business: it resubscribes all.
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_str(orjson.dumps(frame).decode())

    def _retry_later(self, channel: str) -> None:
        attempt = self._retry_attempts.get(channel, 0)
        self._retry_attempts[channel] = attempt + 1
        self._cancel_retry(channel)
        delay = self.backoff_delay(attempt)
        self._retries[channel] = asyncio.create_task(self._subscribe_after(channel, delay))

    async def _subscribe_after(self, channel: str, delay: float) -> None:
        await self._sleep(delay)
        if self._retries.get(channel) is asyncio.current_task():
            del self._retries[channel]
        if channel in self._wanted:
            await self._send_subscribe(channel)

    def _cancel_retry(self, channel: str) -> None:
        task = self._retries.pop(channel, None)
        if task is not None:
            task.cancel()

    # -- state -------------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self.state = state
        self._notify()

    def _notify(self) -> None:
        """Wake every ``wait_until``: they re-check their predicate."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _finish(self, reason: RealtimeClosed) -> None:
        if self.state == "closed":
            return
        self.closed_reason = reason
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(reason)
        self._waiters.clear()
        for task in self._retries.values():
            task.cancel()
        self._events.put_nowait(None)
        self._set_state("closed")

    def _stopped(self) -> RealtimeClosed:
        return self.closed_reason or RealtimeClosed("the client is not running")

    def _check_usable(self) -> None:
        if self.state == "closed":
            raise self._stopped()
        if self.state == "idle":
            raise RuntimeError("call connect() (or use `async with`) before subscribing")


def _fatal_close(code: int | None) -> RealtimeClosed | None:
    """Why a server close code must stop the client, or None when reconnecting is right.

    Reconnecting always takes the backoff's next delay, which a served connection reset:
    after 1001 that is at most ``backoff_base`` (jitter only, so that the sockets of an
    instance going away do not all arrive at once), after repeated 1013s it grows.
    """
    rule = rule_for(code)
    if rule.reconnect:
        return None
    if code == CloseCode.SESSION_ENDED:
        return SessionRevoked(f"session revoked or expired ({code}): {rule.then}", code)
    return PolicyClosed(f"closed with {code}: {rule.then}", code)


def _refusal(status: int, what: str) -> RealtimeClosed | None:
    """A 4xx that retrying cannot fix stops the client; anything else is worth a retry."""
    if status == 401:
        return SessionRevoked(f"{what} refused the access token (401)", status)
    if 400 <= status < 500 and status not in _TRANSIENT_4XX:
        return Rejected(f"{what} answered {status}", status)
    return None


def _field(frame: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = frame.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(f"{frame.get('op')!r} frame without a valid {name!r}: {frame!r}"[:300])
    return value


def _optional_str(frame: dict[str, Any], name: str) -> str | None:
    return None if frame.get(name) is None else _field(frame, name, str)
