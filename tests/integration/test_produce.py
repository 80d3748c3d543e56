"""Producing traffic to a real (embedded) broker and reading it back."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline.cli import produce
from pipeline.cli.produce import publish_records, run_produce
from pipeline.config import Settings
from pipeline.devtools.traffic import Record, TrafficModel
from pipeline.exceptions import BrokerUnavailable


def read_back(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``topic`` from the beginning, once ``expected`` have come."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        messages: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                messages.extend(batch)
        # anything beyond what was expected would show up now
        for batch in consumer.poll(timeout_ms=500).values():
            messages.extend(batch)
        return messages
    finally:
        consumer.close()


def test_publish_records_round_trip(broker: Any, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=4)
    model = TrafficModel(users=40, seed=11, start_ms=1_780_000_000_000, bad_ratio=0.05)
    records = model.preload(400).records

    assert publish_records(broker.bootstrap, topic, records) == len(records)
    messages = read_back(broker.bootstrap, topic, len(records))

    got = Counter(Record(m.key, m.value, m.timestamp) for m in messages)
    assert got == Counter(records)
    # one key, one partition; within a partition, the order they were sent in
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for m in messages:
        if m.key is not None:
            partition_of[m.key].add(m.partition)
    assert all(len(p) == 1 for p in partition_of.values())
    assert len({p for ps in partition_of.values() for p in ps}) > 1
    sent_order = {r: i for i, r in enumerate(records)}
    for partition in range(4):
        positions = [
            sent_order[Record(m.key, m.value, m.timestamp)]
            for m in sorted(messages, key=lambda m: m.offset)
            if m.partition == partition
        ]
        assert positions == sorted(positions)


def test_run_produce_paces_and_publishes(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    started_ms = int(time.time() * 1000)
    run_produce(
        users=50, rate=300, duration=3, seed=5, bad_ratio=0.02, quiet=True, settings=settings
    )
    finished_ms = int(time.time() * 1000)

    messages = read_back(settings.kafka_bootstrap, settings.events_topic, 1, timeout_s=10)
    events = 0
    for m in messages:
        try:
            body = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            continue
        events += len(body) if isinstance(body, list) else 1
    # about rate x duration, never more than the bucket allows
    assert 300 <= events <= 300 * 3 * 1.1 + 75
    stamps = sorted(m.timestamp for m in messages)
    assert started_ms <= stamps[0]
    # the model's clock runs faster than the wall clock (time compression)
    assert stamps[-1] > finished_ms


def test_run_produce_in_real_time_stamps_now(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    started_ms = int(time.time() * 1000)
    run_produce(
        users=300,
        rate=0,
        duration=4,
        seed=9,
        bad_ratio=0.0,
        quiet=True,
        settings=settings,
        speed=1.0,
    )
    finished_ms = int(time.time() * 1000)
    messages = read_back(settings.kafka_bootstrap, settings.events_topic, 1, timeout_s=10)
    assert messages
    assert all(started_ms <= m.timestamp <= finished_ms for m in messages)


def test_unreachable_broker_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(produce, "BOOTSTRAP_TIMEOUT_MS", 1_000)
    with pytest.raises(BrokerUnavailable) as caught:
        publish_records("127.0.0.1:1", "events", [(None, b"{}", 0)])
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "SESSIONIZER_KAFKA_BOOTSTRAP" in message
    assert "\n" not in message
