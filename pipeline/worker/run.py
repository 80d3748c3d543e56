"""``sessionizer worker``: check the services, declare the topics, run faust."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from typing import Any

from pipeline.config import Settings, load_settings
from pipeline.exceptions import BrokerUnavailable, ConfigError, ServiceStartError
from pipeline.security import check_redis, kafka_python_options, kafka_security
from pipeline.store.connection import pool_options, redis_client
from pipeline.topics import ensure_topics


def topic_retention_ms(settings: Settings) -> dict[str, int]:
    """``{topic: retention.ms}`` the worker gives each topic it creates (``*_retention_ms``)."""
    return {
        settings.events_topic: settings.events_retention_ms,
        settings.repartition_topic: settings.events_retention_ms,
        settings.sessions_topic: settings.sessions_retention_ms,
        settings.dlq_topic: settings.dlq_retention_ms,
        settings.updates_topic: settings.updates_retention_ms,
    }


def create_topics(settings: Settings, wanted: dict[str, int], timeout: float) -> dict[str, int]:
    """Create the missing topics of ``wanted`` (``{name: partitions}``) with the worker's
    Kafka security settings and retention (:func:`topic_retention_ms`); ``{name: partition
    count}`` as the broker reports them (an existing topic keeps its count and its configs)."""
    retention = topic_retention_ms(settings)

    def configs(name: str) -> dict[str, str]:
        return {"retention.ms": str(retention.get(name, settings.events_retention_ms))}

    return ensure_topics(settings.kafka_bootstrap, wanted, replication=settings.topic_replication,
                         configs=configs, timeout=timeout, admin_options=kafka_python_options(settings))


def check_schema() -> None:
    """Read and compile the event schema now: a missing or broken one is a setting to
    fix (``SESSIONIZER_SCHEMA_DIR``), not something a retry mends."""
    from pipeline.core.parse import SCHEMA_DIR_ENV, EventSchema, schema_dir

    try:
        EventSchema.load()
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:  # unreadable, not JSON, not a JSON schema
        raise ConfigError(
            f"the event schema in {schema_dir()} cannot be used ({exc.__class__.__name__}: {exc}); "
            f"fix it, or set {SCHEMA_DIR_ENV} to a folder with a valid one (unset: the packaged one)"
        ) from None

#: maxmemory-policy values under which Redis never deletes a key to make room
SAFE_EVICTION_POLICIES = ("noeviction",)


async def check_eviction(client: Any, settings: Settings) -> None:
    """Refuse (:class:`ConfigError`, one line) a Redis whose ``maxmemory-policy`` evicts
    keys: it would drop live sessions and applied offsets without a word. A Redis that
    does not let ``CONFIG GET`` through (managed services) is taken at its word; set
    ``SESSIONIZER_REDIS_ALLOW_EVICTION=true`` to start anyway against an evicting one."""
    from redis.exceptions import ResponseError

    try:
        reply = await client.config_get("maxmemory-policy")
    except ResponseError as exc:
        logging.getLogger("pipeline.worker").warning(
            "cannot read Redis's maxmemory-policy (%s); make sure it is noeviction", exc
        )
        return
    raw = reply.get(b"maxmemory-policy", reply.get("maxmemory-policy", b""))
    policy = raw.decode() if isinstance(raw, bytes) else str(raw)
    if policy in SAFE_EVICTION_POLICIES or not policy:
        return
    if settings.redis_allow_eviction:
        logging.getLogger("pipeline.worker").warning(
            "Redis maxmemory-policy is %s: it may evict live sessions when full "
            "(started anyway: SESSIONIZER_REDIS_ALLOW_EVICTION=true)", policy
        )
        return
    raise ConfigError(
        f"Redis maxmemory-policy is {policy}, which evicts keys when memory is full and would "
        "silently drop live sessions; set it to noeviction (CONFIG SET maxmemory-policy "
        "noeviction, or in redis.conf), or set SESSIONIZER_REDIS_ALLOW_EVICTION=true to accept it"
    )


def preflight(settings: Settings) -> dict[str, int]:
    """Fail fast, in one line, on what no retry can mend: a missing or broken schema, a
    bad setting, unreachable Kafka or Redis, topics whose partition counts cannot
    work; create the missing topics.

    The events and repartition topics must have the same partition count (a
    session key routes to the same partition number in both).
    """
    from kafka.errors import KafkaError

    check_schema()
    security = kafka_security(settings)  # a bad combination fails here, naming the variable
    pool_options(settings)  # a bad Redis TLS/AUTH combination fails here, naming the variable

    async def ping_redis() -> None:
        client = redis_client(settings)
        try:
            await check_redis(client, settings)
            await check_eviction(client, settings)
        finally:
            await client.aclose()

    asyncio.run(ping_redis())
    try:
        counts = create_topics(settings, {settings.events_topic: settings.topic_partitions}, timeout=10)
        partitions = counts[settings.events_topic]
        more = {settings.repartition_topic: partitions, settings.sessions_topic: partitions,
                settings.dlq_topic: partitions}
        if settings.updates_interval > 0:
            more[settings.updates_topic] = partitions
        counts.update(create_topics(settings, more, timeout=15))
    except (KafkaError, OSError, TimeoutError, ServiceStartError) as exc:
        # what kafka-python raised, also when topic creation wrapped it (topics.ensure_topics)
        failed = type(exc.__cause__ or exc).__name__
        secured = (
            f", the SESSIONIZER_KAFKA_SECURITY_PROTOCOL ({security.protocol}) / _SASL_* / _SSL_* settings"
            if security.protocol != "PLAINTEXT" else ""
        )
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({failed}); "
            f"check SESSIONIZER_KAFKA_BOOTSTRAP{secured} and that the broker is running"
        ) from None
    if counts[settings.repartition_topic] != counts[settings.events_topic]:
        raise ConfigError(
            f"topic {settings.repartition_topic} has {counts[settings.repartition_topic]} partitions "
            f"but {settings.events_topic} has {counts[settings.events_topic]}; they must match "
            "(a session key routes to the same partition number in both): recreate "
            f"{settings.repartition_topic} with {counts[settings.events_topic]} partitions, or set "
            "SESSIONIZER_REPARTITION_TOPIC to a new name (the worker creates it)"
        )
    return counts


def grow_topic(settings: Settings, name: str, partitions: int, timeout: float = 15.0) -> None:
    """Add partitions to topic ``name`` up to ``partitions`` (the events topic grew)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewPartitions
    from kafka.errors import InvalidPartitionsError

    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="sessionizer-admin",
        request_timeout_ms=int(timeout * 1000),
        **kafka_python_options(settings),
    )
    try:
        with contextlib.suppress(InvalidPartitionsError):  # grown already (by another worker)
            admin.create_partitions({name: NewPartitions(partitions)})
    finally:
        admin.close()


