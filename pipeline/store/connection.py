"""Every Redis client of the sessionizer, from one place.

:func:`redis_client` (asyncio: the worker, the report, ``sessions``, ``status``) and
:func:`redis_client_sync` (``dev``, the checker) build a client from the settings:
``SESSIONIZER_REDIS_URL``, AUTH and TLS (:func:`pipeline.security.redis_options`), and
the topology. With ``SESSIONIZER_REDIS_CLUSTER=true`` (or ``auto``, the default, and
a server that answers ``cluster_enabled:1`` to ``INFO cluster``) the client is
redis-py's ``RedisCluster``: it learns the slot map from the URL's node, sends each
key to the master that holds its slot, and follows MOVED/ASK and failovers by
refreshing the map and retrying. Every key of a partition shares the hash tag
``{pP}`` (:mod:`pipeline.store.keys`), so a partition's commit script runs on one
node in one slot.
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio as aioredis

from pipeline.config import Settings
from pipeline.security import redis_options

#: seconds a probe for ``cluster_enabled`` waits for an answer (``auto`` only)
PROBE_TIMEOUT_S = 2.0


def cluster_enabled(url: str, **options: Any) -> bool:
    """Whether the server at ``url`` runs in cluster mode (``INFO cluster``); False when
    it cannot be asked (the first real command then reports why)."""
    options = {k: v for k, v in options.items() if k != "health_check_interval"}
    options.update(socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S)
    try:
        with redis.Redis.from_url(url, **options) as probe:
            info = probe.info("cluster")
    except (redis.RedisError, OSError):
        return False
    return bool(int(info.get("cluster_enabled", 0)))


def use_cluster(settings: Settings, **options: Any) -> bool:
    """``SESSIONIZER_REDIS_CLUSTER``: true, false, or auto (ask the server)."""
    mode = settings.redis_cluster
    if mode == "auto":
        return cluster_enabled(settings.redis_url, **options)
    return mode == "true"


def redis_client(settings: Settings, *, decode_responses: bool = False) -> aioredis.Redis:
    """An asyncio client (``redis.asyncio.Redis`` or ``RedisCluster``); nothing is sent
    until first use, except the ``auto`` probe."""
    options = redis_options(settings)
    return client_for_url(settings.redis_url, cluster=use_cluster(settings, **options),
                          decode_responses=decode_responses, **options)


def client_for_url(url: str, *, cluster: bool | None = None, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` (``cluster`` None: ask the server). ``options`` go
    to redis-py: AUTH and TLS as :func:`pipeline.security.redis_options` builds them;
    values in the URL win over them."""
    if cluster is None:
        cluster = cluster_enabled(url, **options)
    if cluster:
        # typed as the single-node client: the commands the store uses are common to both
        return cast(aioredis.Redis, aioredis.RedisCluster.from_url(_cluster_url(url), **options))
    options.setdefault("health_check_interval", 30)
    return aioredis.Redis.from_url(url, **options)


def sync_client_for_url(url: str, *, cluster: bool | None = None, **options: Any) -> redis.Redis:
    """A blocking client for ``url`` (``cluster`` None: ask the server)."""
    if cluster is None:
        cluster = cluster_enabled(url, **options)
    if cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(_cluster_url(url), **options))
    return redis.Redis.from_url(url, **options)


def redis_client_sync(settings: Settings, *, decode_responses: bool = False) -> redis.Redis:
    """A blocking client (``redis.Redis`` or ``redis.RedisCluster``)."""
    options = redis_options(settings)
    if use_cluster(settings, **options):
        return cast(redis.Redis, redis.RedisCluster.from_url(
            _cluster_url(settings.redis_url), decode_responses=decode_responses, **options
        ))
    return redis.Redis.from_url(settings.redis_url, decode_responses=decode_responses, **options)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a cluster client (asyncio or blocking)."""
    return isinstance(client, aioredis.RedisCluster | redis.RedisCluster)


def _cluster_url(url: str) -> str:
    """The URL without its database: a cluster has database 0 only."""
    head, sep, tail = url.rpartition("/")
    if sep and "//" in head and tail.split("?")[0] in ("0", ""):
        query = tail.partition("?")[2]
        return head + ("?" + query if query else "")
    return url
