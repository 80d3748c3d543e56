"""Shared pytest fixtures: embedded services started on demand, topics, settings.

Nothing starts unless a test asks for it:

``broker``          session-scoped :class:`~pipeline.services.EmbeddedBroker` (Tansu)
``redis_server``    session-scoped :class:`~pipeline.services.EmbeddedRedis` (AOF on)
``redis_client``    a ``redis.Redis`` on ``redis_server``, FLUSHALL before each test
``topic_factory``   ``topic_factory(partitions=1, stem="topic") -> name``: a new topic
                    with a unique name; ``topic_factory.many(["events", "sessions"],
                    partitions=4) -> {"events": name, ...}``
``settings_factory`` ``settings_factory(**overrides) -> Settings`` wired to the embedded
                    broker and redis-server, with fresh topics (created, with
                    ``topic_partitions`` partitions) and a fresh consumer group

Tests under ``tests/integration``, ``tests/e2e`` and ``tests/faults`` get the markers
``integration``, ``e2e`` and ``faults`` automatically.

The session's broker and redis-server are shared: a test that kills or pauses them
gets them back running (and resumed) before the next test, but the broker's memory
storage does not survive a kill. Fault tests that break services should start their
own (``with EmbeddedBroker() as broker: ...``).
"""

from __future__ import annotations

import itertools
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

try:
    import pipeline  # noqa: F401
except ImportError:  # running pytest without `make venv` (no editable install)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Settings
from pipeline.services import EmbeddedBroker, EmbeddedRedis, create_topics
from pipeline.services_cluster import EmbeddedRedisCluster

TESTS_DIR = Path(__file__).resolve().parent
_DIR_MARKERS = {"integration": "integration", "e2e": "e2e", "faults": "faults"}

#: The session's services that have been started, for the per-test health check.
_STARTED: list[EmbeddedBroker | EmbeddedRedis] = []


# -- markers and warnings -------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3 loads its protocol schemas with deprecated importlib.resources calls.
    for message in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            first = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        marker = _DIR_MARKERS.get(first)
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


# -- services -----------------------------------------------------------------


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker for the whole session (memory-only, loopback, free port)."""
    service = EmbeddedBroker()
    service.start()
    _STARTED.append(service)
    try:
        yield service
    finally:
        _STARTED.remove(service)
        service.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A redis-server for the whole session (AOF, appendfsync everysec, loopback)."""
    service = EmbeddedRedis()
    service.start()
    _STARTED.append(service)
    try:
        yield service
    finally:
        _STARTED.remove(service)
        service.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    """A Redis Cluster for the whole session: 3 masters, 3 replicas, AOF on,
    cluster-node-timeout 1.5 s (pipeline.services_cluster)."""
    cluster = EmbeddedRedisCluster(masters=3, replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def _heal_shared_services() -> None:
    """Resume or restart a shared service that an earlier test paused or killed."""
    for service in _STARTED:
        if service.paused:
            service.resume()
        if not service.running:
            service.restart()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, attach the tail of each running service's log to the report."""
    report = yield
    if report.failed:
        for service in _STARTED:
            tail = service.log_tail(40)
            if tail:
                report.sections.append((f"{service.name} log ({service.log_path})", tail))
    return report


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[Any]:
    """A ``redis.Redis`` (bytes replies) on the session's server, emptied first."""
    client = redis_server.client()
    client.flushall()
    try:
        yield client
    finally:
        client.close()


# -- topics and settings ------------------------------------------------------

_counter = itertools.count(1)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:limit] or "test"


class TopicFactory:
    """Creates topics with unique names on the session broker."""

    def __init__(self, bootstrap: str, test_name: str) -> None:
        self.bootstrap = bootstrap
        self._test = _slug(test_name)
        self.created: list[str] = []

    def name(self, stem: str = "topic") -> str:
        """A fresh unique topic name (not created)."""
        return f"{_slug(stem, 30)}-{self._test}-{next(_counter)}-{uuid.uuid4().hex[:6]}"

    def __call__(self, partitions: int = 1, stem: str = "topic") -> str:
        """Create one topic with *partitions* partitions and return its name."""
        return self.many([stem], partitions=partitions)[stem]

    def many(self, stems: Sequence[str], partitions: int = 1) -> dict[str, str]:
        """Create one topic per stem; returns ``{stem: topic name}``."""
        names = {stem: self.name(stem) for stem in stems}
        create_topics(self.bootstrap, dict.fromkeys(names.values(), partitions))
        self.created.extend(names.values())
        return names


@pytest.fixture
def topic_factory(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> TopicFactory:
    return TopicFactory(broker.bootstrap, request.node.name)


_TOPIC_FIELDS = (
    "events_topic",
    "sessions_topic",
    "dlq_topic",
    "updates_topic",
    "repartition_topic",
)


@pytest.fixture
def settings_factory(request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """``settings_factory(**overrides) -> Settings`` for the embedded services.

    Defaults: ``kafka_bootstrap`` / ``redis_url`` of the session's broker and
    redis-server (each started only when not overridden), all five topics fresh and
    created with ``topic_partitions`` partitions (default 4; a topic name given as an
    override is created too), a unique ``consumer_group``, ``kafka_session_timeout=6``
    (Tansu answers a group join after half of it) and ``web_port=0``. Pass
    ``create_topics=False`` to only name the topics.
    """

    def make(*, create_topics: bool = True, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "topic_partitions": 4,
            "kafka_session_timeout": 6.0,
            "web_port": 0,
        }
        if "kafka_bootstrap" not in overrides:
            values["kafka_bootstrap"] = request.getfixturevalue("broker").bootstrap
        if "redis_url" not in overrides:
            values["redis_url"] = request.getfixturevalue("redis_server").url
        unique = f"{_slug(request.node.name, 30)}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
        for field in _TOPIC_FIELDS:
            values[field] = f"{field.removesuffix('_topic')}-{unique}"
        values["consumer_group"] = f"sessionizer-{unique}"
        values.update(overrides)
        settings = Settings(**values)
        if create_topics:
            _create_settings_topics(settings)
        return settings

    return make


def _create_settings_topics(settings: Settings) -> None:
    names = {getattr(settings, field) for field in _TOPIC_FIELDS}
    create_topics(settings.kafka_bootstrap, dict.fromkeys(sorted(names), settings.topic_partitions))
