"""The worker's liveness and readiness, from its partitions' applied offsets.

- alive: no partition with records waiting has left its applied offsets where
  they were for ``SESSIONIZER_LIVENESS_STALL`` seconds (a stuck partition fails
  ``GET /healthz``, so the orchestrator restarts the worker);
- ready: partitions are assigned and each is at most one fetch
  (``SESSIONIZER_BATCH_MAX_RECORDS``) behind its high-water marks.

No Kafka or faust here: the caller passes each partition's applied offsets and
high-water marks (None when the consumer does not know them yet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: per partition: (applied offset, high-water mark or None) of each input topic
Positions = Mapping[int, Sequence[tuple[int, int | None]]]


def backlog(positions: Sequence[tuple[int, int | None]]) -> int | None:
    """Records not applied yet over a partition's topics; None if a mark is unknown."""
    total = 0
    for applied, high in positions:
        if high is None:
            return None
        total += max(0, high - applied)
    return total


class Health:
    """Remembers since when each partition's applied offsets have not moved."""

    def __init__(self, stall_s: float, caught_up_records: int) -> None:
        self.stall_s = stall_s
        self.caught_up_records = caught_up_records
        # partition -> (its applied offsets, since when they have not moved: monotonic s)
        self._progress: dict[int, tuple[tuple[int, ...], float]] = {}

    def stalled(self, positions: Positions, now_s: float) -> list[int]:
        """Partitions with records waiting whose applied offsets have not moved for
        ``stall_s`` seconds, sampling progress at ``now_s``."""
        stuck = []
        for partition, topics in positions.items():
            offsets = tuple(applied for applied, _ in topics)
            waiting = backlog(topics)
            seen = self._progress.get(partition)
            if seen is None or seen[0] != offsets or not waiting:
                self._progress[partition] = (offsets, now_s)
            elif now_s - seen[1] > self.stall_s:
                stuck.append(partition)
        for partition in set(self._progress) - set(positions):
            del self._progress[partition]
        return sorted(stuck)

    def readiness(self, positions: Positions) -> tuple[bool, str]:
        """Ready once partitions are assigned and each is caught up."""
        if not positions:
            return False, "no partitions assigned"
        behind = {p: backlog(topics) for p, topics in positions.items()}
        slow = sorted(p for p, n in behind.items() if n is None or n > self.caught_up_records)
        if slow:
            return False, f"partitions {slow} are catching up"
        return True, "assigned and caught up"
