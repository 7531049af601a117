"""Channel names clients may subscribe to, and who may subscribe to each."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

_ID = re.compile(r"^[1-9][0-9]{0,17}$")
_REGION = re.compile(r"^[a-z][a-z0-9-]{1,39}$")
MAX_CHANNEL_LENGTH = 64


class ChannelRefused(Exception):
    """``code`` is the error code sent to the client: bad_channel or forbidden."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: int


# A kind's check gets the caller and the part after the colon; it raises
# ChannelRefused or returns. Kinds added later (rooms) may look things up.
ChannelCheck = Callable[[Caller, str], Awaitable[None]]


async def _listing(caller: Caller, key: str) -> None:
    if not _ID.match(key):
        raise ChannelRefused("bad_channel", "listing channels are listing:<id>")


async def _feed(caller: Caller, key: str) -> None:
    if not _REGION.match(key):
        raise ChannelRefused("bad_channel", "feed channels are feed:<region>")


async def _user(caller: Caller, key: str) -> None:
    if not _ID.match(key):
        raise ChannelRefused("bad_channel", "user channels are user:<id>")
    if int(key) != caller.user_id:
        raise ChannelRefused("forbidden", "only its user may subscribe to a user channel")


class ChannelRules:
    """Which channel kinds exist and who may subscribe; new kinds register here."""

    def __init__(self) -> None:
        self.kinds: dict[str, ChannelCheck] = {
            "listing": _listing,
            "feed": _feed,
            "user": _user,
        }

    def add(self, kind: str, check: ChannelCheck) -> None:
        self.kinds[kind] = check

    async def authorize(self, caller: Caller, channel: str) -> None:
        kind, colon, key = channel.partition(":")
        check = self.kinds.get(kind) if colon and len(channel) <= MAX_CHANNEL_LENGTH else None
        if check is None:
            raise ChannelRefused(
                "bad_channel", f"unknown channel; kinds are {', '.join(sorted(self.kinds))}"
            )
        await check(caller, key)
