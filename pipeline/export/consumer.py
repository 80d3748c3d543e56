"""Read closed sessions from the ``sessions`` topic: typed records, highest revision wins.

::

    from pipeline.export.consumer import SessionConsumer

    with SessionConsumer(group_id="billing") as consumer:
        for batch in consumer.batches():
            for session in batch.sessions:          # SessionRecord, newest revision per session
                bill(session.project, session.session_id, session.duration_ms)
            consumer.commit(batch)                  # after processing: at-least-once

A session is identified by (``project``, ``session_id``); of two records for one
session the higher ``revision`` is the newer (SPEC section 4). A batch holds each
session once, with its highest revision read; records with a revision at or below
one this consumer already delivered are left out (the memory of delivered revisions
is bounded: ``remember`` sessions). A consumer that must survive a restart without
ever applying an older revision keeps the rule in its own store too, as
:mod:`pipeline.export` does ("replace only by a higher revision").

Offsets: :meth:`SessionConsumer.commit` commits a processed batch to the consumer
group. A consumer that stores its offsets itself (in the same transaction as its
results) passes ``resume``: on every assignment that gives it partitions the consumer
asks it for the next offset of each of them and seeks there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError

from pipeline.config import Settings, load_settings
from pipeline.core.timefmt import parse_timestamp_ms
from pipeline.security import UNREACHABLE_ERRORS, broker_unavailable, kafka_python_options

__all__ = ["SessionBatch", "SessionConsumer", "SessionEvent", "SessionRecord", "newest"]

log = logging.getLogger("pipeline.export.consumer")

#: ``resume(topic, partitions) -> {partition: next offset}`` (partitions it has no offset for left out)
Resume = Callable[[str, list[int]], Mapping[int, int]]


def _time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)  # the records' own format, quickly
            if parsed.tzinfo is not None:
                return parsed
        except ValueError:
            pass
    return datetime.fromtimestamp(parse_timestamp_ms(value) / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One entry of a session's ``events`` list."""

    id: str | None
    type: str
    timestamp: datetime
    source: str | None = None
    message: str | None = None
    value: float | None = None
    partition: int | None = None
    offset: int | None = None

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> SessionEvent:
        return cls(
            id=entry.get("id"), type=entry["type"], timestamp=_time(entry["timestamp"]),
            source=entry.get("source"), message=entry.get("message"), value=entry.get("value"),
            partition=entry.get("partition"), offset=entry.get("offset"),
        )


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A closed session record (SPEC section 4), typed. ``record`` is the record as read."""

    project: str
    session_id: str
    revision: int
    user_id: str | None
    user_name: str | None
    status: str
    start: datetime
    end: datetime
    duration_ms: int
    close_reason: str | None
    event_count: int
    heartbeat_count: int
    duplicate_events: int
    has_error: bool
    type_counts: Mapping[str, int]
    data: Mapping[str, Any]
    events_truncated: bool
    truncated: bool
    record: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def events(self) -> tuple[SessionEvent, ...]:
        """The record's event list, typed (parsed on each access: most consumers never read it)."""
        return tuple(SessionEvent.from_dict(e) for e in self.record.get("events") or ())

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the session: (``project``, ``session_id``)."""
        return self.project, self.session_id

    @classmethod
    def from_dict(cls, rec: Mapping[str, Any]) -> SessionRecord:
        return cls(
            project=rec.get("project") or "default", session_id=rec["session_id"],
            revision=int(rec.get("revision", 1)), user_id=rec.get("user_id"),
            user_name=rec.get("user_name"), status=rec.get("status", "closed"),
            start=_time(rec["start"]), end=_time(rec["end"]), duration_ms=int(rec["duration_ms"]),
            close_reason=rec.get("close_reason"), event_count=int(rec.get("event_count", 0)),
            heartbeat_count=int(rec.get("heartbeat_count", 0)),
            duplicate_events=int(rec.get("duplicate_events", 0)),
            has_error=bool(rec.get("has_error", False)), type_counts=rec.get("type_counts") or {},
            data=rec.get("data") or {},
            events_truncated=bool(rec.get("events_truncated", False)),
            truncated=bool(rec.get("truncated", False)), record=rec,
        )

    @classmethod
    def from_json(cls, value: bytes) -> SessionRecord:
        """Parse one ``sessions`` topic value; ValueError/KeyError/TypeError when it is no record."""
        rec = orjson.loads(value)
        if not isinstance(rec, dict):
            raise ValueError("a session record is a JSON object")
        return cls.from_dict(rec)


def newest(records: Iterator[SessionRecord] | list[SessionRecord]) -> list[SessionRecord]:
    """One record per (``project``, ``session_id``): the highest revision (the later one read
    on a tie), in the order each session was first read."""
    best: dict[tuple[str, str], SessionRecord] = {}
    for rec in records:
        held = best.get(rec.key)
        if held is None or rec.revision >= held.revision:
            best[rec.key] = rec
    return list(best.values())


@dataclass(slots=True)
class SessionBatch:
    """What one poll read: the sessions to process and the positions to commit after."""

    topic: str
    sessions: list[SessionRecord]
    #: partition -> next offset to read once this batch is processed
    positions: dict[int, int]
    read: int = 0  # records read, older revisions and unreadable ones included
    unreadable: int = 0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: SessionConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner._on_assigned(list(assigned))


class SessionConsumer:
    """Closed sessions of the ``sessions`` topic, as a member of a consumer group.

    Not thread-safe: one consumer per thread. :meth:`stop` may be called from a signal
    handler or another thread; the current :meth:`batches` loop ends after its poll."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        group_id: str = "sessionizer-consumer",
        from_beginning: bool = False,
        resume: Resume | None = None,
        max_records: int = 2_000,
        remember: int = 200_000,
        client_id: str = "sessionizer-consumer",
        session_timeout_ms: int = 10_000,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.topic = self.settings.sessions_topic
        self.from_beginning = from_beginning
        self.resume = resume
        self.max_records = max_records
        self.remember = remember
        self._delivered: dict[tuple[str, str], int] = {}
        self._stopping = False
        config: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.settings.kafka_bootstrap.split(",") if s.strip()],
            "client_id": client_id,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": max(100, session_timeout_ms // 4),
            "max_poll_records": max_records,
        }
        config.update(kafka_python_options(self.settings))
        try:
            self.consumer = KafkaConsumer(**config)
        except UNREACHABLE_ERRORS:
            raise broker_unavailable(self.settings.kafka_bootstrap) from None
        self.consumer.subscribe([self.topic], listener=_Listener(self))

    # -- assignment ------------------------------------------------------------------
    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.topic)
        # a member may first be given nothing (Apache Kafka: the group formed before the
        # topic's metadata came), then its partitions: ask the store only for some
        stored = dict(self.resume(self.topic, partitions)) if self.resume is not None and partitions else {}
        fresh = []
        for partition in partitions:
            tp = TopicPartition(self.topic, partition)
            if partition in stored:
                self.consumer.seek(tp, stored[partition])
            elif self.resume is not None and self.from_beginning:
                fresh.append(tp)
        if fresh:  # nothing applied yet: from the start, whatever the group committed
            self.consumer.seek_to_beginning(*fresh)
        log.info("assigned partitions %s of %s (resuming %s)", partitions, self.topic, stored)

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self.consumer.assignment())

    # -- reading ---------------------------------------------------------------------
    def poll(self, timeout_ms: int = 500) -> SessionBatch | None:
        """One poll: a batch, or None when nothing came within ``timeout_ms``."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        if not polled:
            return None
        batch = SessionBatch(self.topic, [], {})
        read: list[SessionRecord] = []
        for tp, messages in polled.items():
            for message in messages:
                batch.read += 1
                try:
                    read.append(SessionRecord.from_json(message.value or b""))
                except (ValueError, KeyError, TypeError):
                    batch.unreadable += 1
                    log.warning("unreadable record at %s/%d offset %d: skipped",
                                tp.topic, tp.partition, message.offset)
            if messages:
                batch.positions[tp.partition] = messages[-1].offset + 1
        delivered = self._delivered
        for rec in newest(read):
            if delivered.get(rec.key, 0) < rec.revision:
                batch.sessions.append(rec)
        for rec in batch.sessions:
            delivered.pop(rec.key, None)
            delivered[rec.key] = rec.revision
        if len(delivered) > self.remember:
            for key in list(delivered)[: len(delivered) - self.remember]:
                del delivered[key]
        return batch

    def batches(self, timeout_ms: int = 500) -> Iterator[SessionBatch]:
        """Batches until :meth:`stop`; commit each (:meth:`commit`) after processing it."""
        while not self._stopping:
            batch = self.poll(timeout_ms)
            if batch is not None:
                yield batch

    def __iter__(self) -> Iterator[SessionRecord]:
        """One session at a time; a batch is committed once all of its sessions were taken
        and the next one is asked for (commit after processing)."""
        for batch in self.batches():
            yield from batch.sessions
            self.commit(batch)

    def commit(self, batch: SessionBatch) -> bool:
        """Commit the batch's positions to the consumer group (partitions still assigned).
        False when a rebalance refused it: the batch's records come again to whoever holds
        their partitions now (at least once)."""
        mine = {tp.partition for tp in self.consumer.assignment()}
        offsets = {
            TopicPartition(batch.topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in batch.positions.items() if p in mine
        }
        if offsets:
            try:
                self.consumer.commit(offsets)
            except CommitFailedError as exc:
                log.info("commit refused (the group rebalanced): %s", exc)
                return False
        return True

    def stop(self) -> None:
        """Make :meth:`batches` return after its current poll."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> SessionConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
