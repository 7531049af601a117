"""Every way the server closes a realtime socket: the code, the reason sent with it, and
what a client does next.

The gateway (``connection.py``, ``gateway.py``) closes sockets only with the disconnects
below, and the Python client (``client.py``) decides from ``RULES`` whether to reconnect;
the browser demo's client follows the same rules. Reasons are for people and logs: a
client decides by the code alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CloseCode(enum.IntEnum):
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    SESSION_ENDED = 4401


@dataclass(frozen=True, slots=True)
class Rule:
    """What a client does after a close with one code."""

    reconnect: bool  # on its own, with a new ticket (a ticket opens one socket only)
    then: str  # the rule in words


RULES: dict[int, Rule] = {
    CloseCode.GOING_AWAY: Rule(
        True, "reconnect at once (another instance takes the socket) and resume with since"
    ),
    CloseCode.POLICY: Rule(
        False, "do not reconnect with the same ticket or the same frames: both are refused again"
    ),
    CloseCode.TOO_BIG: Rule(False, "fix the frame: the same frame is refused again"),
    CloseCode.INTERNAL_ERROR: Rule(True, "reconnect with backoff"),
    CloseCode.TRY_AGAIN_LATER: Rule(True, "reconnect with backoff and resume with since"),
    CloseCode.SESSION_ENDED: Rule(False, "sign in again; the session was revoked or expired"),
}
# Any other code (1006 for a dropped connection, 1000) comes from the network or the
# client itself: reconnect with backoff and resume.
OTHERWISE = Rule(True, "reconnect with backoff and resume with since")


def rule_for(code: int | None) -> Rule:
    return RULES.get(code, OTHERWISE) if code is not None else OTHERWISE


@dataclass(frozen=True, slots=True)
class Disconnect:
    code: CloseCode
    reason: str  # sent in the close frame
    metric: str  # its label on jangteo_ws_closes_total


SHUTDOWN = Disconnect(CloseCode.GOING_AWAY, "server shutting down", "shutdown")
BAD_TICKET = Disconnect(CloseCode.POLICY, "invalid, expired or used ticket", "bad_ticket")
ABUSE = Disconnect(CloseCode.POLICY, "too many bad frames", "abuse")
# 1009 is sent by aiohttp itself, for a frame over ws_max_frame_bytes (its own reason).
INTERNAL_ERROR = Disconnect(CloseCode.INTERNAL_ERROR, "internal error", "error")
FULL = Disconnect(CloseCode.TRY_AGAIN_LATER, "instance full; retry", "full")
TOO_SLOW = Disconnect(CloseCode.TRY_AGAIN_LATER, "too slow; resume with since", "slow")
UNAVAILABLE = Disconnect(CloseCode.TRY_AGAIN_LATER, "try again", "unavailable")
# Cut off from both Redis and PostgreSQL, the instance cannot deliver; another can.
CUT_OFF = Disconnect(
    CloseCode.TRY_AGAIN_LATER, "this instance cannot deliver events; reconnect", "cut_off"
)
SESSION_ENDED = Disconnect(CloseCode.SESSION_ENDED, "session ended", "session")
