"""An in-process twin of the Redis broker, for unit tests of the hub and the relay.

Several ``MemoryBroker`` clients on one ``MemoryBus`` behave like several instances on
one Redis: a message reaches every client subscribed to its channel, synchronously and in
order. ``disconnect`` and ``reconnect`` stand in for a Redis outage.
"""

from __future__ import annotations

from collections.abc import Sequence

from realtime.broker import BrokerSink


class MemoryBus:
    """The shared "server": which clients hear which channel."""

    def __init__(self) -> None:
        self.clients: list[MemoryBroker] = []
        self.published: list[tuple[str, bytes]] = []

    def client(self) -> MemoryBroker:
        broker = MemoryBroker(self)
        self.clients.append(broker)
        return broker

    def deliver(self, channel: str, payload: bytes) -> None:
        self.published.append((channel, payload))
        for client in self.clients:
            client.receive(channel, payload)


class MemoryBroker:
    """One process's connection to a ``MemoryBus``."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus
        self.sink: BrokerSink | None = None
        self.channels: set[str] = set()
        self.connected = True
        self.fail_publish = False

    @property
    def healthy(self) -> bool:
        return self.connected

    def bind(self, sink: BrokerSink) -> None:
        self.sink = sink

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)

    def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if self.fail_publish:
            raise ConnectionError("memory broker told to fail")
        for channel, payload in messages:
            self.bus.deliver(channel, payload)

    def receive(self, channel: str, payload: bytes) -> None:
        if self.connected and channel in self.channels and self.sink is not None:
            self.sink.on_message(channel, payload)

    def disconnect(self) -> None:
        """Messages published from now on are lost for this client."""
        self.connected = False

    def reconnect(self) -> None:
        self.connected = True
        if self.sink is not None:
            self.sink.on_resubscribed()

    async def close(self) -> None:
        self.channels.clear()
        if self in self.bus.clients:
            self.bus.clients.remove(self)
