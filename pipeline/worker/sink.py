"""The Kafka side of the outbox: send outgoing messages, wait for acknowledgement."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.worker.outbox import DEAD_LETTER, FORWARD, ORIGIN_HEADER, SESSION, UPDATE, Outgoing
from pipeline.worker.processor import Topics

log = logging.getLogger(__name__)


class KafkaSink:
    """Sends with acks=all; idempotence on where the broker supports it.

    ``idempotence``: ``"on"``, ``"off"``, or ``"auto"`` (try it, fall back to
    plain acks=all when the broker refuses InitProducerId, as the embedded
    broker's memory engine does). Either way repeats after a crash are
    possible and recognisable (see :mod:`pipeline.worker.outbox`).

    ``client`` options go to aiokafka (security: :func:`pipeline.security.aiokafka_options`).
    Each function in ``on_sent`` is called after every acknowledged :meth:`send` with
    the messages and the seconds the broker took (the worker's metrics).
    """

    def __init__(self, bootstrap: str, topics: Topics, idempotence: str = "auto", **client: object) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.idempotence = idempotence
        self.client = client
        self.producer: AIOKafkaProducer | None = None
        self.on_sent: list[Callable[[Sequence[Outgoing], float], None]] = []
        self._by_kind = {SESSION: topics.sessions, DEAD_LETTER: topics.dlq, FORWARD: topics.repartition,
                         UPDATE: topics.updates}

    async def start(self) -> None:
        if self.idempotence in ("on", "auto"):
            producer = self._new(enable_idempotence=True)
            try:
                await asyncio.wait_for(producer.start(), timeout=15)
                self.producer = producer
                log.info("sink: idempotent producer")
                return
            except (TimeoutError, KafkaError, Exception) as exc:
                await producer.stop()
                if self.idempotence == "on":
                    raise
                log.info("sink: broker refused the idempotent producer (%s); using acks=all", exc)
        producer = self._new(enable_idempotence=False)
        await producer.start()
        self.producer = producer

    def _new(self, enable_idempotence: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=enable_idempotence,
            linger_ms=2,
            max_batch_size=1 << 20,
            max_request_size=8 << 20,
            request_timeout_ms=30_000,
            **self.client,
        )

    async def send(self, messages: Sequence[Outgoing]) -> None:
        producer = self.producer
        if producer is None:
            raise RuntimeError("KafkaSink.send before start()")
        started = time.perf_counter()
        futures = []
        for m in messages:
            headers = [(ORIGIN_HEADER, m.origin.encode())] if m.origin else None
            futures.append(
                await producer.send(
                    self._by_kind[m.kind], m.value, key=m.key, partition=m.partition,
                    timestamp_ms=m.timestamp_ms, headers=headers,
                )
            )
        if futures:
            await asyncio.gather(*futures)
            elapsed = time.perf_counter() - started
            for hook in self.on_sent:
                hook(messages, elapsed)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
