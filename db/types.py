"""Type names for what query functions accept (connections from a pool or made directly)."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
# Anything that can run a single statement: a connection or the pool itself.
Queryable: TypeAlias = "Connection | asyncpg.Pool[asyncpg.Record]"
