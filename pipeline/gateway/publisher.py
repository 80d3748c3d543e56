"""The gateway's I/O edge: records out to the events topic.

The app only needs a :data:`Publish` function: an async callable that takes
records and returns once the broker holds them all, or raises
:class:`PublishError`. Tests pass a plain async function; production uses
:class:`KafkaPublisher`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.exceptions import BrokerUnavailable, PublishError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record: routing key, one SPEC event as JSON, arrival time."""

    key: bytes
    value: bytes
    timestamp_ms: int


Publish = Callable[[Sequence[Record]], Awaitable[None]]
Ready = Callable[[], Awaitable[bool]]


class KafkaPublisher:
    """Publishes with aiokafka, ``acks="all"``; returns only after every ack."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        timeout_s: float = 10.0,
        max_request_size: int = 1024 * 1024,
        **client: object,
    ) -> None:
        """``client`` options go to aiokafka (security: :func:`pipeline.security.aiokafka_options`)."""
        self.bootstrap = bootstrap
        self._client = client
        self.topic = topic
        self.timeout_s = timeout_s
        self._max_request_size = max_request_size
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect, or raise :class:`BrokerUnavailable` with a one-line reason."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            request_timeout_ms=max(1000, int(self.timeout_s * 1000)),
            max_request_size=self._max_request_size,
            client_id="sessionizer-gateway",
            **self._client,
        )
        aiokafka_log = logging.getLogger("aiokafka")
        level = aiokafka_log.level
        aiokafka_log.setLevel(logging.CRITICAL)  # the reason goes into our one-line error
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            await producer.stop()
            raise BrokerUnavailable(
                f"cannot reach the Kafka broker at {self.bootstrap} ({exc}); "
                "check SESSIONIZER_KAFKA_BOOTSTRAP and that the broker is running"
            ) from None
        finally:
            aiokafka_log.setLevel(level)
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __call__(self, records: Sequence[Record]) -> None:
        if self._producer is None:
            raise PublishError("the Kafka producer is not started")
        producer = self._producer
        try:
            async with asyncio.timeout(self.timeout_s):
                futures = [
                    await producer.send(self.topic, r.value, key=r.key, timestamp_ms=r.timestamp_ms)
                    for r in records
                ]
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            log.warning("publish of %d records to %s failed: %s", len(records), self.topic, detail)
            raise PublishError(f"the broker did not acknowledge the events: {detail}") from None

    async def ready(self) -> bool:
        """True when the producer runs and the broker answers a metadata request."""
        if self._producer is None:
            return False
        try:
            async with asyncio.timeout(min(self.timeout_s, 3.0)):
                return bool(await self._producer.client.force_metadata_update())
        except (KafkaError, TimeoutError, OSError):
            return False
