"""A user's WebSocket: websocket-client under locust's gevent, with a greenlet reading it.

Everything HTTP (tickets) happens on the user's own greenlet; the reader greenlet only
reads frames, hands replies (``subscribed``, ``ack``, ``pong``, ``error``) to whoever
waits for them, and keeps, per channel, what arrived: the ``subscribed`` offset and every
event's offset and prev. When the socket drops, the next call from the user reconnects
with a fresh ticket and resumes every channel with ``since`` = the last offset it saw.

Reported to locust as request type ``WS``: ``connect`` (ticket + handshake),
``subscribe`` (frame to ``subscribed``), ``receive <event type>`` (commit to receive:
now minus the frame's ``ts``), ``send->ack`` (chat), ``ping->pong``, and ``disconnected``
(a failure: the server closed the socket or it broke).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import gevent
import websocket
from gevent.event import AsyncResult
from locust.exception import StopUser

from loadtests.audit import Stream
from loadtests.scenarios.common import API, RECORDS, TIMEOUT, MarketUser, expect, now_ms


class LiveSocket:
    def __init__(self, user: MarketUser) -> None:
        self.user = user
        self.streams: dict[str, Stream] = {}
        self.resuming: set[str] = set()  # channels whose `since` subscribe is unanswered
        self.waiting: dict[str, AsyncResult] = {}
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.broken = False
        self.stopping = False
        self.reconnects = 0

    # -- reporting ---------------------------------------------------------------------

    def report(
        self, name: str, millis: float, length: int = 0, error: Exception | None = None
    ) -> None:
        self.user.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=max(0.0, millis),
            response_length=length,
            exception=error,
            context={},
        )

    # -- the user's side ---------------------------------------------------------------

    def connect(self) -> bool:
        started = time.perf_counter()
        with self.user.client.post(
            f"{API}/ws/ticket",
            headers=self.user.auth,
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            body = expect(response, 201, "ticket")
        if body is None:
            return False
        base = self.user.host or ""
        url = "ws" + base.removeprefix("http") + f"{API}/ws?ticket={body['ticket']}"
        try:
            ws = websocket.create_connection(
                url, timeout=TIMEOUT, suppress_origin=True, skip_utf8_validation=True
            )
        except (websocket.WebSocketException, OSError) as error:
            self.report("connect", (time.perf_counter() - started) * 1000, error=error)
            return False
        ws.settimeout(None)  # the reader blocks until a frame comes or the socket closes
        self.report("connect", (time.perf_counter() - started) * 1000)
        self.ws, self.broken = ws, False
        self.reader = gevent.spawn(self._read, ws)
        return True

    def ensure(self) -> bool:
        """Connected, with every channel resumed after a drop; False when that failed."""
        if self.ws is not None and not self.broken:
            return True
        self.reconnects += 1
        if not self.connect():
            return False
        for stream in list(self.streams.values()):
            self.subscribe(stream.channel, resume=True)
        return True

    def subscribe(self, channel: str, *, resume: bool = False) -> bool:
        stream = self.streams.setdefault(channel, Stream(channel))
        frame: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if resume and stream.last is not None:
            frame["since"] = stream.last
            self.resuming.add(channel)
        reply = self.request(f"subscribed:{channel}", frame, "subscribe")
        if reply is not None and reply.get("code") == "resync":
            self.resuming.discard(channel)  # too far behind: start over from now, a new segment
            reply = self.request(f"subscribed:{channel}", {"op": "subscribe", "channel": channel})
        return reply is not None and reply.get("op") == "subscribed"

    def request(
        self, key: str, frame: dict[str, Any], name: str | None = None
    ) -> dict[str, Any] | None:
        """Send ``frame`` and wait for the reply the reader files under ``key``."""
        if self.ws is None or self.broken:
            return None
        waiter = self.waiting[key] = AsyncResult()
        started = time.perf_counter()
        error: Exception | None = None
        reply: dict[str, Any] | None = None
        try:
            self.ws.send(json.dumps(frame))
            reply = waiter.get(timeout=TIMEOUT)
        except gevent.Timeout:
            error = TimeoutError(f"no reply to {frame['op']} in {TIMEOUT} s")
        except (websocket.WebSocketException, OSError) as failure:
            error = failure
        finally:
            self.waiting.pop(key, None)
        if reply is None and error is None:
            error = ConnectionError("the socket closed before the reply")
        if reply is not None and reply.get("op") == "error":
            error = RuntimeError(f"{reply.get('code')}: {reply.get('detail')}")
        if name is not None:
            self.report(name, (time.perf_counter() - started) * 1000, error=error)
        return reply

    def ping(self) -> None:
        self.request("pong", {"op": "ping"}, "ping->pong")

    def close(self, drain: float) -> None:
        """Keep reading ``drain`` seconds after the load stopped, close, write the records.

        ``until_ms`` is taken before the drain: every event committed before it must have
        arrived by the end of the drain.
        """
        until_ms = now_ms()
        drained = False
        try:
            if self.streams:
                self.ensure()
            gevent.sleep(drain)
            drained = True
        finally:
            self.stopping = True
            ws = self.ws
            if ws is not None:
                with contextlib.suppress(websocket.WebSocketException, OSError):
                    ws.send_close()
                if self.reader is not None:
                    self.reader.join(timeout=2)
                ws.abort()  # type: ignore[no-untyped-call]
                ws.shutdown()  # type: ignore[no-untyped-call]
            if self.reader is not None:
                self.reader.kill(block=False)
            for stream in self.streams.values():
                RECORDS.write(
                    "stream",
                    user_id=self.user.user_id,
                    role=self.user.role,
                    host=self.user.host,
                    channel=stream.channel,
                    segments=stream.segments,
                    until_ms=until_ms,
                    drained=drained,
                    reconnects=self.reconnects,
                )

    # -- the reader greenlet -----------------------------------------------------------

    def _read(self, ws: websocket.WebSocket) -> None:
        reason: Exception | None = None
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    reason = ConnectionError(f"closed by the server: {code} {data[2:]!r}")
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self._frame(json.loads(data), len(data))
        except (websocket.WebSocketException, OSError, ValueError) as error:
            reason = error
        if not self.stopping:
            self.broken = True
            self.report("disconnected", 0, error=reason or ConnectionError("closed"))
            for waiter in self.waiting.values():
                waiter.set(None)

    def _frame(self, frame: dict[str, Any], length: int) -> None:
        op = frame.get("op")
        if op == "event":
            self._event(frame, length)
        elif op == "subscribed":
            channel = frame["channel"]
            stream = self.streams.setdefault(channel, Stream(channel))
            stream.subscribed(frame["offset"], stream.last if channel in self.resuming else None)
            self.resuming.discard(channel)
            self._answer(f"subscribed:{channel}", frame)
        elif op == "ack":
            self._answer(f"ack:{frame.get('client_id')}", frame)
        elif op == "pong":
            self._answer("pong", frame)
        elif op == "error":
            if frame.get("client_id"):
                self._answer(f"ack:{frame['client_id']}", frame)
            elif frame.get("channel"):
                self._answer(f"subscribed:{frame['channel']}", frame)
            RECORDS.write("ws_error", user_id=self.user.user_id, frame=frame)

    def _event(self, frame: dict[str, Any], length: int) -> None:
        received = now_ms()
        stream = self.streams.get(frame["channel"])
        if stream is None or not stream.segments:
            RECORDS.write("ws_stray", user_id=self.user.user_id, frame=frame)
            return
        stream.event(frame["offset"], frame["prev"])
        self.report(f"receive {frame['type']}", received - float(frame["ts"]), length)

    def _answer(self, key: str, frame: dict[str, Any]) -> None:
        waiter = self.waiting.get(key)
        if waiter is not None and not waiter.ready():
            waiter.set(frame)


def live_socket(user: MarketUser, channels: list[str]) -> LiveSocket:
    """Connect ``user`` and subscribe to ``channels``; StopUser when it cannot connect."""
    live = LiveSocket(user)
    if not live.connect():
        raise StopUser()
    for channel in channels:
        live.subscribe(channel)
    return live
