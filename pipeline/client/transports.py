"""Moved to :mod:`sessionizer_client.transports`; kept importable here."""

from sessionizer_client.transports import HttpTransport, KafkaTransport, Transport, routing_key

__all__ = ["HttpTransport", "KafkaTransport", "Transport", "routing_key"]
