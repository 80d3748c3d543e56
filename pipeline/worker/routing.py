"""Which partition a session key belongs to: Kafka's default partitioner (murmur2).

An event is processed on the partition its *routing key* hashes to (its
``session_id`` when it has one, else its ``user_id``), whatever partition the
producer wrote it to; a worker re-routes misplaced events through the internal
repartition topic. Producers that key records by the routing key (the gateway
and the Python client do) never pay that extra hop.
"""

from __future__ import annotations

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as aiokafka's
    ``partitioner.murmur2`` computes it, with the 4-byte words read in one call and
    no redundant masking: about twice as quick in CPython."""
    length = len(data)
    words = length >> 2
    h = _SEED ^ length
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        rest = words << 2
        if tail >= 3:
            h ^= data[rest + 2] << 16
        if tail >= 2:
            h ^= data[rest + 1] << 8
        h = ((h ^ data[rest]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


class Router:
    """Routing key -> partition, with a bounded memo (murmur2 is pure Python)."""

    def __init__(self, partitions: int, memo_size: int = 200_000) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions
        self._memo: dict[str, int] = {}
        self._memo_size = memo_size

    def resize(self, partitions: int) -> bool:
        """Follow a new partition count (partitions were added); True when it changed."""
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        if partitions == self.partitions:
            return False
        self.partitions = partitions
        self._memo.clear()
        return True

    def partition_of(self, routing_key: str) -> int:
        found = self._memo.get(routing_key)
        if found is None:
            found = (murmur2(routing_key.encode("utf-8")) & 0x7FFFFFFF) % self.partitions
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[routing_key] = found
        return found
