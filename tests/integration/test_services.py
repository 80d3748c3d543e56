"""The embedded services are real: records round-trip through Tansu, Redis keeps data in its AOF."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.devtools.services import (
    EmbeddedBroker,
    EmbeddedRedis,
    create_topics,
    kafka_metadata_ready,
)
from pipeline.exceptions import ServiceStartError


def _read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Any]:
    """Read *expected* records from every partition of *topic* (no consumer group)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        records = []
        for record in consumer:
            records.append(record)
            if len(records) == expected:
                break
        return records
    finally:
        consumer.close()


def test_broker_round_trips_keys_values_and_timestamps(broker, topic_factory):
    topic = topic_factory(partitions=3)
    base_ms = 1_700_000_000_000
    sent = {f"user-{i}".encode(): (f"value-{i}".encode(), base_ms + i * 1000) for i in range(6)}
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        placed = {
            key: producer.send(topic, key=key, value=value, timestamp_ms=ts).get(timeout=10)
            for key, (value, ts) in sent.items()
        }
    finally:
        producer.close()

    records = _read_all(broker.bootstrap, topic, 3, len(sent))

    assert {r.key: (r.value, r.timestamp) for r in records} == sent
    assert all(r.timestamp_type == 0 for r in records)  # CreateTime: the producer's stamp
    for record in records:
        assert (record.partition, record.offset) == (
            placed[record.key].partition,
            placed[record.key].offset,
        )
    # Within a partition, offsets count up from 0 in send order.
    by_partition: dict[int, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(record.partition, []).append(record.offset)
    assert all(offsets == list(range(len(offsets))) for offsets in by_partition.values())


def test_consumer_group_joins_and_commits(broker, topic_factory):
    topic = topic_factory(partitions=2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(4):
        producer.send(topic, key=b"k%d" % i, value=b"v%d" % i).get(timeout=10)
    producer.close()

    group = f"group-{topic}"
    started = time.monotonic()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        consumer_timeout_ms=20_000,
    )
    try:
        values = []
        for record in consumer:
            values.append(record.value)
            if len(values) == 4:
                break
        join_seconds = time.monotonic() - started
        consumer.commit()
    finally:
        consumer.close()

    assert sorted(values) == [b"v0", b"v1", b"v2", b"v3"]
    assert join_seconds < 15, f"group join took {join_seconds:.1f}s"

    checker = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
    try:
        committed = {p: checker.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        checker.close()
    assert sum(committed.values()) == 4


def test_create_topics_is_idempotent(broker, topic_factory):
    name = topic_factory.name("idem")
    assert create_topics(broker.bootstrap, {name: 3}) == {name: 3}
    assert create_topics(broker.bootstrap, {name: 3}) == {name: 3}
    # An existing topic is left as it is: the broker's partition count is reported.
    assert create_topics(broker.bootstrap, {name: 5}) == {name: 3}


def test_broker_pause_resume_and_restart():
    with EmbeddedBroker() as broker:
        port = broker.port
        broker.pause()
        assert not kafka_metadata_ready(broker.host, port, timeout=0.3)
        broker.resume()
        assert kafka_metadata_ready(broker.host, port, timeout=2)

        broker.kill()
        assert not broker.running
        broker.restart()
        assert broker.port == port
        assert kafka_metadata_ready(broker.host, port, timeout=2)
        pid = broker.pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_stop_terminates_a_paused_service():
    broker = EmbeddedBroker().start()
    pid = broker.pid
    assert pid is not None
    broker.pause()
    broker.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_start_failure_is_a_clear_error(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot bind: pretend failure' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(ServiceStartError, match=r"exited with code 3(.|\n)*pretend failure"):
        EmbeddedBroker(binary=str(fake), workdir=tmp_path).start()


def test_start_timeout_is_a_clear_error(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'still warming up'\nexec sleep 30\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(binary=str(fake), workdir=tmp_path, start_timeout=0.5)
    with pytest.raises(ServiceStartError, match=r"did not answer(.|\n)*still warming up"):
        broker.start()
    assert not broker.running


def test_redis_set_get(redis_client, redis_server):
    assert redis_client.dbsize() == 0
    redis_client.set("greeting", "hello")
    assert redis_client.get("greeting") == b"hello"
    assert redis_server.url.startswith("redis://127.0.0.1:")
    assert redis_client.config_get("appendonly") == {"appendonly": "yes"}
    assert redis_client.config_get("appendfsync") == {"appendfsync": "everysec"}


def test_redis_client_is_flushed_between_tests(redis_client):
    assert redis_client.get("greeting") is None


def test_redis_aof_exists(redis_server, redis_client):
    redis_client.set("aof-probe", "1")
    aof = redis_server.aof_path
    assert aof is not None and aof.exists()
    assert aof.parent == redis_server.data_dir


def test_redis_kill_9_and_restart_keeps_fsynced_writes():
    with EmbeddedRedis(appendfsync="everysec") as server:
        client = server.client()
        client.set("durable", "yes")
        client.hset("session:1", mapping={"events": "3", "user": "u1"})
        client.close()
        time.sleep(1.6)  # appendfsync everysec: older than a second is on disk

        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # no shutdown, no final fsync
        server.kill()  # reap it
        server.restart()

        client = server.client()
        try:
            assert client.get("durable") == b"yes"
            assert client.hgetall("session:1") == {b"events": b"3", b"user": b"u1"}
        finally:
            client.close()


def test_redis_with_password_and_without_aof():
    with EmbeddedRedis(password="s3cret", appendonly=False) as server:
        assert server.url.startswith("redis://:s3cret@127.0.0.1:")
        client = server.client()
        try:
            assert client.ping()
            assert client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            client.close()
        assert server.aof_path is None


def test_settings_factory_wires_the_embedded_services(settings_factory, broker, redis_server):
    settings = settings_factory(max_events_per_session=7)
    assert settings.kafka_bootstrap == broker.bootstrap
    assert settings.redis_url == redis_server.url
    assert settings.max_events_per_session == 7
    assert settings.kafka_session_timeout == 6.0
    topics = [
        settings.events_topic,
        settings.sessions_topic,
        settings.dlq_topic,
        settings.updates_topic,
        settings.repartition_topic,
    ]
    assert len(set(topics)) == 5
    assert create_topics(broker.bootstrap, topics) == dict.fromkeys(topics, 4)

    other = settings_factory(topic_partitions=2, events_topic="my-events-" + settings.events_topic)
    assert other.consumer_group != settings.consumer_group
    assert create_topics(broker.bootstrap, [other.events_topic]) == {other.events_topic: 2}
