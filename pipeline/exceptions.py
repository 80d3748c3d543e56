"""The exception tree of the sessionizer.

::

    SessionizerError                 root: catch this to catch everything of ours
    ├── ConfigError                  a setting is invalid (says which and why)
    ├── ServiceUnavailable           the broker or Redis cannot be reached
    │   ├── BrokerUnavailable
    │   └── RedisUnavailable
    ├── FencedError                  another worker owns the partition now
    └── ServiceStartError            an embedded broker / redis-server failed to start

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations


class SessionizerError(Exception):
    """Root of every error raised by this package."""


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
