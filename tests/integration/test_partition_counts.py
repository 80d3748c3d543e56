"""Topics an operator created beforehand, with a partition count other than the setting's:
the workers route by the events topic's real count (broker metadata), create the topics
that are missing with that count, and refuse a repartition topic that differs.

Two ``sessionizer worker`` processes and a restart of one of them; the closed sessions
are held against what the pure core computes offline (:mod:`pipeline.devtools.checker`).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipeline.config import Settings
from pipeline.devtools.checker import CheckReport, check_pipeline
from pipeline.devtools.process import SessionizerProcess, sessionizer_command, settings_env
from pipeline.devtools.services import create_topics
from pipeline.worker.routing import Router

#: what the setting says; the topics have another count
SETTING = 8


def _partitions(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def _wait_assigned(worker: SessionizerProcess, timeout: float = 90.0, nonempty: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = worker.log_text()
        lines = [line for line in text.splitlines() if "assigned partitions [" in line]
        if lines and (not nonempty or "assigned partitions []" not in lines[-1]):
            return
        assert worker.proc.poll() is None, f"worker exited:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"worker got no assignment:\n{text[-3000:]}"
        time.sleep(0.1)


def _publish(settings: Settings, partitions: int, users: list[str], start_ms: int,
             misplaced: set[str]) -> int:
    """Each user: a session, two usage events, and (every other user) a sessionend; keyed
    by the user and written to the user's partition by the real count, except the users
    in ``misplaced``, written one partition further (the workers re-route them)."""
    router = Router(partitions)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             max_in_flight_requests_per_connection=1)
    sent = 0
    try:
        for n, user in enumerate(users):
            at = start_ms + n
            steps = [("session", 0), ("usage", 100), ("usage", 200)]
            if n % 2 == 0:
                steps.append(("sessionend", 300))
            for i, (kind, offset_ms) in enumerate(steps):
                value = orjson.dumps({"type": kind, "timestamp": at + offset_ms, "user_id": user,
                                      "id": f"{user}-{start_ms}-{i}"})
                partition = router.partition_of(user)
                if user in misplaced:
                    partition = (partition + 1) % partitions
                producer.send(settings.events_topic, key=user.encode(), value=value,
                              partition=partition, timestamp_ms=at + offset_ms)
                sent += 1
        producer.flush(30)
    finally:
        producer.close(timeout=5)
    return sent


def _check_until_ok(settings: Settings, timeout: float = 150.0) -> CheckReport:
    deadline = time.monotonic() + timeout
    while True:
        report = check_pipeline(settings, timeout_s=60)
        if report.ok or time.monotonic() >= deadline:
            return report
        time.sleep(3)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("created", [1, 3, 12])
def test_workers_follow_the_real_partition_count(
    created: int, settings_factory: Any, tmp_path: Path
) -> None:
    settings = settings_factory(
        # re-routed events reach their partition after a rebalance's pause: a timeout longer
        # than that, and a grace that lets a late one reopen its session (SPEC rule 2)
        create_topics=False, topic_partitions=SETTING, inactivity_timeout=10.0, reopen_grace=60.0,
    )
    assert created != settings.topic_partitions
    # the operator's topics: the events topic only (the worker creates the others from its
    # real count), or all of them
    precreate = [settings.events_topic]
    if created == 12:
        precreate += [settings.repartition_topic, settings.sessions_topic, settings.dlq_topic]
    create_topics(settings.kafka_bootstrap, dict.fromkeys(precreate, created))

    first = SessionizerProcess("worker", settings, log_path=tmp_path / "worker-1.log").spawn()
    second: SessionizerProcess | None = None
    restarted: SessionizerProcess | None = None
    try:
        _wait_assigned(first)
        for topic in (settings.repartition_topic, settings.sessions_topic, settings.dlq_topic):
            assert _partitions(settings.kafka_bootstrap, topic) == created, topic
        second = SessionizerProcess("worker", settings, log_path=tmp_path / "worker-2.log").spawn()
        _wait_assigned(second, nonempty=created > 1)
        now_ms = int(time.time() * 1000)
        users = [f"user-{created}-{n}" for n in range(60)]
        misplaced = set(users[::7]) if created > 1 else set()
        sent = _publish(settings, created, users[:30], now_ms, misplaced)
        time.sleep(2)
        first.stop()  # a restart: its partitions move to the other worker, then back
        sent += _publish(settings, created, users[30:], int(time.time() * 1000), misplaced)
        restarted = SessionizerProcess("worker", settings, log_path=tmp_path / "worker-1b.log").spawn()
        _wait_assigned(restarted, nonempty=False)
        report = _check_until_ok(settings)
        assert report.ok, "\n".join([*report.problems[:20], *map(str, report.examples[:5])])
        assert second.proc.poll() is None and restarted.proc.poll() is None
        # the latest record of each session (a restart may send one again: at least once)
        latest: dict[str, dict[str, Any]] = {}
        for record in _read_all(settings, settings.sessions_topic):
            session = orjson.loads(record.value)
            if session["revision"] >= latest.get(session["session_id"], {}).get("revision", 0):
                latest[session["session_id"]] = session
        sessions = list(latest.values())
        assert sorted(s["user_id"] for s in sessions) == sorted(users)  # one session each
        assert sum(s["event_count"] for s in sessions) == sent
        for worker in (first, second, restarted):
            log = worker.log_text()
            for sign in ("Unrecognized partition", "We experienced a crash"):
                assert sign not in log, f"{sign!r} in {worker.log_path}:\n{log[-3000:]}"
    finally:
        for worker in (first, second, restarted):
            if worker is not None:
                worker.stop()


def _read_all(settings: Settings, topic: str) -> list[Any]:
    from pipeline.devtools.checker import read_topic

    return read_topic(settings.kafka_bootstrap, topic, timeout_s=60)


def test_a_repartition_topic_of_another_count_is_refused_at_start(settings_factory: Any) -> None:
    settings = settings_factory(create_topics=False, topic_partitions=SETTING)
    create_topics(settings.kafka_bootstrap, {settings.events_topic: 3, settings.repartition_topic: 5})
    done = subprocess.run([*sessionizer_command(), "worker"], env=settings_env(settings),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert settings.repartition_topic in lines[0] and "5 partitions" in lines[0]
    assert "3" in lines[0] and "SESSIONIZER_REPARTITION_TOPIC" in lines[0]
