"""Opaque keyset cursors: where the next page starts, as fixed-width hexadecimal.

Clients pass them back as they got them. Every string that matches the published pattern
is a place in a keyset order, so the pattern in the API document is the whole rule: a
cursor matching it is never refused, and one not matching it is refused with 422.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import StringConstraints

from server.errors import ValidationFailed

MAX_ID = 2**63 - 1  # ids are bigint; a larger one could only reach PostgreSQL as an error

# An id before which the page continues: 16 hex digits, 0 to 2**63 - 1 (0: nothing before).
CURSOR_PATTERN = r"^[0-7][0-9a-f]{15}$"
# A room page continues before (last activity, room id): microseconds since 1970 below
# 2**57 (the year 6536, within what a datetime holds), then the id as above.
ROOM_CURSOR_PATTERN = r"^0[01][0-9a-f]{14}[0-7][0-9a-f]{15}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MICROS = 2**57 - 1

Cursor = Annotated[str, StringConstraints(pattern=CURSOR_PATTERN)]
RoomCursor = Annotated[str, StringConstraints(pattern=ROOM_CURSOR_PATTERN)]


def encode_cursor(last_id: int) -> str:
    if not 0 <= last_id <= MAX_ID:
        raise ValueError(f"not a bigint id: {last_id}")
    return f"{last_id:016x}"


def decode_cursor(cursor: str) -> int:
    """The id to continue before; 422 for anything this API did not hand out."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise _not_a_cursor()
    return int(cursor, 16)


def encode_room_cursor(at: datetime, room_id: int) -> str:
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    if not 0 <= micros <= _MAX_MICROS:
        raise ValueError(f"no room cursor for {at}")
    return f"{micros:016x}{encode_cursor(room_id)}"


def decode_room_cursor(cursor: str) -> tuple[datetime, int]:
    """The (last activity, room id) to continue before; 422 as for :func:`decode_cursor`."""
    if not re.fullmatch(ROOM_CURSOR_PATTERN, cursor):
        raise _not_a_cursor()
    return _EPOCH + timedelta(microseconds=int(cursor[:16], 16)), int(cursor[16:], 16)


def _not_a_cursor() -> ValidationFailed:
    return ValidationFailed(
        [{"field": "cursor", "code": "invalid", "message": "not a cursor from this API"}]
    )
