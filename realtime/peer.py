"""What the gateway holds of each client, whatever its transport: a socket or an event stream.

Sessions, instance limits, expiry and shutdown treat every peer alike through this.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol

from realtime.disconnect import Disconnect


class Peer(Protocol):
    user_id: int
    session_id: uuid.UUID  # the refresh-token family whose ticket opened it
    expires_at: float  # the session's end (epoch seconds), checked by a sweep
    closing: asyncio.Task[None] | None  # set once it is being ended

    def close_soon(self, why: Disconnect) -> None:
        """End it from any task, with ``why`` told to the client."""

    def leave_all(self) -> None:
        """Leave every channel and send nothing more."""
