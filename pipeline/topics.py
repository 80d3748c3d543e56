"""Creating Kafka topics with kafka-python's admin client, and waiting until the
broker shows them: the worker's preflight (:func:`pipeline.worker.run.create_topics`,
with its security settings and retention) and the development tools
(:func:`pipeline.devtools.services.create_topics`) take the same steps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.exceptions import ServiceStartError


def ensure_topics(
    bootstrap: str,
    wanted: Mapping[str, int],
    *,
    replication: int,
    configs: Callable[[str], Mapping[str, str]],
    timeout: float,
    admin_options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Create the topics of ``wanted`` (``{name: partitions}``) that do not exist yet,
    each with ``configs(name)``, and wait until every one shows in the broker's
    metadata; ``{name: partition count}`` as the broker reports it (a topic that
    existed keeps its count and its configs). ``admin_options``: more keyword
    arguments of ``KafkaAdminClient`` (the security settings). Raises
    :class:`~pipeline.exceptions.ServiceStartError` when the broker cannot be reached,
    refuses, or does not show a topic within ``timeout`` seconds."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    if not wanted:
        return {}
    deadline = time.monotonic() + timeout
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="sessionizer-admin",
            request_timeout_ms=int(timeout * 1000),
            **dict(admin_options or {}),
        )
    except KafkaError as exc:
        raise ServiceStartError(f"cannot reach Kafka at {bootstrap} to create topics: {exc}") from exc
    try:
        for name, count in wanted.items():
            new = NewTopic(name, count, replication, topic_configs=dict(configs(name)))
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
                missing = sorted(set(wanted) - set(found))
                raise ServiceStartError(f"topics {missing} not visible on {bootstrap} after {timeout:.0f}s")
            time.sleep(0.05)
    except KafkaError as exc:
        raise ServiceStartError(f"creating topics {sorted(wanted)} on {bootstrap} failed: {exc}") from exc
    finally:
        admin.close()
