"""The worker's liveness (a partition with input waiting that applies nothing) and
readiness (assigned and caught up), on a runtime with stand-in consumer and processors."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pipeline.config import Settings
from pipeline.worker.app import Runtime
from pipeline.worker.processor import Topics

TOPICS = Topics(events="events", repartition="rep", dlq="dlq", sessions="sessions", updates="updates")


class FakeProcessor:
    def __init__(self, applied: int) -> None:
        self.applied = applied

    def resume_offset(self, topic: str) -> int | None:
        return self.applied if topic == "events" else 0


def runtime(high: dict[int, int], applied: dict[int, int], **settings: Any) -> Runtime:
    rt = Runtime.__new__(Runtime)
    rt.settings = Settings(**settings)
    rt.topics = TOPICS
    rt.processors = {p: FakeProcessor(n) for p, n in applied.items()}  # type: ignore[misc]
    rt._progress = {}

    def highwater(tp: Any) -> int:
        return high[tp.partition] if tp.topic == "events" else 0

    rt.app = SimpleNamespace(consumer=SimpleNamespace(highwater=highwater))  # type: ignore[assignment]
    return rt


def test_a_partition_with_input_that_does_not_move_fails_liveness() -> None:
    high = {0: 100, 1: 50}
    rt = runtime(high, {0: 10, 1: 50}, liveness_stall=30)
    assert rt.stalled(now_s=0) == []
    assert rt.stalled(now_s=29) == []
    assert rt.stalled(now_s=31) == [0]  # 90 records waiting, nothing applied for 31 s
    rt.processors[0].applied = 20  # type: ignore[attr-defined]
    assert rt.stalled(now_s=32) == []  # it moved: the clock starts again
    assert rt.stalled(now_s=61) == []
    assert rt.stalled(now_s=63) == [0]


def test_an_idle_partition_is_alive() -> None:
    rt = runtime({0: 10}, {0: 10}, liveness_stall=30)
    assert rt.stalled(now_s=0) == [] and rt.stalled(now_s=1000) == []


def test_readiness_needs_partitions_caught_up() -> None:
    assert runtime({}, {}).readiness() == (False, "no partitions assigned")
    ready, reason = runtime({0: 100_000}, {0: 10}, batch_max_records=1000).readiness()
    assert not ready and "[0]" in reason
    assert runtime({0: 500}, {0: 10}, batch_max_records=1000).readiness()[0]
