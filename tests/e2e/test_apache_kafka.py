"""What only Apache Kafka has (docs/brokers.md): the sink's idempotent producer, topic
configurations (retention, ``max.message.bytes``), Kafka's group coordinator with two and
three workers, and a broker restart that keeps its data on disk.

Every test here runs on the embedded Apache Kafka only (``only_broker("kafka")``) and skips,
saying how to get them, where Java or Maven is missing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from pipeline.devtools.apache_kafka import EmbeddedKafka
from pipeline.devtools.checker import check_pipeline, consumer_lag
from pipeline.devtools.traffic import TrafficModel
from pipeline.worker.routing import Router
from pipeline.worker.run import preflight

pytestmark = pytest.mark.only_broker("kafka")

DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def event(user: str, ms: int, ident: str, kind: str = "usage", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": stamp(ms), "user_id": user, "id": ident, **extra}


def session_records(worker: Any, user: str, events: list[dict[str, Any]], at_ms: int) -> list[Any]:
    """``(key, value, timestamp, partition)`` for one user's events, on the partition its key routes to."""
    partition = Router(worker.partitions).partition_of(user)
    return [(user.encode(), orjson.dumps(e), at_ms + i, partition) for i, e in enumerate(events)]


def closed(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records if r.value]


def topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """``{topic: {config name: value}}`` from the broker (DescribeConfigs)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        found: dict[str, dict[str, str]] = {}
        result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
        for by_name in result.values():
            for name, entries in by_name.items():
                found[name] = {key: value["value"] if isinstance(value, dict) else value
                               for key, value in entries.items()}
        return found
    finally:
        admin.close()


# -- the idempotent producer ------------------------------------------------------------------


@pytest.mark.parametrize("idempotence", ["on", "auto"])
def test_the_sink_uses_the_idempotent_producer(start_worker, publish, read_topic, idempotence):
    worker = start_worker(kafka_idempotence=idempotence, inactivity_timeout=2)
    log = worker.log_text()
    assert "sink: idempotent producer" in log, f"the sink did not say it is idempotent:\n{log[-3000:]}"
    assert "refused the idempotent producer" not in log
    start = now_ms()
    events = [event("u-idem", start, "i-1", "session"), event("u-idem", start + 100, "i-2")]
    publish(worker.bootstrap, worker.events_topic, session_records(worker, "u-idem", events, start))
    sessions = closed(read_topic(worker.bootstrap, worker.sessions_topic, 1, timeout=60, settle=1))
    assert [s["user_id"] for s in sessions] == ["u-idem"]
    assert sessions[0]["event_count"] == 2


# -- retention of the topics the worker creates -----------------------------------------------


def test_the_worker_creates_its_topics_with_the_documented_retention(settings_factory, broker):
    settings = settings_factory(create_topics=False, updates_interval=1.0)
    preflight(settings)  # what `sessionizer worker` does before it starts consuming
    configs = topic_configs(broker.bootstrap, [settings.events_topic, settings.repartition_topic,
                                               settings.sessions_topic, settings.dlq_topic,
                                               settings.updates_topic])
    retention = {topic: int(values["retention.ms"]) for topic, values in configs.items()}
    assert retention == {
        settings.events_topic: 7 * DAY_MS,
        settings.repartition_topic: 7 * DAY_MS,
        settings.sessions_topic: 30 * DAY_MS,
        settings.dlq_topic: 14 * DAY_MS,
        settings.updates_topic: 1 * DAY_MS,
    }


def test_retention_is_settable_and_an_existing_topic_keeps_its_own(settings_factory, broker):
    settings = settings_factory(create_topics=False, events_retention_ms=3_600_000,
                                sessions_retention_ms=-1, dlq_retention_ms=2 * DAY_MS)
    broker.create_topics({settings.events_topic: 4}, configs={"retention.ms": "60000"})
    preflight(settings)
    configs = topic_configs(broker.bootstrap, [settings.events_topic, settings.repartition_topic,
                                               settings.sessions_topic, settings.dlq_topic])
    retention = {topic: int(values["retention.ms"]) for topic, values in configs.items()}
    assert retention == {
        settings.events_topic: 60_000,  # created before the worker: left as it was
        settings.repartition_topic: 3_600_000,
        settings.sessions_topic: -1,
        settings.dlq_topic: 2 * DAY_MS,
    }


# -- a message the broker refuses ----------------------------------------------------------------


def test_a_closed_session_the_broker_refuses_is_replaced_and_dead_lettered(
    worker_factory, publish, read_topic, broker
):
    limit = 4096
    worker = worker_factory(inactivity_timeout=2, max_events_per_session=1000)
    # the sessions topic refuses records over 4 KiB (max.message.bytes)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, worker.sessions_topic,
                                            configs={"max.message.bytes": str(limit)})])
    finally:
        admin.close()
    worker.start()
    start = now_ms()
    big = [event("u-big", start + i, f"big-{i}", "session" if i == 0 else "usage",
                 data={"note": "x" * 200}) for i in range(60)]
    small = [event("u-small", start, "small-1", "session")]
    publish(worker.bootstrap, worker.events_topic,
            session_records(worker, "u-big", big, start) + session_records(worker, "u-small", small, start))
    records: list[Any] = []
    deadline = time.monotonic() + 60
    while len({r.value for r in records}) < 2 and time.monotonic() < deadline:
        records = read_topic(worker.bootstrap, worker.sessions_topic, 2, timeout=60, settle=2)
    by_user: dict[str, list[Any]] = {}
    for record in records:
        by_user.setdefault(record.key.decode(errors="replace") if record.key else "", []).append(record)
    # delivery is at least once: a resent outbox repeats a record byte for byte
    assert len({r.value for r in records}) == 2, f"expected the small session and one marker: {records}"
    assert all(len(r.value or b"") <= limit for r in records)
    assert any(s.get("user_id") == "u-small" for s in closed(records))
    letters = read_topic(worker.bootstrap, worker.dlq_topic, 1, timeout=30, settle=1)
    assert len({r.value for r in letters}) == 1, "the refused session is dead-lettered, with the reason"
    assert b"too large" in letters[0].value.lower() or b"message_too_large" in letters[0].value.lower()
    # the worker did not loop on it: still up, and the next session goes through
    assert worker.running
    later = now_ms()
    publish(worker.bootstrap, worker.events_topic,
            session_records(worker, "u-after", [event("u-after", later, "after-1", "session")], later))
    after = closed(read_topic(worker.bootstrap, worker.sessions_topic, 3, timeout=60, settle=1))
    assert any(s.get("user_id") == "u-after" for s in after)


# -- consumer groups: joins, leaves, rebalances ------------------------------------------------------


def live_traffic(users: int, events: int, start_ms: int) -> list[Any]:
    """A seeded log of ``users`` sessions whose record times begin at ``start_ms``."""
    model = TrafficModel(users, 20261204, start_ms, bad_ratio=0.01, duplicate_ratio=0.03,
                         out_of_order_ratio=0.03, think_median_s=2.0, think_max_s=6.0,
                         heartbeat_interval_ms=5_000, session_median_s=20.0, session_max_s=40.0,
                         offline_mean_s=20.0, offline_min_after_abandon_s=15.0, ramp_s=10.0)
    return list(model.preload(events, drain=True).records)


class LivePublisher(threading.Thread):
    """Sends each record when the wall clock reaches its timestamp (as a live service would)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, records: list[Any]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.records = bootstrap, topic, records
        self.router = Router(partitions)
        self.sent = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                 max_in_flight_requests_per_connection=1)
        try:
            for key, value, ts in self.records:
                delay = ts / 1000 - time.time()
                if delay > 0:
                    time.sleep(delay)
                partition = self.router.partition_of(key.decode()) if key else 0
                producer.send(self.topic, key=key, value=value, timestamp_ms=ts, partition=partition)
                self.sent += 1
            producer.flush(60)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            producer.close(timeout=10)


