"""Fixtures of the adversarial suite: a cluster per test (fresh topics, consumer group
and Redis key prefix on the session's broker and redis-server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from adversarial_cluster import WORKER_SETTINGS, Cluster

from pipeline.config import Settings
from pipeline.devtools.process import settings_env


@pytest.fixture
def cluster_factory(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """``cluster_factory(**settings) -> Cluster`` (topics created, nothing started)."""
    made: list[Cluster] = []

    def make(**overrides: Any) -> Cluster:
        values = dict(WORKER_SETTINGS)
        values.update(overrides)
        settings = settings_factory(**values)
        env = settings_env(settings)
        env["SESSIONIZER_REDIS_KEY_PREFIX"] = f"adv-{settings.consumer_group}"
        settings = settings.model_copy(update={"redis_key_prefix": env["SESSIONIZER_REDIS_KEY_PREFIX"]})
        root = tmp_path / f"cluster-{len(made) + 1}"
        root.mkdir()
        cluster = Cluster(settings, env, root)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
