"""Opaque keyset cursors: the last id of a page, in a form clients cannot easily forge."""

from __future__ import annotations

import base64
import binascii

import orjson

from server.errors import ValidationFailed

MAX_ID = 2**63 - 1  # ids are bigint; a larger one could only reach PostgreSQL as an error


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"before": last_id})).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id to continue before; 422 for anything this API did not hand out."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = orjson.loads(base64.urlsafe_b64decode(padded))["before"]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ID:
            raise ValueError(value)
        return value
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise ValidationFailed(
            [{"field": "cursor", "code": "invalid", "message": "not a cursor from this API"}]
        ) from None
