"""The exception tree of the sessionizer.

::

    SessionizerError                 root: catch this to catch everything of ours
    ├── ClientError                  the Python client's (sessionizer_client.exceptions)
    ├── ConfigError                  a setting is invalid (says which and why)
    ├── ServiceUnavailable           the broker or Redis cannot be reached
    │   ├── BrokerUnavailable
    │   └── RedisUnavailable
    ├── FencedError                  another worker owns the partition now
    └── ServiceStartError            an embedded broker / redis-server failed to start

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations

# The root is the light client's (``sessionizer_client``, which publishers install without
# the worker), so one ``except SessionizerError`` catches the client's errors too.
from sessionizer_client.exceptions import SessionizerError

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "FencedError",
    "RedisUnavailable",
    "ServiceStartError",
    "ServiceUnavailable",
    "SessionizerError",
]


class ConfigError(SessionizerError):
    """A setting is invalid."""


class ServiceUnavailable(SessionizerError):
    """A backing service cannot be reached."""


class BrokerUnavailable(ServiceUnavailable):
    """The Kafka broker cannot be reached."""


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be reached."""


class FencedError(SessionizerError):
    """This worker no longer owns a partition: its write was refused."""


class ServiceStartError(SessionizerError):
    """An embedded service (broker or redis-server) did not start."""
