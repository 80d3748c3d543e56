"""Every Redis client of the pipeline, built in one place from the settings.

The worker's store, the gateway's Sessions report, ``sessionizer status`` /
``sessions``, ``dev`` and the checker all connect through :func:`redis_client`
(asyncio) or :func:`redis_client_sync`, so each gets the same:

- security: the AUTH password (in ``SESSIONIZER_REDIS_URL`` or
  ``SESSIONIZER_REDIS_PASSWORD``), TLS for a ``rediss://`` URL with the
  ``SESSIONIZER_REDIS_SSL_*`` files and explicit hostname checking
  (``SESSIONIZER_REDIS_SSL_CHECK_HOSTNAME``), from
  :func:`pipeline.security.redis_options`;
- timeouts: ``SESSIONIZER_REDIS_SOCKET_TIMEOUT`` for every reply (a half-open
  connection fails a command instead of hanging it) and
  ``SESSIONIZER_REDIS_CONNECT_TIMEOUT`` for a new connection;
- a bounded pool: at most ``SESSIONIZER_REDIS_MAX_CONNECTIONS`` connections (per
  node on a cluster); a blocking client's command that finds them all busy waits
  up to the socket timeout for one, the asyncio cluster client fails it with
  ``MaxConnectionsError`` (redis-py's cluster nodes have no waiting pool);
- the topology: with ``SESSIONIZER_REDIS_CLUSTER=true`` (or ``auto``, the
  default, and a server that answers ``cluster_enabled:1`` to ``INFO cluster``)
  the client is redis-py's ``RedisCluster``: it learns the slot map from the URL's
  node, sends each key to the master that holds its slot, and follows MOVED/ASK
  and failovers by refreshing the map and retrying. Every key of a partition
  shares the hash tag ``{pP}`` (:mod:`pipeline.store.keys`), so a partition's
  commit (one MULTI/EXEC) runs on one node in one slot;
- on one server, commands packed by hiredis from their arguments as given
  (:class:`_PackInC`).

Nothing connects until the first command, except the ``auto`` probe. Closing the
client closes its pool(s).
"""

from __future__ import annotations

from typing import Any, cast

import hiredis
import redis
import redis.asyncio as aioredis

from pipeline.config import Settings, load_settings
from pipeline.security import redis_options

__all__ = [
    "client_for_url",
    "cluster_enabled",
    "is_cluster",
    "pool_options",
    "redis_client",
    "redis_client_sync",
    "sync_client_for_url",
    "use_cluster",
]

HEALTH_CHECK_INTERVAL_S = 30

#: seconds a probe for ``cluster_enabled`` waits for an answer (``auto`` only)
PROBE_TIMEOUT_S = 2.0

#: pool options that only a single-node pool (or the blocking cluster client's
#: per-node pools) understands: the asyncio cluster client refuses them
_WAITING_POOL_ONLY = ("timeout",)


