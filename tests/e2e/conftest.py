"""Fixtures for whole-process tests: a ``sessionizer worker`` process, publishing, reading.

``worker_factory``  ``worker_factory(**overrides) -> WorkerProcess``, not started yet: its
                    topics exist (so a test can publish a log before the worker reads it);
                    call ``.start()``
``start_worker``    ``start_worker(**overrides) -> WorkerProcess``, started and ready
``worker_process``  a started worker with the defaults

Overrides are settings (``inactivity_timeout=3``) or their environment variables
(``SESSIONIZER_INACTIVITY_TIMEOUT="3"``). Every worker gets fresh topics, a fresh
consumer group and a fresh Redis key prefix, so tests never see each other's state;
``kafka_session_timeout`` is 6 s (the embedded broker answers a group join after half of
it), ``topic_partitions`` 4, ``web_port`` 0 (a free port chosen by
:mod:`pipeline.devtools.process`). A worker is ready when its ``/healthz`` answers with
partitions assigned. At teardown it gets SIGTERM, then SIGKILL; a failing test's report
carries the tail of each of its workers' logs.

Helpers, also as fixtures of the same names (test modules cannot import this file):
:func:`publish` (kafka-python, explicit key, value, timestamp and partition; records are
:class:`Out`) and :func:`read_topic` (no consumer group: every partition from the
beginning).
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.config import Settings
from pipeline.devtools.process import SessionizerProcess
from pipeline.devtools.services import create_topics

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"assigned partitions \[([0-9, ]+)\]")
WORKERS_KEY = pytest.StashKey[list["WorkerProcess"]]()
_counter = itertools.count(1)


def _field_name(name: str) -> str:
    return name[len("SESSIONIZER_"):].lower() if name.upper().startswith("SESSIONIZER_") else name


# -- the worker process -------------------------------------------------------------


class WorkerProcess(SessionizerProcess):
    """One ``sessionizer worker`` child process and the settings it runs with; ready
    when its ``/healthz`` answers with partitions assigned (:mod:`pipeline.devtools.process`)."""

    def __init__(self, settings: Settings, log_path: Path, env: dict[str, str]) -> None:
        super().__init__("worker", env=env, log_path=log_path, grace_s=10.0)
        self.settings = settings

    # the settings a test needs most, at hand
    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def redis_url(self) -> str:
        return self.settings.redis_url

    @property
    def prefix(self) -> str:
        return self.settings.redis_key_prefix

    @property
    def partitions(self) -> int:
        return self.settings.topic_partitions

    @property
    def events_topic(self) -> str:
        return self.settings.events_topic

    @property
    def sessions_topic(self) -> str:
        return self.settings.sessions_topic

    @property
    def dlq_topic(self) -> str:
        return self.settings.dlq_topic

    @property
    def repartition_topic(self) -> str:
        return self.settings.repartition_topic

    def assigned(self) -> list[int] | None:
        """The partitions of the latest ``assigned partitions`` log line (None: none yet)."""
        found = READY.findall(self.log_text())
        if not found or not found[-1].strip():
            return None
        return [int(p) for p in found[-1].split(",")]

    def start(self, timeout: float | None = None) -> WorkerProcess:
        """Spawn the worker and wait until it has partitions assigned."""
        super().start(timeout)
        return self

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} events={self.events_topic} log={self.log_path}>"


def _topic_names(settings: Settings) -> dict[str, int]:
    names = (settings.events_topic, settings.repartition_topic, settings.sessions_topic,
             settings.dlq_topic, settings.updates_topic)
    return dict.fromkeys(names, settings.topic_partitions)


@pytest.fixture
def worker_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, broker_kind: str
) -> Iterator[Callable[..., WorkerProcess]]:
    """``worker_factory(**overrides) -> WorkerProcess`` (created topics, not started)."""
    workers: list[WorkerProcess] = []
    request.node.stash[WORKERS_KEY] = workers

    def make(**overrides: Any) -> WorkerProcess:
        n = next(_counter)
        unique = f"{re.sub(r'[^A-Za-z0-9]+', '-', request.node.name)[:30]}-{n}-{uuid.uuid4().hex[:6]}"
        values: dict[str, Any] = {
            "topic_partitions": 4,
            "kafka_session_timeout": 6,
            "web_port": 0,
            "events_topic": f"events-{unique}",
            "sessions_topic": f"sessions-{unique}",
            "dlq_topic": f"dlq-{unique}",
            "updates_topic": f"updates-{unique}",
            "repartition_topic": f"repartition-{unique}",
            "consumer_group": f"sessionizer-{unique}",
            "redis_key_prefix": f"e2e-{unique}",
        }
        fields = {_field_name(name): value for name, value in overrides.items()}
        if "kafka_bootstrap" not in fields:
            values["kafka_bootstrap"] = request.getfixturevalue("broker").bootstrap
        if "redis_url" not in fields:
            values["redis_url"] = request.getfixturevalue("redis_server").url
        values.update(fields)
        settings = Settings(**values)  # checks the values as the worker will
        env = {name: value for name, value in os.environ.items() if not name.startswith("SESSIONIZER_")}
        env.update({f"SESSIONIZER_{name.upper()}": str(value) for name, value in values.items()})
        env["PYTHONUNBUFFERED"] = "1"
        create_topics(settings.kafka_bootstrap, _topic_names(settings))
        log_path = tmp_path_factory.mktemp("worker") / f"worker-{n}.log"
        worker = WorkerProcess(settings, log_path, env)
        workers.append(worker)
        return worker

    try:
        yield make
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture
def start_worker(worker_factory: Callable[..., WorkerProcess]) -> Callable[..., WorkerProcess]:
    """``start_worker(**overrides) -> WorkerProcess``, started and ready."""

    def start(**overrides: Any) -> WorkerProcess:
        return worker_factory(**overrides).start()

    return start


@pytest.fixture
def worker_process(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A ready ``sessionizer worker`` with the default settings (fresh topics, group, prefix)."""
    return start_worker()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for worker in item.stash.get(WORKERS_KEY, []):
            tail = worker.log_tail(60)
            if tail:
                report.sections.append((f"sessionizer worker log ({worker.log_path})", tail))
    return report


