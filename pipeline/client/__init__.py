"""The Python client, kept importable as ``pipeline.client``: it lives in the light
``sessionizer_client`` package (``clients/python``), which publishing services install
without the worker. See docs/publishing.md.
"""

from sessionizer_client import (
    ClientError,
    HttpTransport,
    KafkaSecurity,
    KafkaTransport,
    Publisher,
    QueueFullError,
    SessionClient,
    Transport,
    TransportError,
)

__all__ = [
    "ClientError",
    "HttpTransport",
    "KafkaSecurity",
    "KafkaTransport",
    "Publisher",
    "QueueFullError",
    "SessionClient",
    "Transport",
    "TransportError",
]
