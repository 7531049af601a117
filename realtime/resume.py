"""Resumes served from memory: each feed keeps its latest events, and a feed reads the log
for its resumes one read at a time.

When an instance dies, its clients reconnect to the others at once and resume every
channel with ``since``. Read one by one, ten thousand resumes are ten thousand queries on
the database that also takes the purchases. Here a resume within a feed's recent events
costs no query at all; a resume from further back reads the log once for every resume of
that channel waiting at that moment, and the read also fills the feed's recent events
(back to the window's size), so the resumes that follow are served from memory.

``RecentEvents`` never weakens a guarantee: it holds every event of its channel after
``start`` up to the feed's offset, as a chain (each event's ``prev`` is the one before,
or ``start``), so a ``since`` at or after ``start`` is answered exactly as the log would.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from realtime.event import Delivery


@dataclass(frozen=True, slots=True)
class LogRead:
    """Events read from the log: every event of the channel in (``start``, ``end``]."""

    events: Sequence[Delivery]  # a chain ending at ``end``
    end: int

    @property
    def start(self) -> int:
        return self.events[0].prev


class RecentEvents:
    """A feed's latest events: at most ``size`` of them, none held longer than ``age`` s."""

    __slots__ = ("age", "events", "size", "stamps", "start")

    def __init__(self, start: int, size: int, age: float) -> None:
        self.start = start  # every event of the channel after this offset is held
        self.size = size
        self.age = age
        self.events: collections.deque[Delivery] = collections.deque()
        self.stamps: collections.deque[float] = collections.deque()  # when each was added

    def __len__(self) -> int:
        return len(self.events)

    def covers(self, since: int) -> bool:
        return since >= self.start

    def add(self, event: Delivery, now: float) -> None:
        """Append the feed's next event (the hub delivers them as a chain)."""
        self.events.append(event)
        self.stamps.append(now)
        self.trim(now)

    def after(self, since: int, upto: int) -> list[Delivery]:
        """The events in (``since``, ``upto``]; ``since`` must be covered."""
        if since >= upto:
            return []
        events = self.events
        # Resumers are mostly close to the head: look from the newest end.
        skip = 0
        for event in reversed(events):
            if event.offset <= upto:
                break
            skip += 1
        newest = len(events) - skip
        first = newest
        while first > 0 and events[first - 1].offset > since:
            first -= 1
        return list(itertools.islice(events, first, newest))

    def extend_back(self, older: Sequence[Delivery], now: float) -> None:
        """Prepend events read from the log that end where this window starts."""
        if not older or older[-1].offset != self.start:
            return
        room = self.size - len(self.events)
        if room <= 0:
            return
        keep = older[-room:]
        stamp = self.stamps[0] if self.stamps else now  # keep the stamps in order
        self.events.extendleft(reversed(keep))
        self.stamps.extendleft(itertools.repeat(stamp, len(keep)))
        self.start = keep[0].prev

    def trim(self, now: float) -> None:
        events, stamps = self.events, self.stamps
        while events and (len(events) > self.size or now - stamps[0] > self.age):
            self.start = events.popleft().offset
            stamps.popleft()