def wait_lag_zero(worker: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    lag: dict[Any, int] = {}
    while time.monotonic() < deadline:
        lag = consumer_lag(worker.bootstrap, worker.settings.consumer_group, [worker.events_topic])
        if lag and not any(lag.values()):
            return
        time.sleep(1.0)
    raise AssertionError(f"consumer lag not 0 after {timeout:.0f} s: {lag}")


@pytest.mark.timeout(600)
def test_workers_join_leave_and_rebalance_with_exact_sessions(worker_factory):
    settings = {"topic_partitions": 6, "inactivity_timeout": 10, "reopen_grace": 30,
                "max_events_per_session": 1_000_000}
    first = worker_factory(**settings)
    same = {**settings, "events_topic": first.events_topic, "sessions_topic": first.sessions_topic,
            "dlq_topic": first.dlq_topic, "updates_topic": first.settings.updates_topic,
            "repartition_topic": first.repartition_topic,
            "consumer_group": first.settings.consumer_group, "redis_key_prefix": first.prefix}
    first.start()
    t0 = time.time() + 2
    records = live_traffic(100, 2_500, int(t0 * 1000))
    publisher = LivePublisher(first.bootstrap, first.events_topic, 6, records)
    publisher.start()

    def at(seconds: float) -> None:
        time.sleep(max(0.0, t0 + seconds - time.time()))

    at(8)
    second = worker_factory(**same).start()  # join: 1 -> 2
    at(18)
    third = worker_factory(**same).start()  # join: 2 -> 3
    deadline = time.monotonic() + 60
    while sorted(p for w in (first, second, third) for p in w.assigned() or []) != list(range(6)):
        assert time.monotonic() < deadline, "the three workers did not share the 6 partitions"
        time.sleep(0.2)
    at(30)
    assert second.stop() == 0  # leave: 3 -> 2
    at(40)
    assert third.stop() == 0  # leave: 2 -> 1
    publisher.join(timeout=300)
    assert not publisher.errors and publisher.sent == len(records), publisher.errors
    wait_lag_zero(first)
    time.sleep(15)  # the last sessions close by inactivity (10 s) on the wall clock
    wait_lag_zero(first)
    first.stop()
    report = check_pipeline(first.settings, check_redis=False)
    assert report.lost == 0 and report.doubled == 0, report.table()
    assert report.ok, "\n".join([*report.problems[:20], *report.examples[:5]])


# -- a broker restart -----------------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_a_broker_restart_keeps_topics_offsets_and_open_sessions(worker_factory, publish, read_topic,
                                                                   tmp_path):
    with EmbeddedKafka(workdir=tmp_path / "kafka") as kafka:
        worker = worker_factory(kafka_bootstrap=kafka.bootstrap, inactivity_timeout=120)
        worker.start()
        start = now_ms()
        before = [event("u-restart", start, "r-1", "session"), event("u-restart", start + 10, "r-2")]
        publish(kafka.bootstrap, worker.events_topic, session_records(worker, "u-restart", before, start))
        time.sleep(2)  # the worker reads them and commits
        kafka.restart()
        assert (kafka.data_dir / "meta.properties").exists()
        later = now_ms()
        after = [event("u-restart", later, "r-3"), event("u-restart", later + 10, "r-4", "sessionend")]
        deadline = time.monotonic() + 60
        while True:  # the producer may need a moment to find the broker again
            try:
                publish(kafka.bootstrap, worker.events_topic, session_records(worker, "u-restart", after, later))
                break
            except Exception:
                assert time.monotonic() < deadline, "cannot publish after the broker restart"
                time.sleep(1)
        sessions = closed(read_topic(kafka.bootstrap, worker.sessions_topic, 1, timeout=90, settle=2))
        assert [s["user_id"] for s in sessions] == ["u-restart"]
        assert sessions[0]["event_count"] == 4, "events from before and after the restart in one session"
        assert sessions[0]["close_reason"] == "ended"
        events = read_topic(kafka.bootstrap, worker.events_topic, 4, timeout=20, settle=1)
        assert len(events) == 4, "the records from before the restart are still on disk"
        worker.stop()

