"""The sessionizer's Python client: user sessions from a service, over the gateway or
straight to Kafka. Imports nothing of the worker (no faust, Redis or broker).

- :class:`Publisher` - one per process: events of any number of users, identity per
  call, batching, back-pressure, retries, flush on shutdown; threads and asyncio.
- :class:`SessionClient` - the one-user convenience over it (identity, heartbeats).
- :class:`HttpTransport` / :class:`KafkaTransport` (+ :class:`KafkaSecurity`) - where
  the events go.
- :class:`ClientError` / :class:`QueueFullError` / :class:`TransportError` - what can go wrong.
"""

from sessionizer_client.exceptions import (
    ClientError,
    QueueFullError,
    SessionizerError,
    TransportError,
)
from sessionizer_client.kafka_security import KafkaSecurity
from sessionizer_client.publisher import Publisher
from sessionizer_client.session import SessionClient
from sessionizer_client.transports import HttpTransport, KafkaTransport, Transport

__all__ = [
    "ClientError",
    "HttpTransport",
    "KafkaSecurity",
    "KafkaTransport",
    "Publisher",
    "QueueFullError",
    "SessionClient",
    "SessionizerError",
    "Transport",
    "TransportError",
]