#: the cyclic garbage collector's thresholds in the worker (Python's default is a
#: first-generation collection every 700 net allocations). The hot path allocates a few
#: dozen containers per event and almost none of them in cycles (reference counting
#: frees them); most live as long as their batch, and a collection in the middle of a
#: batch examines all of them: at the default a quarter of the worker's CPU went to
#: the collector, at 50,000 a tenth, at 200,000 (a batch's objects mostly gone before
#: the count gets there) about 2 %, in collections of about 0.1 s.
GC_THRESHOLD = (200_000, 20, 20)


def tune_gc() -> None:
    """Collect cycles less often, and leave what start-up built (modules, classes,
    the app) out of every collection from now on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def run_worker(settings: Settings | None = None) -> None:
    import faust

    from pipeline.logs import worker_logging_config
    from pipeline.worker.app import build_app

    settings = settings or load_settings()
    settings.project_rules  # noqa: B018 -- a bad SESSIONIZER_PROJECT_SETTINGS fails here, in one line
    counts = preflight(settings)
    app = build_app(settings, counts[settings.events_topic])
    app.sessionizer.grow_repartition = functools.partial(  # type: ignore[attr-defined]
        grow_topic, settings, settings.repartition_topic
    )
    level = settings.log_level.upper()
    logging.getLogger("pipeline").setLevel(level)
    logging_config = worker_logging_config(settings)
    # JSON logs: no start-up banner either, so every line of output is one JSON object
    worker = faust.Worker(app, loglevel=level, logging_config=logging_config,
                          quiet=logging_config is not None)
    tune_gc()
    worker.execute_from_commandline()
