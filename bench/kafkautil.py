"""Small Kafka helpers for the harness (confluent-kafka, no consumer group)."""

from __future__ import annotations

import time
from typing import Any


def _consumer(bootstrap: str, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    config = {
        "bootstrap.servers": bootstrap,
        "group.id": "bench-reader",  # required by the client; never joined or committed
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 10,
        "log_level": 3,
    }
    config.update(extra)
    return Consumer(config)


def high_watermarks(bootstrap: str, topic: str, partitions: int, consumer: Any = None) -> list[int]:
    from confluent_kafka import TopicPartition

    own = consumer is None
    consumer = consumer or _consumer(bootstrap)
    try:
        return [int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                for p in range(partitions)]
    finally:
        if own:
            consumer.close()


def read_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 60.0) -> list[bytes]:
    """Every record value of ``topic``, from the beginning to the current end."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = _consumer(bootstrap)
    try:
        ends = high_watermarks(bootstrap, topic, partitions, consumer)
        wanted = {p: end for p, end in enumerate(ends) if end > 0}
        if not wanted:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in wanted])
        values: list[bytes] = []
        reached: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(reached) < len(wanted) and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.2):
                if message.error():
                    continue
                values.append(message.value())
                if message.offset() >= wanted[message.partition()] - 1:
                    reached.add(message.partition())
        return values
    finally:
        consumer.close()


class Collector:
    """Reads a topic as it is written, timing each record's arrival (wall ms)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self.consumer = _consumer(bootstrap, **{"fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])

    def poll(self, timeout: float = 0.05) -> list[tuple[float, bytes]]:
        out = []
        for message in self.consumer.consume(1000, timeout):
            now_ms = time.time() * 1000
            if not message.error():
                out.append((now_ms, message.value()))
        return out

    def close(self) -> None:
        self.consumer.close()
