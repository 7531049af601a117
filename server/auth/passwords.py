"""argon2id password hashing, run in a thread so the event loop never waits on it."""

from __future__ import annotations

import asyncio

import argon2
from argon2.exceptions import InvalidHashError, VerificationError


class PasswordHasher:
    """Hash and verify off the event loop; verifying against a dummy hash keeps timing even."""

    def __init__(self, hasher: argon2.PasswordHasher | None = None) -> None:
        self._hasher = hasher or argon2.PasswordHasher()  # argon2id, library defaults
        # Verified when the email is unknown, so that answer costs the same time.
        self._dummy_hash = self._hasher.hash("jangteo-no-such-user")

    @classmethod
    def cheap(cls) -> PasswordHasher:
        """argon2id at one pass over 1 MiB, for test suites that sign up many accounts and
        never for real passwords. Verifying reads the cost from the hash: the answers are
        the same, only sooner."""
        return cls(argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; ``None`` as the hash still spends the time."""
        return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        return password_hash is not None
