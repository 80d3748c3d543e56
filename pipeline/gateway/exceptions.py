"""Errors of the gateway (under :mod:`pipeline.exceptions`)."""

from __future__ import annotations

from pipeline.exceptions import BrokerUnavailable


class PublishError(BrokerUnavailable):
    """The broker did not acknowledge a publish in time; nothing is promised durable."""
