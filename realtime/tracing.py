"""Spans of the realtime path, each linked to the traces of the changes it carries.

A relay publish is one span per batch, with a link to each traced change's request span;
an instance's delivery of an event to its sockets is one span per event per instance,
linked to that event's request span. Links, not children: a batch carries the events of
many requests, and a child span per socket would be thousands of spans per event. Only
events whose change was traced (``trace_context`` of the outbox row) get any span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from db.trace_context import span_context_of
from realtime.event import Delivery

CHANNEL = "jangteo.channel"
OFFSET = "jangteo.offset"
INSTANCE = "jangteo.instance"
PARTITION = "jangteo.relay.partition"
EVENTS = "jangteo.events"
SOCKETS = "jangteo.sockets"
PUBLISH_SPAN = "jangteo.relay.publish"
DELIVER_SPAN = "jangteo.deliver"


@dataclass(frozen=True, slots=True)
class EventTracing:
    """The tracer of one instance's relay and hub, and the instance's name on their spans."""

    tracer: Tracer
    instance: str

    def publish_span(self, partition: int, rows: Sequence[asyncpg.Record]) -> Span | None:
        """A span for publishing ``rows`` (assigned outbox rows), linked to each traced
        change; None when none of them was traced."""
        links = [
            Link(context, {CHANNEL: row["channel"], OFFSET: row["position"]})
            for row in rows
            if row["trace_context"] is not None
            and (context := span_context_of(row["trace_context"])) is not None
        ]
        if not links:
            return None
        return self.tracer.start_span(
            PUBLISH_SPAN,
            kind=SpanKind.PRODUCER,
            links=links,
            attributes={
                INSTANCE: self.instance,
                PARTITION: partition,
                EVENTS: len(rows),
                f"{OFFSET}.first": rows[0]["position"],
                f"{OFFSET}.last": rows[-1]["position"],
            },
        )

    def delivery_span(self, event: Delivery) -> Span | None:
        """A span for handing ``event`` to this instance's sockets, linked to its change."""
        assert event.trace is not None
        context = span_context_of(event.trace)
        if context is None:
            return None
        attributes: dict[str, AttributeValue] = {CHANNEL: event.channel, OFFSET: event.offset}
        return self.tracer.start_span(
            DELIVER_SPAN,
            kind=SpanKind.CONSUMER,
            links=[Link(context, attributes)],
            attributes={**attributes, INSTANCE: self.instance},
        )
