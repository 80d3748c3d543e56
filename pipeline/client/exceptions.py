"""Errors of the Python client (under :mod:`pipeline.exceptions`).

::

    SessionizerError
    └── ClientError           the client was used wrongly (no identity, closed, bad argument)
        └── TransportError    events could not be delivered (says how many and why)
"""

from __future__ import annotations

from pipeline.exceptions import SessionizerError


class ClientError(SessionizerError):
    """The client cannot do what was asked."""


class TransportError(ClientError):
    """Events could not be delivered to the gateway or the broker."""

    def __init__(self, message: str, *, retriable: bool = True, status: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status = status  # the HTTP status, when the gateway answered
