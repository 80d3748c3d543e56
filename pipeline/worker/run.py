"""``sessionizer worker``: check the services, declare the topics, run faust."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

from pipeline.config import Settings, load_settings
from pipeline.exceptions import BrokerUnavailable, ConfigError, ServiceStartError
from pipeline.security import check_redis, kafka_python_options, kafka_security, redis_options
from pipeline.store.connection import redis_client


def create_topics(settings: Settings, wanted: dict[str, int], timeout: float) -> dict[str, int]:
    """Create the missing topics of ``wanted`` (``{name: partitions}``) with the worker's
    Kafka security settings; ``{name: partition count}`` as the broker reports them
    (an existing topic keeps its count). Like :func:`pipeline.services.create_topics`."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="sessionizer-admin",
        request_timeout_ms=int(timeout * 1000),
        **kafka_python_options(settings),
    )
    try:
        for name, count in wanted.items():
            new = NewTopic(name, count, settings.topic_replication, topic_configs={"retention.ms": "-1"})
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([new])
        while True:
            found: dict[str, int] = {}
            for info in admin.describe_topics(list(wanted)):
                name = info.get("name", info.get("topic"))
                parts: list[Any] = info.get("partitions") or []
                if info.get("error_code", 0) == 0 and parts:
                    found[name] = len(parts)
            if set(wanted) <= set(found):
                return {name: found[name] for name in wanted}
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"topics {sorted(set(wanted) - set(found))} not visible after {timeout:.0f}s"
                )
            time.sleep(0.05)
    finally:
        admin.close()


def preflight(settings: Settings) -> dict[str, int]:
    """Fail fast, in one line, when Kafka or Redis is unreachable; create missing topics.

    The events and repartition topics must have the same partition count (a
    session key routes to the same partition number in both).
    """
    from kafka.errors import KafkaError

    security = kafka_security(settings)  # a bad combination fails here, naming the variable
    redis_options(settings)  # the same for Redis

    async def ping_redis() -> None:
        client = redis_client(settings)
        try:
            await check_redis(client, settings)
        finally:
            await client.aclose()

    asyncio.run(ping_redis())
    try:
        counts = create_topics(settings, {settings.events_topic: settings.topic_partitions}, timeout=10)
        partitions = counts[settings.events_topic]
        counts.update(create_topics(
            settings,
            {settings.repartition_topic: partitions, settings.sessions_topic: partitions,
             settings.dlq_topic: partitions},
            timeout=15,
        ))
    except (KafkaError, OSError, TimeoutError, ServiceStartError) as exc:
        secured = (
            f", the SESSIONIZER_KAFKA_SECURITY_PROTOCOL ({security.protocol}) / _SASL_* / _SSL_* settings"
            if security.protocol != "PLAINTEXT" else ""
        )
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc.__class__.__name__}); "
            f"check SESSIONIZER_KAFKA_BOOTSTRAP{secured} and that the broker is running"
        ) from None
    if counts[settings.repartition_topic] != counts[settings.events_topic]:
        raise ConfigError(
            f"topic {settings.repartition_topic} has {counts[settings.repartition_topic]} partitions "
            f"but {settings.events_topic} has {counts[settings.events_topic]}; they must match: "
            "recreate the repartition topic with the same count"
        )
    return counts


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
    preflight(settings)
    app = build_app(settings)
    level = settings.log_level.upper()
    logging.getLogger("pipeline").setLevel(level)
    logging_config = worker_logging_config(settings)
    # JSON logs: no start-up banner either, so every line of output is one JSON object
    worker = faust.Worker(app, loglevel=level, logging_config=logging_config,
                          quiet=logging_config is not None)
    tune_gc()
    worker.execute_from_commandline()
