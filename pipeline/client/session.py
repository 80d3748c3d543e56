"""Moved to :mod:`sessionizer_client.session`; kept importable here."""

from sessionizer_client.session import SessionClient

__all__ = ["SessionClient"]
