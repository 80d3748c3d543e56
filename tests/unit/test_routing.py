"""The router sends a key where Kafka's default partitioner (murmur2) would."""

from __future__ import annotations

import random
import string

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import DefaultPartitioner

from pipeline.worker.routing import Router, murmur2


class _Cluster:
    """Just enough cluster metadata for kafka-python's DefaultPartitioner."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.all = set(range(partitions))

    def topics(self) -> set[str]:
        return {self.topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.all

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.all


def kafka_partition(key: str, partitions: int) -> int:
    """Where kafka-python's producer would put a record keyed ``key``."""
    cluster = _Cluster("events", partitions)
    raw = key.encode("utf-8")
    return DefaultPartitioner().partition("events", key, raw, None, None, cluster)


def _keys(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_.@:/ éßø中文🙂"
    keys = ["", "a", "ab", "abc", "123456789", "\x00 ", "alice@example.com"]
    keys += [f"user-{i}" for i in range(200)]
    keys += ["".join(rng.choices(alphabet, k=rng.randint(1, 60))) for _ in range(count)]
    return keys


@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 7, 8, 12, 16, 31, 64, 100, 1000])
def test_router_agrees_with_kafka_default_partitioner(partitions: int) -> None:
    router = Router(partitions)
    for key in _keys(500, seed=partitions):
        assert router.partition_of(key) == kafka_partition(key, partitions), key


@pytest.mark.parametrize(
    ("key", "expected"),
    # values of Kafka's Java client for 1000 partitions (kafka-python's compatibility table)
    [("", 681), ("a", 524), ("ab", 434), ("abc", 107), ("123456789", 566), ("\x00 ", 742)],
)
def test_router_matches_the_java_client(key: str, expected: int) -> None:
    assert Router(1000).partition_of(key) == expected


@given(key=st.text(max_size=80), partitions=st.integers(min_value=1, max_value=500))
def test_router_agrees_on_any_key(key: str, partitions: int) -> None:
    assert Router(partitions).partition_of(key) == kafka_partition(key, partitions)


def test_memo_eviction_keeps_answers_right() -> None:
    router = Router(16, memo_size=8)
    keys = _keys(100, seed=1)
    first = [router.partition_of(k) for k in keys]
    again = [router.partition_of(k) for k in reversed(keys)]
    assert again == list(reversed(first))
    assert first == [kafka_partition(k, 16) for k in keys]
    assert len(router._memo) <= 8


def test_single_partition_routes_everything_to_zero() -> None:
    router = Router(1)
    assert {router.partition_of(k) for k in _keys(50, seed=2)} == {0}


@pytest.mark.parametrize("partitions", [0, -1])
def test_router_refuses_no_partitions(partitions: int) -> None:
    with pytest.raises(ValueError, match="partitions"):
        Router(partitions)


@given(st.binary(max_size=300))
def test_murmur2_is_aiokafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


def test_resize_follows_added_partitions() -> None:
    router = Router(2)
    before = {k: router.partition_of(k) for k in (f"user-{i}" for i in range(200))}
    assert not router.resize(2)
    assert router.resize(4)
    after = {k: router.partition_of(k) for k in before}
    assert after == {k: (murmur2(k.encode()) & 0x7FFFFFFF) % 4 for k in before}
    assert any(after[k] != before[k] for k in before)
