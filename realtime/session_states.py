"""Whether sessions are alive, looked up in PostgreSQL for many sockets in one query.

Every new socket or event stream checks its session (refresh-token family) before it is
served, and the expiry sweep checks again. When thousands of clients reconnect at once
(an instance died), one query each would queue on the pool behind the purchases; here
the sockets that ask while a lookup is out share the next one (``Rounds``), and each is
answered by a lookup that began after it asked, so a revocation committed before a
socket registered is always seen.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from server.rounds import Rounds

_SESSION_STATES = """
SELECT family_id, bool_or(revoked_at IS NOT NULL) AS revoked, max(expires_at) AS expires_at
FROM refresh_tokens WHERE family_id = ANY($1::uuid[])
GROUP BY family_id
"""


@dataclass(frozen=True, slots=True)
class SessionState:
    revoked: bool
    expires_at: datetime | None  # None: no such session

    def alive_until(self) -> float | None:
        """The session's end (epoch seconds) while it lives; None once it has ended."""
        if self.revoked or self.expires_at is None or self.expires_at <= datetime.now(UTC):
            return None
        return self.expires_at.timestamp()


UNKNOWN = SessionState(revoked=False, expires_at=None)


class SessionStates:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._lookups: Rounds[uuid.UUID, SessionState] = Rounds(self._look_up)

    async def get(self, session_id: uuid.UUID) -> SessionState:
        """The session's state now; raises what the pool raises (PostgreSQL down)."""
        return (await self._lookups.ask((session_id,))).get(session_id, UNKNOWN)

    async def _look_up(self, sessions: frozenset[uuid.UUID]) -> Mapping[uuid.UUID, SessionState]:
        rows = await self.pool.fetch(_SESSION_STATES, list(sessions))
        return {row["family_id"]: SessionState(row["revoked"], row["expires_at"]) for row in rows}

    async def close(self) -> None:
        """Stop a lookup in flight (at shutdown)."""
        await self._lookups.close()
