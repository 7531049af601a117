"""Prometheus metrics of the realtime path, registered in the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from realtime import disconnect

# The labels of jangteo_ws_closes_total: each Disconnect's metric.
CLOSE_REASONS = tuple(
    sorted({
        found.metric for found in vars(disconnect).values()
        if isinstance(found, disconnect.Disconnect)
    })
)  # fmt: skip
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "jangteo_relay_events_published", "Outbox events published by this relay",
            registry=registry,
        )  # fmt: skip
        self.republished = Counter(
            "jangteo_relay_events_republished",
            "Events published again after a takeover or a failed publish",
            registry=registry,
        )
        self.publish_failures = Counter(
            "jangteo_relay_publish_failures", "Batches the broker refused", registry=registry
        )
        self.pruned = Counter(
            "jangteo_relay_events_pruned", "Events deleted after the retention window",
            registry=registry,
        )  # fmt: skip
        self.lag = Histogram(
            "jangteo_relay_lag_seconds", "Commit to publish, per event",
            buckets=LAG_BUCKETS, registry=registry,
        )  # fmt: skip
        self.step_downs = Counter(
            "jangteo_relay_step_downs",
            "Times this relay gave up leadership because it could not publish",
            registry=registry,
        )
        self.handed_over = Counter(
            "jangteo_relay_partitions_handed_over",
            "Partitions this relay gave to a waiting instance to spread leadership",
            registry=registry,
        )
        self.leader = Gauge(
            "jangteo_relay_leader", "1 for each relay partition this process leads",
            ["partition"], registry=registry,
        )  # fmt: skip


class HubMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "jangteo_hub_events_received", "Events received from the broker", registry=registry
        )
        self.deliveries = Counter(
            "jangteo_ws_deliveries", "Event frames queued to sockets", registry=registry
        )
        self.duplicates = Counter(
            "jangteo_hub_duplicates_dropped", "Events dropped as already delivered",
            registry=registry,
        )  # fmt: skip
        self.gap_fills = Counter(
            "jangteo_hub_gap_fills", "Reads of missed events from PostgreSQL, by reason",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.filled = Counter(
            "jangteo_hub_events_filled", "Events delivered from PostgreSQL instead of Redis",
            registry=registry,
        )  # fmt: skip
        self.resyncs = Counter(
            "jangteo_hub_resyncs",
            "Subscribers told to reload a channel whose events the log cannot chain",
            registry=registry,
        )
        self.resumes = Counter(
            "jangteo_hub_resumes",
            "Subscriptions with since, by what answered them: the feed's recent events"
            " (memory) or a read of PostgreSQL (log)",
            ["source"], registry=registry,
        )  # fmt: skip
        self.channels = Gauge(
            "jangteo_hub_channels", "Channels with local subscribers", registry=registry
        )


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "jangteo_ws_connections", "Open WebSocket connections", registry=registry
        )
        self.closes = Counter(
            "jangteo_ws_closes", "WebSocket connections closed by the server, by reason",
            ["reason"], registry=registry,
        )  # fmt: skip
        # Every reason's series from the start (at 0): an alert on increase() of one that
        # first appears at 1 would miss that first close.
        for reason in CLOSE_REASONS:
            self.closes.labels(reason)
        self.bad_frames = Counter(
            "jangteo_ws_bad_frames", "Client frames answered with an error", ["code"],
            registry=registry,
        )  # fmt: skip
