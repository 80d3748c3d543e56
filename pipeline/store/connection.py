"""Every Redis client of the pipeline, built in one place from the settings.

The worker's store, the gateway's Sessions report, ``sessionizer status`` /
``sessions`` and the other commands all connect through :func:`redis_client`
(asyncio) or :func:`redis_client_sync`, so each gets the same:

- security: the AUTH password (in ``SESSIONIZER_REDIS_URL`` or
  ``SESSIONIZER_REDIS_PASSWORD``), TLS for a ``rediss://`` URL with the
  ``SESSIONIZER_REDIS_SSL_*`` files and explicit hostname checking
  (``SESSIONIZER_REDIS_SSL_CHECK_HOSTNAME``), from
  :func:`pipeline.security.redis_options`;
- timeouts: ``SESSIONIZER_REDIS_SOCKET_TIMEOUT`` for every reply (a half-open
  connection fails a command instead of hanging it) and
  ``SESSIONIZER_REDIS_CONNECT_TIMEOUT`` for a new connection;
- a bounded pool: at most ``SESSIONIZER_REDIS_MAX_CONNECTIONS`` connections; a
  command that finds them all busy waits up to the socket timeout for one.

Nothing connects until the first command. Closing the client closes its pool.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

from pipeline.config import Settings
from pipeline.security import redis_options

__all__ = ["pool_options", "redis_client", "redis_client_sync"]

HEALTH_CHECK_INTERVAL_S = 30


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


def redis_client(settings: Settings, *, decode_responses: bool = False) -> aioredis.Redis:
    """An asyncio client for ``SESSIONIZER_REDIS_URL`` with the security settings,
    timeouts and a bounded pool. Raises :class:`~pipeline.exceptions.ConfigError`
    for settings that cannot work."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, decode_responses=decode_responses, **pool_options(settings)
    )
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool too
    return client


def redis_client_sync(settings: Settings, *, decode_responses: bool = False) -> redis.Redis:
    """The blocking twin of :func:`redis_client`, for the commands and tools."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, decode_responses=decode_responses, **pool_options(settings)
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # close() closes the pool too
    return client
