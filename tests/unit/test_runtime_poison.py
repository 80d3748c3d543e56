"""The worker runtime isolates a record whose processing raises something unexpected: the
batch runs again in halves, then record by record; the record that fails alone on every
attempt is dead-lettered as ``processing_failed`` and the partition goes on, the records
around it applied exactly once. No faust, no broker: the claim is the in-memory store's."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from test_processor_memory import TOPICS, ListSink, Rec, Wall

from pipeline.config import Settings
from pipeline.store.memory import MemoryStore
from pipeline.worker import processor as processor_module
from pipeline.worker.processor import PartitionProcessor
from pipeline.worker.retries import is_infrastructure
from pipeline.worker.routing import Router
from pipeline.worker.runtime import Runtime

T0 = 1_764_237_600_000


def _runtime(store: MemoryStore, sink: ListSink, attempts: int = 3) -> Runtime:
    settings = Settings(record_max_attempts=attempts, events_topic=TOPICS.events,
                        repartition_topic=TOPICS.repartition, dlq_topic=TOPICS.dlq,
                        sessions_topic=TOPICS.sessions)
    runtime = Runtime(None, settings)  # type: ignore[arg-type]  # no faust app needed here
    runtime.store = store  # type: ignore[assignment]
    claims: list[int] = []

    async def take(partition: int) -> None:
        claim = await store.claim(partition)
        claims.append(claim.epoch)
        runtime.processors[partition] = PartitionProcessor(
            claim, rules=settings.rules, store=store, sink=sink, topics=TOPICS,
            router=Router(1), wall=Wall(T0), on_batch=runtime._on_batch,
        )

    runtime._take = take  # type: ignore[method-assign]
    runtime._assigned = {0}
    runtime.claims = claims  # type: ignore[attr-defined]
    return runtime


def _event(offset: int, user: str, kind: str = "usage") -> Rec:
    value = orjson.dumps({"type": kind, "timestamp": T0 + offset, "user_id": user, "id": f"e{offset}"})
    return Rec(TOPICS.events, 0, offset, user.encode(), value, T0 + offset)


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Parsing a record whose value is b"POISON" raises (as a bug would); the calls made."""
    real = processor_module.EventParser.parse
    calls: list[int] = []

    def parse(self: Any, value: bytes | None, **kwargs: Any) -> Any:
        if value == b"POISON":
            calls.append(kwargs["offset"])
            raise RuntimeError("boom")
        return real(self, value, **kwargs)

    monkeypatch.setattr(processor_module.EventParser, "parse", parse)
    return calls


def test_a_poison_record_is_dead_lettered_and_the_rest_applied_once(poison: list[int]) -> None:
    async def main() -> None:
        store, sink = MemoryStore(), ListSink()
        runtime = _runtime(store, sink, attempts=3)
        await runtime._take(0)
        records = [_event(0, "a", "session"), _event(1, "b", "session"), _event(2, "c", "session")]
        records.append(Rec(TOPICS.events, 0, 3, b"d", b"POISON", T0 + 3))
        records += [_event(4, "a", "sessionend"), _event(5, "e", "session"), _event(6, "b", "sessionend")]
        await runtime._guarded(0, runtime._process, records)

        processor = runtime.processors[0]
        assert processor.resume_offset(TOPICS.events) == 7
        [letter] = sink.dead_letters()
        assert letter["error"] == "processing_failed"
        assert (letter["partition"], letter["offset"], letter["value"]) == (0, 3, "POISON")
        assert "RuntimeError: boom" in letter["detail"] and "3 times" in letter["detail"]
        ended = sink.sessions()
        assert sorted((s["user_id"], s["event_count"]) for s in ended) == [("a", 2), ("b", 2)]
        assert sorted(s["user_id"] for s in await store.open_sessions()) == ["c", "e"]
        # the whole batch, its halves down to the record, then two more tries of it alone
        assert len(poison) >= 3 and set(poison) == {3}
        assert runtime.totals["rejected:processing_failed"] == 1
        assert runtime.metrics.partition_errors.labels("processing_failed")._value.get() == 1

    asyncio.run(main())


def test_infrastructure_errors_are_told_apart() -> None:
    from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert is_infrastructure(RedisConnectionError("down"))
    assert is_infrastructure(KafkaConnectionError("down"))
    assert is_infrastructure(TimeoutError())
    assert not is_infrastructure(MessageSizeTooLargeError("big"))
    assert not is_infrastructure(TypeError("Recursion limit reached"))
    assert not is_infrastructure(RuntimeError("boom"))


class _Consumer:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def topic_partitions(self, topic: str) -> int | None:
        return self.counts.get(topic)


class _App:
    def __init__(self, counts: dict[str, int]) -> None:
        self.consumer = _Consumer(counts)


def test_a_failing_claim_never_raises_out_of_the_assignment() -> None:
    from faust.types import TP

    async def main() -> None:
        store, sink = MemoryStore(), ListSink()
        runtime = _runtime(store, sink)
        runtime.app = _App({TOPICS.events: 3, TOPICS.repartition: 3})  # type: ignore[assignment]
        real_take = runtime._take
        failures = [RuntimeError("claim exploded"), ConnectionError("redis away")]

        async def take(partition: int) -> None:
            if failures:
                raise failures.pop(0)
            await real_take(partition)

        async def start() -> None:
            pass

        runtime._take = take  # type: ignore[method-assign]
        runtime.start = start  # type: ignore[method-assign]
        await runtime.on_assigned({TP(TOPICS.events, 0), TP(TOPICS.repartition, 0)})  # no raise
        assert runtime.router is not None and runtime.router.partitions == 3  # the topic's, not 8
        assert 0 not in runtime.processors
        for _ in range(100):
            if 0 in runtime.processors:
                break
            await asyncio.sleep(0.05)
        assert 0 in runtime.processors and not failures
        await runtime.stop()

    asyncio.run(main())


def test_the_router_follows_the_events_topic_and_grows_the_repartition_topic() -> None:
    from faust.types import TP

    async def main() -> None:
        store, sink = MemoryStore(), ListSink()
        runtime = _runtime(store, sink)
        counts = {TOPICS.events: 2, TOPICS.repartition: 2}
        runtime.app = _App(counts)  # type: ignore[assignment]
        grown: list[int] = []
        runtime.grow_repartition = grown.append

        async def start() -> None:
            pass

        runtime.start = start  # type: ignore[method-assign]
        await runtime.on_assigned({TP(TOPICS.events, 0)})
        assert runtime.router is not None and runtime.router.partitions == 2 and grown == []
        counts[TOPICS.events] = 4  # partitions added to the events topic: a rebalance follows
        await runtime.on_assigned({TP(TOPICS.events, 0)})
        assert grown == [4]
        assert runtime.router.partitions == 4
        assert runtime.processors[0].router is runtime.router
        await runtime.stop()

    asyncio.run(main())


def test_redis_cluster_failover_answers_are_infrastructure() -> None:
    # while a master fails over: retried as a Redis fault, never taken for a poison batch
    # (which would rebuild and then run the failed batch past what Redis lost)
    from redis.exceptions import (
        ClusterDownError,
        MasterDownError,
        ReadOnlyError,
        SlotNotCoveredError,
        TryAgainError,
    )

    for exc in (ClusterDownError("The cluster is down"), MasterDownError("MASTERDOWN"),
                TryAgainError("TRYAGAIN"), SlotNotCoveredError("slot 12 not covered"),
                ReadOnlyError("READONLY You can't write against a read only replica.")):
        assert is_infrastructure(exc), exc
