"""``sessionizer worker``: check the services, declare the topics, run faust."""

from __future__ import annotations

import asyncio
import logging

from pipeline.config import Settings, load_settings
from pipeline.exceptions import BrokerUnavailable, ConfigError
from pipeline.store.redis import RedisStore


def preflight(settings: Settings) -> dict[str, int]:
    """Fail fast, in one line, when Kafka or Redis is unreachable; create missing topics.

    The events and repartition topics must have the same partition count (a
    session key routes to the same partition number in both).
    """
    from kafka.errors import KafkaError

    from pipeline.exceptions import ServiceStartError
    from pipeline.services import create_topics

    async def ping_redis() -> None:
        store = RedisStore.from_url(settings.redis_url, settings.redis_key_prefix)
        try:
            await store.ping()
        finally:
            await store.close()

    asyncio.run(ping_redis())
    try:
        counts = create_topics(settings.kafka_bootstrap, {settings.events_topic: settings.topic_partitions},
                               replication=settings.topic_replication, timeout=10)
        partitions = counts[settings.events_topic]
        counts.update(create_topics(
            settings.kafka_bootstrap,
            {settings.repartition_topic: partitions, settings.sessions_topic: partitions,
             settings.dlq_topic: partitions},
            replication=settings.topic_replication, timeout=15,
        ))
    except (KafkaError, OSError, TimeoutError, ServiceStartError) as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc.__class__.__name__}); "
            "check SESSIONIZER_KAFKA_BOOTSTRAP and that the broker is running"
        ) from None
    if counts[settings.repartition_topic] != counts[settings.events_topic]:
        raise ConfigError(
            f"topic {settings.repartition_topic} has {counts[settings.repartition_topic]} partitions "
            f"but {settings.events_topic} has {counts[settings.events_topic]}; they must match: "
            "recreate the repartition topic with the same count"
        )
    return counts


def run_worker(settings: Settings | None = None) -> None:
    import faust

    from pipeline.worker.app import build_app

    settings = settings or load_settings()
    settings.project_rules  # noqa: B018 -- a bad SESSIONIZER_PROJECT_SETTINGS fails here, in one line
    preflight(settings)
    app = build_app(settings)
    level = settings.log_level.upper()
    logging.getLogger("pipeline").setLevel(level)
    worker = faust.Worker(app, loglevel=level)
    worker.execute_from_commandline()
