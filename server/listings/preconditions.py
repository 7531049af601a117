"""If-Match on a listing, judged only after the caller is known to be its seller.

RFC 9110 section 13.2.1: preconditions are evaluated only when the request would otherwise
succeed. A stranger's PATCH or DELETE therefore hears 403 (not the seller) or 404, never
428 or 412, which would tell them that an ETag is all they lack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.errors import PreconditionFailed, PreconditionRequired
from server.openapi import Header

# A listing's ETag as the handlers write it: "id-version-likes", each part a bigint.
_NUMBER = "([0-9]{1,19})"
_ETAG = re.compile(rf'^(?:W/)?"{_NUMBER}-{_NUMBER}-{_NUMBER}"$')

IF_MATCH = Header(
    "If-Match",
    "* or the ETag you read; checked once you are known to be the seller",
    {"type": "string", "pattern": rf'^(\*|(W/)?"{_NUMBER}-{_NUMBER}-{_NUMBER}")$'},
    answers={
        412: "If-Match is neither * nor the listing's current ETag",
        428: "If-Match is missing",
    },
)


@dataclass(frozen=True, slots=True)
class IfMatch:
    """The If-Match header as sent (None: absent); only the version part is compared, so a
    like never makes a seller's edit conflict."""

    header: str | None

    def check(self, listing_id: int, version: int) -> None:
        """428 when absent, 412 when it names another listing or another version."""
        if self.header is None:
            raise PreconditionRequired()
        text = self.header.strip()
        if text == "*":
            return
        match = _ETAG.match(text)
        if match is None or int(match.group(1)) != listing_id:
            raise PreconditionFailed("If-Match does not name a version of this listing")
        if int(match.group(2)) != version:
            raise PreconditionFailed(f"the listing is at version {version}")


ANY = IfMatch("*")
