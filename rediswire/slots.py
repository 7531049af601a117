"""A Redis Cluster's slot map: which master holds a key or a sharded channel."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.crc import key_slot

SlotRange = tuple[int, int, str]  # first slot, last slot, "host:port" of its master


@dataclass(frozen=True, slots=True)
class SlotMap:
    ranges: list[SlotRange] = field(default_factory=list)  # sorted by first slot

    @property
    def masters(self) -> set[str]:
        return {node for _, _, node in self.ranges}

    def owner(self, name: str) -> str | None:
        """The master of the slot of ``name`` (a key or a channel; hash tags apply)."""
        slot = key_slot(name.encode())
        at = bisect.bisect_right(self.ranges, (slot, 1 << 30, "")) - 1
        if at >= 0 and self.ranges[at][0] <= slot <= self.ranges[at][1]:
            return self.ranges[at][2]
        return None


async def read_slot_map(client: aioredis.Redis) -> SlotMap:
    """CLUSTER SLOTS through a cluster client (asked of any node it knows)."""
    answer = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    return SlotMap(
        sorted(
            (start, end, f"{shard['primary'][0]}:{shard['primary'][1]}")
            for (start, end), shard in answer.items()
        )
    )
