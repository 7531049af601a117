"""The broker carries published events between instances; the hub listens through a sink.

Three implementations sit beside this interface: ``broker_redis`` (Redis pub/sub, one
subscription per channel per process), ``broker_redis_cluster`` (sharded pub/sub on a
Redis Cluster, one connection per master) and ``broker_memory`` (an in-process twin for
unit tests). Messages are ``b"<offset> <prev> "`` followed by the event frame's JSON, or ``b"!"``
followed by an ephemeral frame (presence), which has no offset. With tracing on, an event
whose change was traced starts with ``b"@<traceparent> "``, for the delivery to link to;
the hub takes it off, and no frame ever carries it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol


class BrokerSink(Protocol):
    """What receives messages: the hub."""

    def on_message(self, channel: str, payload: bytes) -> None:
        """A message of a subscribed channel, in the order the relay published it."""

    def on_resubscribed(self, channels: Collection[str] | None = None) -> None:
        """Subscriptions are live again after an outage: anything may have been missed on
        ``channels`` (None: on every channel)."""


class Broker(Protocol):
    """Publish to channels and receive the channels this process subscribed to."""

    @property
    def healthy(self) -> bool:
        """True while messages published now are known to reach this process."""

    def bind(self, sink: BrokerSink) -> None:
        """Send every received message to ``sink``; call once, before subscribing."""

    async def subscribe(self, channel: str) -> None:
        """Return once messages published on ``channel`` from now on reach the sink.

        While the broker is disconnected it returns at once: the reconnect calls
        ``on_resubscribed`` afterwards, and the hub backfills from the database.
        """

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish in order; raise when the broker cannot take them."""

    async def close(self) -> None:
        """Stop receiving and release connections."""


def encode_message(offset: int, prev: int, event_json: bytes) -> bytes:
    return b"%d %d %b" % (offset, prev, event_json)


EPHEMERAL_MARK = b"!"  # presence and typing: no offset, never stored, never replayed


def encode_ephemeral(frame_json: bytes) -> bytes:
    return EPHEMERAL_MARK + frame_json


TRACE_MARK = b"@"  # an event message that names the trace of its change first


def encode_traced(traceparent: str, message: bytes) -> bytes:
    return b"%b%b %b" % (TRACE_MARK, traceparent.encode(), message)


def split_trace(payload: bytes) -> tuple[str | None, bytes]:
    """``(traceparent or None, the event message)``; raises ValueError on a mark with
    nothing after it."""
    if payload[:1] != TRACE_MARK:
        return None, payload
    traceparent, message = payload[1:].split(b" ", 1)
    return traceparent.decode(), message


def decode_message(payload: bytes) -> tuple[int, int, bytes]:
    """``(offset, prev, event JSON)``; raises ValueError on anything else."""
    offset, prev, event_json = payload.split(b" ", 2)
    return int(offset), int(prev), event_json
