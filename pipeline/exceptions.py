"""The exception tree of the sessionizer: every exception class of the package is
defined here (tests/unit/test_exceptions.py checks it), and this is the one place
the tree is drawn.

::

    SessionizerError                 root: catch this to catch everything of ours
    ├── ClientError                  the Python client was used wrongly
    │   ├── QueueFullError           its queue stayed full for the whole wait
    │   └── TransportError           events could not be delivered
    ├── ConfigError                  a setting is invalid (says which and why)
    ├── ServiceUnavailable           the broker or Redis cannot be reached
    │   ├── BrokerUnavailable
    │   │   └── PublishError         the gateway's publish was not acknowledged in time
    │   └── RedisUnavailable
    ├── FencedError                  another worker owns the partition now
    │   └── StaleStateError          the store lost writes: claim the partition again
    ├── ServiceStartError            an embedded broker / redis-server failed to start
    ├── ProcessNotReady              a sessionizer child (devtools.process) exited or was not ready
    ├── EventError (ValueError)      the gateway cannot use one event (a SPEC section 6 code)
    ├── BodyError (ValueError)       the gateway cannot use a request body
    ├── ParamError (ValueError)      a Sessions report parameter is invalid
    └── Forbidden                    a report parameter names a project the credential does not open

The root and the client's errors are those of the light client
(``sessionizer_client.exceptions``, which publishers install without the worker), so one
``except SessionizerError`` catches the client's errors too. The errors that are also
``ValueError`` keep that base so code catching bad values keeps working.

One class lives elsewhere, on purpose: ``pipeline.core.timefmt.TimestampError``
(a ``ValueError``: the pure core may not import this module, whose root loads the light
client and with it asyncio).

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations

from sessionizer_client.exceptions import (
    ClientError,
    QueueFullError,
    SessionizerError,
    TransportError,
)

__all__ = [
    "BodyError",
    "BrokerUnavailable",
    "ClientError",
    "ConfigError",
    "EventError",
    "FencedError",
    "Forbidden",
    "ParamError",
    "ProcessNotReady",
    "PublishError",
    "QueueFullError",
    "RedisUnavailable",
    "ServiceStartError",
    "ServiceUnavailable",
    "SessionizerError",
    "StaleStateError",
    "TransportError",
]


class ConfigError(SessionizerError):
    """A setting is invalid."""


class ProcessNotReady(SessionizerError):
    """A ``sessionizer`` child (:mod:`pipeline.devtools.process`) exited or was not ready
    in time; the message ends with the tail of its log."""


class ServiceUnavailable(SessionizerError):
    """A backing service cannot be reached."""


class BrokerUnavailable(ServiceUnavailable):
    """The Kafka broker cannot be reached."""


class PublishError(BrokerUnavailable):
    """The broker did not acknowledge a publish in time; nothing is promised durable."""


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be reached."""


class FencedError(SessionizerError):
    """This worker no longer owns a partition: its write was refused."""


class StaleStateError(FencedError):
    """A write refused because the store holds older state than this worker last wrote
    for the partition: it lost writes (a Redis restarted from an append-only file that
    missed its last second). Nothing was written. Unlike another owner's fencing, the
    partition is still this worker's: claim it again and replay the input from the
    applied offset the store holds."""


class ServiceStartError(SessionizerError):
    """An embedded service (broker or redis-server) did not start."""


class EventError(SessionizerError, ValueError):
    """One event cannot be used; ``code`` is a SPEC section 6 code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class BodyError(SessionizerError, ValueError):
    """The request body as a whole cannot be used."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ParamError(SessionizerError, ValueError):
    """A query or path parameter is invalid."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class Forbidden(SessionizerError):
    """A parameter names a project the credential does not open."""

    def __init__(self, project: str) -> None:
        super().__init__(project)
        self.project = project
