"""Errors of the client, and the root of every sessionizer error.

::

    SessionizerError          root (``pipeline.exceptions`` builds its tree on it too)
    └── ClientError           the client was used wrongly (no identity, closed, bad setting)
        ├── QueueFullError    the queue stayed full for the whole wait (back-pressure)
        └── TransportError    events could not be delivered (says how many and why)
"""

from __future__ import annotations


class SessionizerError(Exception):
    """Root of every error raised by the sessionizer and its client."""


class ClientError(SessionizerError):
    """The client cannot do what was asked."""


class QueueFullError(ClientError):
    """The queue held ``max_queue`` events for the whole wait: the transport is slower than
    the callers, or down. Events already queued are kept; this one was not queued."""


class TransportError(ClientError):
    """Events could not be delivered to the gateway or the broker."""

    def __init__(self, message: str, *, retriable: bool = True, status: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status = status  # the HTTP status, when the gateway answered
