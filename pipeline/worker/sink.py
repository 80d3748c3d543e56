"""The Kafka side of the outbox: send outgoing messages, wait for acknowledgement."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)

from pipeline.core.fit import DEFAULT_MAX_RECORD_BYTES, cut_bytes, encode_session
from pipeline.worker.outbox import DEAD_LETTER, FORWARD, ORIGIN_HEADER, SESSION, UPDATE, Outgoing
from pipeline.worker.processor import Topics

log = logging.getLogger(__name__)

TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)

#: the most a refused session's stand-in takes (its head fields, no event list): small
#: enough for any topic limit an operator would set
MARKER_BYTES = 1024

#: the broker (or the client, before sending) refuses this one message: sending it again
#: gives the same answer. aiokafka raises AssertionError for a partition the topic lacks.
REFUSED = (
    MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError,
    CorruptRecordException, InvalidTimestampError, UnsupportedForMessageFormatError, AssertionError,
)
#: the largest request the producer sends: the broker's default message.max.bytes (1 MiB + 12)
MAX_REQUEST_BYTES = 1 << 20


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

    def __init__(self, bootstrap: str, topics: Topics, idempotence: str = "auto", *,
                 max_value_bytes: int = 65536, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 **client: object) -> None:
        self.bootstrap = bootstrap
        self.max_value_bytes = max_value_bytes
        self.max_record_bytes = max_record_bytes
        #: messages the broker refused, replaced by a marker and a dead letter
        self.refused = 0
        self.on_refused: list[Callable[[], None]] = []
        self.topics = topics
        self.idempotence = idempotence
        self.client = client
        self.producer: AIOKafkaProducer | None = None
        #: whether ``producer`` is idempotent (its sequence numbers break on a refusal)
        self.idempotent = False
        self.on_sent: list[Callable[[Sequence[Outgoing], float], None]] = []
        self._by_kind = {SESSION: topics.sessions, DEAD_LETTER: topics.dlq, FORWARD: topics.repartition,
                         UPDATE: topics.updates}

    async def start(self) -> None:
        if self.idempotence in ("on", "auto"):
            producer = self._new(enable_idempotence=True)
            try:
                await asyncio.wait_for(producer.start(), timeout=15)
                self.producer, self.idempotent = producer, True
                log.info("sink: idempotent producer")
                return
            except (TimeoutError, KafkaError, Exception) as exc:
                await producer.stop()
                if self.idempotence == "on":
                    raise
                log.info("sink: broker refused the idempotent producer (%s); using acks=all", exc)
        producer = self._new(enable_idempotence=False)
        await producer.start()
        self.producer, self.idempotent = producer, False

    async def _renew(self) -> None:
        """After the broker refused a batch, an idempotent producer's sequence numbers for
        that partition are spent while the broker never stored them: every later batch is
        answered OutOfOrderSequence and retried for ever. A new producer (a new producer
        id, sequences from 0) sends on; the refused messages were never written, so
        nothing is doubled. A plain acks=all producer has no sequences and is kept."""
        if not self.idempotent or self.producer is None:
            return
        old, self.producer = self.producer, None
        await old.stop()
        producer = self._new(enable_idempotence=True)
        await asyncio.wait_for(producer.start(), timeout=15)
        self.producer = producer
        log.info("sink: a new idempotent producer after a refused batch")

    def _new(self, enable_idempotence: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=enable_idempotence,
            linger_ms=2,
            max_batch_size=1 << 20,
            max_request_size=MAX_REQUEST_BYTES,
            request_timeout_ms=30_000,
            **self.client,
        )

    async def send(self, messages: Sequence[Outgoing]) -> None:
        producer = self._producer()
        started = time.perf_counter()
        futures = []
        for m in messages:
            try:
                futures.append((m, await self._send_one(producer, m)))
            except REFUSED as exc:  # refused by the client before sending: no sequence spent
                await self._replace(m, exc)
        if futures:
            results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
            failed = None
            refused = [m for (m, _), result in zip(futures, results, strict=True)
                       if isinstance(result, REFUSED)]
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, REFUSED) and failed is None:
                    failed = result
            if refused:
                await self._renew()
            for m in refused:
                await self._alone_or_replace(m)
            if failed is not None:
                raise failed
            elapsed = time.perf_counter() - started
            for hook in self.on_sent:
                hook(messages, elapsed)

    async def _send_one(self, producer: AIOKafkaProducer, m: Outgoing) -> asyncio.Future[object]:
        headers = [(ORIGIN_HEADER, m.origin.encode())] if m.origin else None
        future: asyncio.Future[object] = await producer.send(
            self._by_kind[m.kind], m.value, key=m.key, partition=m.partition,
            timestamp_ms=m.timestamp_ms, headers=headers,
        )
        return future

    async def _alone_or_replace(self, m: Outgoing) -> None:
        """``m`` was refused with the record batch it went in (the broker refuses a whole
        batch when it is over a topic's limit, small messages with the large one): send it
        again on its own, and replace it only when it is refused alone."""
        try:
            await asyncio.wait_for(await self._send_one(self._producer(), m), 60)
        except REFUSED as exc:
            await self._renew()
            await self._replace(m, exc)

    def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError("KafkaSink.send before start()")
        return self.producer

    async def _replace(self, m: Outgoing, exc: BaseException) -> None:
        """``m`` was refused for good: send a small stand-in (a session's head fields,
        marked truncated) and a dead letter that says why, instead of retrying forever."""
        self.refused += 1
        for hook in self.on_refused:
            hook()
        why = " as too large" if isinstance(exc, TOO_LARGE) else ""
        reason = (f"the broker refused the {self._by_kind[m.kind]} message "
                  f"({len(m.value)} bytes){why}: {exc.__class__.__name__}: {exc}")[:1000]
        log.error("sink: %s; sending a marker and a dead letter instead", reason)
        stand_ins = []
        if m.kind == SESSION:
            try:
                marker = encode_session(orjson.loads(m.value), MARKER_BYTES)
            except (ValueError, TypeError):
                marker = orjson.dumps({"session_id": (m.key or b"").decode("utf-8", "replace"),
                                       "truncated": True})
            stand_ins.append(Outgoing(SESSION, m.key, marker, m.timestamp_ms))
        if m.kind != UPDATE:
            stand_ins.append(self._refusal_letter(m, reason))
        for stand_in in stand_ins:
            try:
                await asyncio.wait_for(await self._send_one(self._producer(), stand_in), 60)
            except REFUSED as refused:  # a topic limit below even the stand-in's size
                await self._renew()
                log.error("sink: the broker refused the stand-in for the %s message too (%s); "
                          "going on without it", self._by_kind[stand_in.kind], refused)

    def _refusal_letter(self, m: Outgoing, reason: str) -> Outgoing:
        """A ``processing_failed`` dead letter for a refused message (SPEC section 6)."""
        partition = offset = index = None
        if m.origin:
            try:
                _, p, o, i = m.origin.rsplit(":", 3)
                partition, offset, index = int(p), int(o), (int(i) if i else None)
            except ValueError:
                pass
        value, cut = cut_bytes(m.value, min(self.max_value_bytes, self.max_record_bytes // 8))
        text = value.decode("utf-8", "replace")
        letter: dict[str, object] = {
            "error": "processing_failed", "detail": reason, "topic": self.topics.events,
            "partition": partition, "offset": offset, "timestamp": m.timestamp_ms,
            "key": None if m.key is None else m.key[: self.max_value_bytes].decode("utf-8", "replace"),
            "value": text if m.kind == FORWARD else None,
            "refused_topic": self._by_kind[m.kind],
        }
        if m.kind == FORWARD and cut:
            letter["value_truncated"] = True
        if index is not None:
            letter["index"] = index
        key = None if m.key is None else m.key[: self.max_value_bytes]
        return Outgoing(DEAD_LETTER, key, orjson.dumps(letter), m.timestamp_ms)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