def pool_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments every Redis connection pool is built with."""
    return {
        **redis_options(settings),
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "max_connections": settings.redis_max_connections,
        "timeout": settings.redis_socket_timeout,  # wait for a free connection
    }


def cluster_enabled(url: str, **options: Any) -> bool:
    """Whether the server at ``url`` runs in cluster mode (``INFO cluster``); False when
    it cannot be asked (the first real command then reports why). ``options``: AUTH
    and TLS as :func:`pipeline.security.redis_options` builds them."""
    probe_options = {k: v for k, v in options.items() if k.startswith("ssl") or k in ("password", "username")}
    probe_options.update(socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S)
    try:
        with redis.Redis.from_url(url, **probe_options) as probe:
            info = probe.info("cluster")
    except (redis.RedisError, OSError):
        return False
    return bool(int(info.get("cluster_enabled", 0)))


def use_cluster(settings: Settings) -> bool:
    """``SESSIONIZER_REDIS_CLUSTER``: true, false, or auto (ask the server)."""
    mode = settings.redis_cluster
    if mode == "auto":
        return cluster_enabled(settings.redis_url, **redis_options(settings))
    return mode == "true"


def redis_client(settings: Settings, *, decode_responses: bool = False) -> aioredis.Redis:
    """An asyncio client (``redis.asyncio.Redis`` or ``RedisCluster``) for
    ``SESSIONIZER_REDIS_URL`` with the security settings, timeouts and a bounded pool.
    Raises :class:`~pipeline.exceptions.ConfigError` for settings that cannot work."""
    return _async_client(
        settings.redis_url, use_cluster(settings), decode_responses=decode_responses,
        **pool_options(settings),
    )


def redis_client_sync(settings: Settings, *, decode_responses: bool = False) -> redis.Redis:
    """The blocking twin of :func:`redis_client` (``redis.Redis`` or ``RedisCluster``),
    for the commands and tools."""
    return _sync_client(
        settings.redis_url, use_cluster(settings), decode_responses=decode_responses,
        **pool_options(settings),
    )


def client_for_url(url: str, *, cluster: bool | None = None, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` with the Redis settings of the environment
    (security, timeouts, bounded pool); ``cluster`` None: ``SESSIONIZER_REDIS_CLUSTER``
    decides. ``options`` override single pool options (redis-py keywords); values in
    the URL win over them."""
    settings = load_settings(redis_url=url)
    if cluster is None:
        cluster = use_cluster(settings)
    return _async_client(url, cluster, **{**pool_options(settings), **options})


def sync_client_for_url(url: str, *, cluster: bool | None = None, **options: Any) -> redis.Redis:
    """The blocking twin of :func:`client_for_url`."""
    settings = load_settings(redis_url=url)
    if cluster is None:
        cluster = use_cluster(settings)
    return _sync_client(url, cluster, **{**pool_options(settings), **options})


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a cluster client (asyncio or blocking)."""
    return isinstance(client, aioredis.RedisCluster | redis.RedisCluster)


class _PackInC:
    """Commands packed by hiredis from their arguments as they are. redis-py's own
    hiredis packer first passes every argument through its encoder in Python, about a
    third of a µs each: a commit's writes carry a few arguments per event."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if not isinstance(first, str | bytes) or (" " in first if isinstance(first, str) else b" " in first):
            return cast(list[bytes], super().pack_command(*args))  # type: ignore[misc]
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            # a type hiredis does not take (a bool among them, which redis-py refuses
            # too rather than send 1/0): redis-py's packer says which
            return cast(list[bytes], super().pack_command(*args))  # type: ignore[misc]


class _Connection(_PackInC, aioredis.Connection):
    pass


class _SSLConnection(_PackInC, aioredis.SSLConnection):
    pass


def _async_client(url: str, cluster: bool, **options: Any) -> aioredis.Redis:
    if cluster:
        node_options = {k: v for k, v in options.items() if k not in _WAITING_POOL_ONLY}
        # typed as the single-node client: the commands the store uses are common to both
        return cast(aioredis.Redis, aioredis.RedisCluster.from_url(_cluster_url(url), **node_options))
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss"):
        options = {**options, "connection_class": _SSLConnection if scheme == "rediss" else _Connection}
    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool too
    return client


def _sync_client(url: str, cluster: bool, **options: Any) -> redis.Redis:
    if cluster:
        # each node's pool a BlockingConnectionPool, bounded by max_connections
        return cast(redis.Redis, redis.RedisCluster.from_url(
            _cluster_url(url), connection_pool_class=redis.BlockingConnectionPool, **options
        ))
    pool = redis.BlockingConnectionPool.from_url(url, **options)
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # close() closes the pool too
    return client


def _cluster_url(url: str) -> str:
    """The URL without its database: a cluster has database 0 only."""
    head, sep, tail = url.rpartition("/")
    if sep and "//" in head and tail.split("?")[0] in ("0", ""):
        query = tail.partition("?")[2]
        return head + ("?" + query if query else "")
    return url
