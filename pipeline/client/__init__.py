"""The Python client: user sessions from an app, over the gateway or straight to Kafka.

- :class:`SessionClient` - identity, events, exceptions, sessions, heartbeats, batching.
- :class:`HttpTransport` / :class:`KafkaTransport` - where the events go.
- :class:`ClientError` / :class:`TransportError` - what can go wrong.
"""

from pipeline.client.exceptions import ClientError, TransportError
from pipeline.client.session import SessionClient
from pipeline.client.transports import HttpTransport, KafkaTransport, Transport

__all__ = [
    "ClientError",
    "HttpTransport",
    "KafkaTransport",
    "SessionClient",
    "Transport",
    "TransportError",
]
