"""Moved to :mod:`sessionizer_client.exceptions`; kept importable here."""

from sessionizer_client.exceptions import ClientError, QueueFullError, TransportError

__all__ = ["ClientError", "QueueFullError", "TransportError"]
