"""The worker's liveness (a partition with input waiting that applies nothing) and
readiness (assigned and caught up), from applied offsets and high-water marks."""

from __future__ import annotations

from pipeline.worker.health import Health, backlog


def test_a_partition_with_input_that_does_not_move_fails_liveness() -> None:
    health = Health(stall_s=30, caught_up_records=1000)

    def at(applied: int) -> dict[int, list[tuple[int, int | None]]]:
        return {0: [(applied, 100), (0, 0)], 1: [(50, 50), (0, 0)]}

    assert health.stalled(at(10), now_s=0) == []
    assert health.stalled(at(10), now_s=29) == []
    assert health.stalled(at(10), now_s=31) == [0]  # 90 records waiting, nothing applied for 31 s
    assert health.stalled(at(20), now_s=32) == []  # it moved: the clock starts again
    assert health.stalled(at(20), now_s=61) == []
    assert health.stalled(at(20), now_s=63) == [0]


def test_an_idle_partition_is_alive_and_a_released_one_forgotten() -> None:
    health = Health(stall_s=30, caught_up_records=1000)
    assert health.stalled({0: [(10, 10)]}, now_s=0) == []
    assert health.stalled({0: [(10, 10)]}, now_s=1000) == []
    assert health.stalled({0: [(10, 99)]}, now_s=1001) == []
    assert health.stalled({}, now_s=2000) == []
    assert health.stalled({0: [(10, 99)]}, now_s=2001) == []  # claimed again: a fresh start


def test_readiness_needs_partitions_caught_up() -> None:
    health = Health(stall_s=30, caught_up_records=1000)
    assert health.readiness({}) == (False, "no partitions assigned")
    ready, reason = health.readiness({0: [(10, 100_000), (0, 0)], 1: [(0, 0), (0, 0)]})
    assert not ready and "[0]" in reason
    assert health.readiness({0: [(10, None)]})[0] is False  # no high-water mark yet
    assert health.readiness({0: [(10, 500), (0, 0)]}) == (True, "assigned and caught up")


def test_backlog_sums_the_topics() -> None:
    assert backlog([(10, 15), (3, 5)]) == 7
    assert backlog([(10, 5)]) == 0
    assert backlog([(10, None)]) is None
