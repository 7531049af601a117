"""Each process's own copy of hot cache entries, dropped the moment Redis says they changed.

Reading Redis costs a network round trip per request; this copy costs a dict lookup.
It is only used while this process is subscribed to the invalidation channel
(``invalidation.py``) and holds a lease that Redis renews by answering its pings: a
process that cannot hear invalidations, or has not heard from Redis lately, serves
nothing from it. An entry fetched while an invalidation arrived is not kept, so a copy
can never be older than the last change this process has heard of.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_ENTRIES = 20_000
TTL_S = 30.0  # a safety net only; invalidations normally remove entries first


class NearCache:
    def __init__(self, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.enabled = False  # becomes True once subscribed, False when the subscription drops
        self.epoch = 0  # +1 on every invalidation heard
        self.lease_until = 0.0  # time.monotonic() until which copies may be served
        self._connection_closing: Callable[[], bool] = lambda: False
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()
        self._by_base: dict[str, set[tuple[str, str]]] = {}

    def get(self, base: str, variant: str = "") -> bytes | None:
        key = (base, variant)
        if not self.enabled or self._connection_closing():
            return None
        found = self._entries.get(key)
        if found is None:
            return None
        stored_at, value = found
        now = time.monotonic()
        if now > self.lease_until or now - stored_at > self.ttl_s:
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, base: str, variant: str, value: bytes, epoch: int) -> None:
        """Keep ``value`` unless an invalidation arrived since ``epoch`` was read."""
        if not self.enabled or epoch != self.epoch:
            return
        key = (base, variant)
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        self._by_base.setdefault(base, set()).add(key)
        while len(self._entries) > self.max_entries:
            evicted, _ = self._entries.popitem(last=False)
            self._forget(evicted)

    def __contains__(self, base: str) -> bool:
        """Whether copies of ``base`` are kept (served or not: see ``get``)."""
        return base in self._by_base

    def renew(self, lease_until: float) -> None:
        self.lease_until = max(self.lease_until, lease_until)

    def bind(self, connection_closing: Callable[[], bool]) -> None:
        """Serve nothing once the subscription is closing, even before it is reported lost."""
        self._connection_closing = connection_closing

    def invalidate(self, bases: list[str]) -> None:
        self.epoch += 1
        for base in bases:
            for key in self._by_base.pop(base, ()):
                self._entries.pop(key, None)

    def reset(self, *, enabled: bool) -> None:
        """Drop everything (messages may have been missed) and switch on or off."""
        self.epoch += 1
        self._entries.clear()
        self._by_base.clear()
        self.enabled = enabled
        self.lease_until = 0.0  # a new subscription earns its own lease

    def _forget(self, key: tuple[str, str]) -> None:
        base = key[0]
        keys = self._by_base.get(base)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_base[base]