# -- Kafka helpers --------------------------------------------------------------------


class Out(NamedTuple):
    """One record to publish: *partition* None lets the producer's partitioner choose."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    partition: int | None = None


def publish(bootstrap: str, topic: str, records: Iterable[tuple[Any, ...]]) -> list[Any]:
    """Publish :class:`Out` records (or plain ``(key, value, timestamp_ms, partition)``
    tuples) in order, one request in flight so order holds per partition; returns each
    record's ``RecordMetadata`` (``partition``, ``offset``)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_in_flight_requests_per_connection=1,
        max_request_size=4 << 20,
    )
    try:
        futures = [
            producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms,
                          partition=partition)
            for key, value, timestamp_ms, partition in (Out(*r) for r in records)
        ]
        producer.flush(30)
        return [future.get(timeout=30) for future in futures]
    finally:
        producer.close(timeout=5)


def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    *,
    timeout: float = 60.0,
    settle: float = 3.0,
    partitions: Iterable[int] | None = None,
) -> list[Any]:
    """Every record of *topic* from the beginning (no consumer group), in read order.

    Reads until *expected* records came or *timeout* passed, then *settle* seconds more to
    catch records that should not be there.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        if partitions is None:
            deadline = time.monotonic() + 10
            found = consumer.partitions_for_topic(topic)
            while not found and time.monotonic() < deadline:
                time.sleep(0.1)
                found = consumer.partitions_for_topic(topic)
            partitions = sorted(found or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        settled: float | None = None
        while True:
            now = time.monotonic()
            if settled is None and (len(records) >= expected or now >= deadline):
                settled = now + settle
            if settled is not None and now >= settled:
                return records
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
    finally:
        consumer.close()


@pytest.fixture(name="publish")
def publish_fixture() -> Callable[..., list[Any]]:
    """:func:`publish`: ``publish(bootstrap, topic, [Out(key, value, timestamp_ms, partition)])``."""
    return publish


@pytest.fixture(name="read_topic")
def read_topic_fixture() -> Callable[..., list[Any]]:
    """:func:`read_topic`: ``read_topic(bootstrap, topic, expected, timeout=, settle=)``."""
    return read_topic
