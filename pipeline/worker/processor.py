"""One input partition's processing: records in, one store commit and one send per batch.

:class:`PartitionProcessor` knows nothing of faust: it is given raw Kafka
records (anything with ``topic, partition, offset, key, value, timestamp,
headers``), a store and a sink, so the integration tests drive it directly.

Per batch::

    parse every record (orjson + compiled schema)        -> events, dead letters
    re-route events whose routing key hashes elsewhere   -> forwards
    load the touched keys' states and the keys falling due (1 read round trip;
        none while the engine holds every key state of the partition: ``warm``)
    run the pure core over the events in record order
    commit states, deadlines, offsets, clock and the outgoing messages
        to the outbox, atomically, fenced by the epoch   (1 write round trip)
    send the outgoing messages, await the broker's acknowledgement
    (the next commit trims them from the outbox)

The stream clock of SPEC section 3: the latest arrival time seen, plus the
wall time elapsed since that record was read, the latter counted only while
the partition is caught up (nothing left to read): live it is wall time, and a
replay of a backlog follows the recorded arrival times exactly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pipeline.core.deadletter import dead_letter_record
from pipeline.core.engine import Emitted, Sessionizer, revision_marks
from pipeline.core.event import Event, RejectCode, Rejection, SessionKey
from pipeline.core.fit import DEFAULT_MAX_RECORD_BYTES, encode_session
from pipeline.core.parse import EventParser
from pipeline.core.rules import SessionRules
from pipeline.core.session import KeyState
from pipeline.exceptions import FencedError
from pipeline.store.base import Claim, Commit, SessionStore
from pipeline.worker.outbox import DEAD_LETTER, FORWARD, ORIGIN_HEADER, SESSION, UPDATE, Outgoing
from pipeline.worker.routing import Router

log = logging.getLogger(__name__)


class Sink(Protocol):
    async def send(self, messages: Sequence[Outgoing]) -> None:
        """Send, in order, and return once the broker acknowledged every one."""
        ...


class RecordLike(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: Sequence[tuple[str, bytes]]


@dataclass
class Topics:
    events: str
    repartition: str
    dlq: str
    sessions: str
    updates: str = "session-updates"


@dataclass
class BatchStats:
    records: int = 0
    events: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0
    closed: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)  # valid events applied, by type
    idle_deadlines_ms: list[int] = field(default_factory=list)  # of the sessions closed idle
    arrivals_clamped: int = 0  # record timestamps past wall clock + max_future_skew


def _origin_of(record: RecordLike) -> tuple[int, int, int | None] | None:
    """Where a repartition-topic record was first read: ``(partition, offset, index)``
    from its origin header; None without one, or with one that does not parse (workers
    write it, but the topic is open to others: such a record counts where it was read)."""
    for name, value in record.headers or ():
        if name == ORIGIN_HEADER:
            try:
                _topic, partition, offset, index = value.decode().rsplit(":", 3)
                return int(partition), int(offset), (None if index == "" else int(index))
            except ValueError:  # UnicodeDecodeError is one
                return None
    return None


class PartitionProcessor:
    """The sessions of one partition (events topic P and repartition topic P)."""

    def __init__(
        self,
        claim: Claim,
        *,
        rules: SessionRules,
        store: SessionStore,
        sink: Sink,
        topics: Topics,
        router: Router,
        due_limit: int = 10_000,
        cache_keys: int = 100_000,
        project_rules: Mapping[str, SessionRules] | None = None,
        updates_interval_s: float | None = None,
        overlap_sends: bool = False,
        wall: Callable[[], float] = time.time,
        on_batch: Callable[[BatchStats], None] | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.partition = claim.partition
        #: a session record or dead letter is at most this long encoded (SPEC sections 4, 6)
        self.max_record_bytes = max_record_bytes
        self.epoch = claim.epoch
        # the store's commit token as this worker left it, and those of commits whose
        # reply was lost (they may have applied): the next commit expects one of them
        self.token = claim.token
        self._unsure: list[str] = []
        self._commits = 0
        self.applied: dict[str, int] = dict(claim.offsets)
        self.clock_ms = claim.clock_ms
        self.rules = rules
        self.parser = EventParser(rules)  # this partition's: remembers its last sent_at
        self.store = store
        self.sink = sink
        self.topics = topics
        self.router = router
        self.due_limit = due_limit
        self.wall = wall
        self.on_batch = on_batch
        self.cache_keys = cache_keys
        self.max_arrival_ms = claim.clock_ms
        # the stream clock goes on from the claim's: its wall time counts from when it was
        # committed (the sessions of a partition that moved close on time), where known
        self.read_at = claim.clock_at_ms / 1000 if claim.clock_at_ms > 0 else wall()
        self.last_read = wall()  # when this processor last read a record (or was made)
        self.sent_unacked = 0  # outbox head entries sent and acknowledged, not yet trimmed
        self.unsent: list[Outgoing] = []
        self._sending: asyncio.Future[None] | None = None
        self.overlap_sends = overlap_sends  # committed to the outbox, not yet acknowledged
        # a commit that raised (a lost reply) may have applied: until the outbox is read
        # again, neither ``unsent`` nor ``sent_unacked`` can be trusted
        self.outbox_unknown = False
        # the key states this worker holds in memory: it alone writes them while it
        # owns the partition (fencing), so they stay equal to Redis; bounded (LRU)
        self.project_rules = dict(project_rules or {})
        # live view (SPEC section 1, session-updates): None = off
        self.updates_interval_s = updates_interval_s
        self._updates_pending: dict[Any, None] = {}
        self._updates_sent: dict[str, float] = {}
        self.engine = Sessionizer(rules, clock_ms=claim.clock_ms, project_rules=self.project_rules)
        self._recent: dict[Any, None] = {}
        # revisions of client-chosen session ids the store has recorded (raise_revisions)
        self._marked: dict[tuple[str, str], int] = {}
        # the engine holds every key state the store has for this partition (``warm``):
        # a key it does not hold has none, and every deadline is in its heap, so a batch
        # needs no load from the store; lost when a key is evicted or the cache reset
        self.complete = False

    def resume_offset(self, topic: str) -> int | None:
        """Where to resume reading ``topic`` (None: nothing applied yet)."""
        applied = self.applied.get(topic)
        return None if applied is None else applied + 1

    async def warm(self) -> int:
        """Load every key state of the partition when they fill at most half of the
        cache (``cache_keys``: room to grow before one is evicted), and from then on
        read nothing from the store per batch (:attr:`complete`). Call it right after
        the claim; returns the number of key states loaded (0 when there were more:
        they load as they are touched, as without it)."""
        states = await self.store.load_all(self.partition, self.cache_keys // 2)
        if states is None:
            return 0
        for state in states:
            self.engine.load(state)
            self._recent[state.key] = None
        self.complete = True
        return len(states)

    async def recover_outbox(self) -> int:
        """Send what a previous owner committed but may not have sent."""
        self.unsent = [Outgoing.decode(blob) for blob in await self.store.outbox(self.partition)]
        self.sent_unacked = 0
        self.outbox_unknown = False
        count = len(self.unsent)
        if count:
            log.info("partition %d: resending %d outbox messages", self.partition, count)
        await self._flush()
        return count

    async def _flush(self) -> None:
        """Send the committed, unacknowledged messages; on failure they stay for the next try."""
        if self._sending is not None:
            task, self._sending = self._sending, None
            await task
        if self.outbox_unknown:
            await self.recover_outbox()
        elif self.unsent:
            await self._send_unsent()

    async def _send_unsent(self) -> None:
        messages = self.unsent
        if messages:
            await self.sink.send(messages)
            self.sent_unacked += len(messages)
            del self.unsent[: len(messages)]

    def hold_clock(self, seconds: float) -> None:
        """Leave ``seconds`` of wall time out of the stream clock: the broker was silent
        that long (down, paused, or this process stopped), so being caught up could not
        be known, and records it held meanwhile come next."""
        self.read_at = min(self.wall(), self.read_at + max(0.0, seconds))

    def stream_clock_ms(self, caught_up: bool) -> int:
        if not caught_up:
            return self.max_arrival_ms
        return self.max_arrival_ms + max(0, int((self.wall() - self.read_at) * 1000))

    # -- records -----------------------------------------------------------------
    async def process(self, records: Iterable[RecordLike]) -> BatchStats:
        stats = BatchStats()
        events: list[Event] = []
        outgoing: list[Outgoing] = []
        offsets: dict[str, int] = {}
        sources: list[RecordLike] = []  # the record each event came in, in step with ``events``
        rules, route, me = self.rules, self.router.partition_of, self.partition
        parse = self.parser.parse
        events_topic = self.topics.events
        applied = self.applied
        # the records of one batch were fetched together: one reading time for them all
        now = self.wall()
        now_ms = int(now * 1000)
        # SPEC section 3: arrival time is never later than the wall clock + max_future_skew,
        # so a producer's clock (or a forged timestamp) cannot close other users' sessions
        latest_arrival = now_ms + rules.max_future_skew_ms
        max_arrival = self.max_arrival_ms
        read_at = self.read_at
        topic = ""
        last = floor = -1
        for record in records:
            offset = record.offset
            if record.topic != topic:
                if last >= 0:
                    offsets[topic] = last
                topic = record.topic
                floor = max(applied.get(topic, -1), offsets.get(topic, -1))
                last = -1
            if offset <= floor:
                continue  # applied already (a replay after a crash or a rebalance)
            floor = last = offset
            stats.records += 1
            arrival = record.timestamp
            if arrival is None or arrival < 0:
                arrival = now_ms
            elif arrival > latest_arrival:
                arrival = latest_arrival
                stats.arrivals_clamped += 1
            if arrival >= max_arrival:
                max_arrival, read_at = arrival, now
            value = record.value
            if topic != events_topic:
                origin = _origin_of(record)
                src_partition, src_offset = (origin[0], origin[1]) if origin else (record.partition, offset)
            else:
                origin, src_partition, src_offset = None, record.partition, offset
            items = parse(value, arrival_ms=arrival, partition=src_partition, offset=src_offset)
            for item in items:
                if type(item) is Rejection:
                    outgoing.append(self._dead_letter(item, record, arrival))
                    stats.rejected[item.code] = stats.rejected.get(item.code, 0) + 1
                    continue
                assert isinstance(item, Event)
                if origin is not None:
                    item.index = origin[2]
                elif topic == events_topic and route(item.routing_key) != me:
                    outgoing.append(self._forward(item, record, arrival))
                    stats.forwarded += 1
                    continue
                events.append(item)
                sources.append(record)
        if last >= 0:
            offsets[topic] = last
        self.max_arrival_ms, self.read_at = max_arrival, read_at
        if not offsets:
            return stats
        self.last_read = now
        stats.events = len(events)
        stats.types = dict(Counter(ev.type for ev in events))
        await self._run(events, self.max_arrival_ms, offsets, outgoing, stats, sources)
        return stats

    async def reject(self, record: RecordLike, detail: str) -> BatchStats:
        """Dead-letter ``record`` as ``processing_failed`` (SPEC section 6) and move the
        partition past it, committed like a batch: the record made processing fail
        every time it was tried, and would stop its partition otherwise."""
        stats = BatchStats(records=1, rejected={RejectCode.PROCESSING_FAILED.value: 1})
        floor = self.applied.get(record.topic, -1)
        if record.offset <= floor:
            return BatchStats()
        now_ms = int(self.wall() * 1000)
        arrival = record.timestamp if record.timestamp is not None and record.timestamp >= 0 else now_ms
        arrival = min(arrival, now_ms + self.rules.max_future_skew_ms)
        rej = Rejection(RejectCode.PROCESSING_FAILED, detail, record.partition, record.offset,
                        None, record.value)
        outgoing = [self._dead_letter(rej, record, arrival)]
        await self._run([], self.max_arrival_ms, {record.topic: record.offset}, outgoing, stats, [])
        return stats

    async def tick(self, caught_up: bool) -> BatchStats | None:
        """Close what fell due by the stream clock, with no new input."""
        started = self.wall()
        await self._flush()
        if self.wall() - started > 1.0:
            # waited that long for the broker to acknowledge: ``caught_up`` was decided
            # before, and may be stale (the broker could have been away meanwhile)
            caught_up = False
        await self.publish_updates()
        clock = self.stream_clock_ms(caught_up)
        if clock <= self.clock_ms and not self.sent_unacked:
            return None
        engine_due = self.engine.next_due_ms()
        nothing_held_due = engine_due is None or engine_due > clock
        # nothing due among the keys held in memory; ask Redis about the others
        if (nothing_held_due and not self.sent_unacked
                and (self.complete or not await self.store.has_due(self.partition, clock))):
            self.clock_ms = max(self.clock_ms, clock)  # recorded with the next commit
            self.engine.clock_ms = self.clock_ms
            return None
        stats = BatchStats()
        await self._run([], clock, {}, [], stats, [])
        return stats

    async def publish_updates(self) -> int:
        """Publish the current record of open sessions that changed, at most one per
        session per ``updates_interval_s``; best effort (a live view, not the sink)."""
        if self.updates_interval_s is None or not self._updates_pending:
            return 0
        now, interval, sent = self.wall(), self.updates_interval_s, self._updates_sent
        held = self.engine.states
        messages: list[Outgoing] = []
        for key in list(self._updates_pending):
            state = held.get(key)
            if state is None or state.open is None:
                del self._updates_pending[key]
                continue
            session = state.open
            if now - sent.get(session.session_id, 0.0) < interval:
                continue
            del self._updates_pending[key]
            sent[session.session_id] = now
            messages.append(Outgoing(
                UPDATE, session.session_id.encode(),
                encode_session(session.to_record(), self.max_record_bytes), self.clock_ms,
            ))
        if len(sent) > 4 * max(1, len(held)):
            for sid in [sid for sid, at in sent.items() if now - at >= interval]:
                del sent[sid]
        if messages:
            try:
                await self.sink.send(messages)
            except Exception as exc:  # a live view: never hold up the sessions for it
                log.warning("partition %d: session updates not sent (%s)", self.partition, exc)
        return len(messages)

    async def _run(
        self,
        events: list[Event],
        clock_ms: int,
        offsets: dict[str, int],
        outgoing: list[Outgoing],
        stats: BatchStats,
        sources: list[RecordLike],
    ) -> None:
        try:
            await self._apply(events, clock_ms, offsets, outgoing, stats, sources)
        except BaseException:
            # the batch did not commit: what the engine holds may be ahead of Redis
            self._reset_cache()
            raise
        self.unsent.extend(outgoing)
        if self.overlap_sends:
            # send while the next batch is parsed and applied; the next commit waits for it
            self._sending = asyncio.ensure_future(self._send_unsent()) if self.unsent else None
        else:
            await self._flush()
        await self.publish_updates()
        if self.on_batch is not None:
            self.on_batch(stats)

    def _reset_cache(self) -> None:
        self.engine = Sessionizer(self.rules, clock_ms=self.clock_ms, project_rules=self.project_rules)
        self._recent.clear()
        self.complete = False

    async def _apply(
        self,
        events: list[Event],
        clock_ms: int,
        offsets: dict[str, int],
        outgoing: list[Outgoing],
        stats: BatchStats,
        sources: list[RecordLike],
    ) -> None:
        engine = self.engine
        held = engine.states
        events_topic = self.topics.events
        keys = [ev.key for ev in events]
        #: keys Redis listed as due: its deadline may be early (the store rewrites a
        #: deadline that moved later only now and then), so each gets the engine's own
        due_listed: list[SessionKey] = []
        if not self.complete:
            missing = {key for key in keys if key not in held}
            for state in await self.store.load(self.partition, missing, clock_ms, self.due_limit):
                if state.key not in missing:
                    due_listed.append(state.key)
                if state.key not in held:
                    engine.load(state)
        # client-chosen session ids that may begin a session here: the revisions they had
        # elsewhere (another partition, or a session of this one forgotten past the grace)
        fresh = {(key[2], key[0]) for key in keys
                 if key[1] == "s" and (key not in held or held[key].open is None)}
        if fresh:
            engine.revision_floors.update(await self.store.revisions(fresh))
        sessions_out: list[Outgoing] = []
        #: the closed sessions' history entries: (session id, project, end ms, record)
        history: list[tuple[str, str, int, bytes]] = []
        records: list[Emitted] = []
        apply_to = engine.apply_to
        for ev, source, key in zip(events, sources, keys, strict=True):
            rej = apply_to(ev, records, key)
            if records:
                for rec in records:
                    sessions_out.append(self._session(rec, engine.clock_ms, stats, history))
                records.clear()
            if rej is not None:
                # the event as it came: a batch record's element, else the whole value (a
                # forwarded element is a record of its own, ``index`` naming its origin's)
                value = source.value
                rej.raw = (_element(value, ev.index)
                           if ev.index is not None and source.topic == events_topic else value)
                stats.rejected[rej.code] = stats.rejected.get(rej.code, 0) + 1
                outgoing.append(self._dead_letter_raw(rej, source.key, ev.arrival_ms))
        engine.advance_to(clock_ms, records)
        for rec in records:
            sessions_out.append(self._session(rec, engine.clock_ms, stats, history))
        outgoing.extend(sessions_out)
        changes = engine.take_changes()
        marks = self._revision_marks(changes, engine.forgotten_revisions)
        engine.revision_floors.clear()
        engine.forgotten_revisions.clear()
        if marks:  # before the commit that emits or holds them
            await self.store.raise_revisions(marks, int(self.wall() * 1000))
        await self._flush()  # the commit trims what the broker acknowledged so far
        due_ms = engine.deadlines(changes)
        for key in due_listed:
            if key not in changes:
                due_ms[key] = engine.due_ms(key)
        commit = Commit(
            states=changes,
            due_ms=due_ms,
            offsets=offsets,
            clock_ms=engine.clock_ms,
            outgoing=[message.encode() for message in outgoing],
            acked=self.sent_unacked,
            history=history,
            dropped=engine.take_dropped(),
            token=f"{self.epoch}.{self._commits}",
            expect=(self.token, *self._unsure),
            at_ms=int(self.wall() * 1000),
        )
        self._commits += 1
        self.outbox_unknown = True
        try:
            applied_ok = await self.store.commit(self.partition, self.epoch, commit)
        except FencedError:  # another owner, or the store lost writes (StaleStateError)
            self.outbox_unknown = False  # refused: nothing was written
            raise
        except BaseException:
            assert commit.token is not None
            self._unsure.append(commit.token)
            raise
        self.outbox_unknown = False
        assert commit.token is not None
        self.token, self._unsure = commit.token, []
        if not applied_ok:  # nothing written, nothing trimmed
            log.warning("partition %d: batch at %s was applied already; skipped", self.partition, offsets)
            outgoing.clear()
            self._reset_cache()
            return
        self.sent_unacked = 0
        self.applied.update(offsets)
        if marks:
            if len(self._marked) > self.cache_keys:
                self._marked.clear()
            self._marked.update(marks)
        self.clock_ms = engine.clock_ms
        stats.counters = dict(engine.counters)
        engine.counters.clear()
        if self.updates_interval_s is not None:
            for changed_key, changed in changes.items():
                if changed is not None and changed.open is not None:
                    self._updates_pending[changed_key] = None
        self._evict(changes)

    def _revision_marks(
        self, changes: Mapping[Any, KeyState | None], forgotten: Mapping[tuple[str, str], int]
    ) -> dict[tuple[str, str], int]:
        """The revisions of client-chosen session ids this batch gave out and the store has
        not recorded yet: sessions begun or amended, also those forgotten (past the grace)
        before the batch ended, which no key state holds any more."""
        marked = self._marked
        return {
            ref: revision
            for ref, revision in revision_marks(changes, forgotten).items()
            if revision > marked.get(ref, 0)
        }

    def _evict(self, touched: Iterable[Any]) -> None:
        """Keep at most ``cache_keys`` key states in memory, least recently used out."""
        recent = self._recent
        for key in touched:
            recent.pop(key, None)
            recent[key] = None
        excess = len(self.engine.states) - self.cache_keys
        if excess > 0:
            self.complete = False  # the store holds states the engine no longer does
            for key in list(recent)[:excess]:
                del recent[key]
                self.engine.forget(key)
            if len(self.engine.states) > self.cache_keys:  # keys loaded as due, never touched
                for key in list(self.engine.states)[: len(self.engine.states) - self.cache_keys]:
                    self.engine.forget(key)

    # -- outgoing messages ------------------------------------------------------------
    def _session(self, emitted: Emitted, clock_ms: int, stats: BatchStats,
                 history: list[tuple[str, str, int, bytes]]) -> Outgoing:
        reason = emitted.close_reason or "open"
        stats.closed[reason] = stats.closed.get(reason, 0) + 1
        if emitted.idle_deadline_ms is not None:
            stats.idle_deadlines_ms.append(emitted.idle_deadline_ms)
        value = encode_session(emitted.record, self.max_record_bytes)
        history.append((emitted.session_id, emitted.project, emitted.end_ms, value))
        return Outgoing(SESSION, emitted.session_id.encode(), value, clock_ms)

    def _dead_letter(self, rej: Rejection, record: RecordLike, arrival: int) -> Outgoing:
        rej.partition, rej.offset = record.partition, record.offset
        origin = _origin_of(record) if record.topic != self.topics.events else None
        if origin is not None:
            rej.partition, rej.offset, rej.index = origin
        return self._dead_letter_raw(rej, record.key, arrival)

    def _dead_letter_raw(self, rej: Rejection, key: bytes | None, arrival: int) -> Outgoing:
        """The dead letter of ``rej``: its value (and key) cut to ``max_event_bytes``, and
        further while the encoded letter is over ``max_record_bytes`` (JSON writes a
        control byte as six)."""
        limit = self.rules.max_event_bytes
        while True:
            letter = dead_letter_record(rej, topic=self.topics.events, timestamp_ms=arrival,
                                        key=key, max_value_bytes=limit)
            value = orjson.dumps(letter)
            if len(value) <= self.max_record_bytes or limit <= 64:
                break
            limit = max(64, limit * self.max_record_bytes // len(value) - 1024)
        if key is not None and len(key) > self.rules.max_event_bytes:
            key = key[: self.rules.max_event_bytes]  # the letter's text holds what it was
        return Outgoing(DEAD_LETTER, key, value, arrival)

    def _forward(self, ev: Event, record: RecordLike, arrival: int) -> Outgoing:
        value = record.value if ev.index is None else _element(record.value, ev.index)
        origin = f"{record.topic}:{record.partition}:{record.offset}:{'' if ev.index is None else ev.index}"
        return Outgoing(
            FORWARD, ev.routing_key.encode(), value or b"", arrival,
            partition=self.router.partition_of(ev.routing_key), origin=origin,
        )


def _element(value: bytes | None, index: int) -> bytes:
    return orjson.dumps(orjson.loads(value or b"[]")[index])
