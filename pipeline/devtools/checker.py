"""The offline checker: did the pipeline lose or double anything?

It reads back what the pipeline was given and what it produced, and holds the
output against what the pure core (:mod:`pipeline.core`) computes from the same
input log, offline::

    report = check_pipeline(settings)     # the workers' settings: topics, group, Redis
    print(report.table())
    assert report.ok, report.problems

What it asserts (:attr:`CheckReport.problems` lists every breach):

- **Every valid input event is in exactly one closed session or in the
  dead-letter topic, never both, never neither.** Events are counted by ``id``
  (copies of one id are one event: the pipeline de-duplicates them): each id
  of a non-heartbeat event is listed by exactly one session (its latest
  revision) or dead-lettered; heartbeats are not listed by the session record,
  so they are counted (``heartbeat_count``) per session.
- **Every rejected record (or batch element) is in the dead-letter topic with
  the code the core gives it**, and nothing else is.
- **Records that share ``(session_id, revision)`` are identical**, byte for
  byte; so are dead letters that share ``(partition, offset, index)``.
- **The closed sessions equal those the core computes offline**: the input log
  replayed per partition in offset order, record timestamps as arrival times,
  through :class:`~pipeline.core.parse.EventParser` and one
  :class:`~pipeline.core.engine.Sessionizer` per partition, then advanced to the
  end of time. The latest revision of every session is compared field by field.
  One difference is allowed and counted: the *revision number* alone. Live, the
  stream clock also runs on wall time while a partition is caught up, so a
  session can close by inactivity a moment before a late event for it is read;
  that event then reopens it (SPEC rule 2) and it closes again as revision 2
  with exactly the content the replay gives revision 1.
- **Redis holds no open session and every outbox is empty** (after the drain).
- **The consumer group's lag is 0** on the input and repartition topics.

Events that a producer wrote to a partition other than their routing key's are
re-routed by the workers, and their place among the target partition's own
events depends on timing; the replay puts them in arrival-time order there and
counts them (``misrouted``); a load meant for an exact comparison keys every
record by its routing key.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.config import Settings, load_settings
from pipeline.core.engine import Sessionizer
from pipeline.core.event import HEARTBEAT, Event, Rejection
from pipeline.core.parse import EventParser
from pipeline.core.rules import SessionRules
from pipeline.worker.routing import Router

__all__ = [
    "CheckReport",
    "Expected",
    "Live",
    "check_pipeline",
    "compare",
    "consumer_lag",
    "read_topic",
    "redis_leftovers",
    "replay",
]

#: where an event came from: (partition, offset, index in its batch record or None)
Coords = tuple[int, int, int | None]
_END_OF_TIME_MS = 1 << 62


class RawRecord:
    """What the checker needs of a Kafka record (``ConsumerRecord`` has these)."""

    __slots__ = ("key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None,
                 value: bytes | None, timestamp: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.key, self.value, self.timestamp = key, value, timestamp


# -- reading the topics -----------------------------------------------------------------


def _consumer(bootstrap: str) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20, request_timeout_ms=60_000,
    )


def _ends(consumer: Any, tps: list[Any]) -> dict[Any, int]:
    """End offsets as far as both the broker's offset list and its fetch high watermarks
    tell (the embedded broker's ListOffsets answer can lag behind records it serves)."""
    ends = consumer.end_offsets(tps)
    return {tp: max(ends.get(tp) or 0, consumer.highwater(tp) or 0) for tp in tps}


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 180.0) -> list[RawRecord]:
    """Every record of ``topic``, partition by partition in offset order (no consumer
    group), up to the end offsets seen while reading."""
    from kafka import TopicPartition

    consumer = _consumer(bootstrap)
    try:
        deadline = time.monotonic() + timeout_s
        found = consumer.partitions_for_topic(topic)
        while not found:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic!r} not found on {bootstrap}")
            time.sleep(0.2)
            found = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: dict[int, dict[int, RawRecord]] = {tp.partition: {} for tp in tps}
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic!r}: not read to its end within {timeout_s:g} s")
            for tp, batch in consumer.poll(timeout_ms=500, max_records=50_000).items():
                for r in batch:
                    out[tp.partition][r.offset] = RawRecord(topic, r.partition, r.offset, r.key, r.value,
                                                            r.timestamp)
            if all(consumer.highwater(tp) is not None for tp in tps):
                ends = _ends(consumer, tps)
                if all(consumer.position(tp) >= ends[tp] for tp in tps):
                    break
        return [out[p][o] for p in sorted(out) for o in sorted(out[p])]
    finally:
        consumer.close()


def consumer_lag(bootstrap: str, group: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> end offset - the group's committed offset`` (nothing
    committed counts as 0)."""
    from kafka import KafkaAdminClient, TopicPartition

    consumer = _consumer(bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        committed = admin.list_group_offsets({group: tps}).get(group, {})
        done = {}
        for tp in tps:
            meta = committed.get(tp)
            done[tp] = meta.offset if meta is not None and meta.offset is not None and meta.offset >= 0 else 0
        consumer.assign(tps)
        for tp in tps:  # a fetch from there tells the high watermark
            consumer.seek(tp, done[tp])
        deadline = time.monotonic() + 15
        while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
        ends = _ends(consumer, tps)
        return {(tp.topic, tp.partition): ends[tp] - done[tp] for tp in tps}
    finally:
        admin.close()
        consumer.close()


def redis_leftovers(redis_url: str, prefix: str) -> dict[str, int]:
    """What Redis still holds after a drain: open sessions (the open index, and key
    states holding an open session) and outbox messages, summed over partitions."""
    from pipeline.store.codec import head_has_open
    from pipeline.store.connection import redis_client_sync
    from pipeline.store.keys import Keys

    keys = Keys(prefix)
    client = redis_client_sync(load_settings(redis_url=redis_url))
    try:
        open_index = outbox = open_states = 0
        for raw in client.smembers(keys.shards):
            p = int(raw)
            open_index += client.hlen(keys.open(p))
            outbox += client.llen(keys.outbox(p))
            if hasattr(keys, "states"):  # key states in one hash per partition
                for blob in client.hvals(keys.states(p)):
                    open_states += head_has_open(blob)
        return {"open_sessions": open_index, "open_states": open_states, "outbox": outbox}
    finally:
        client.close()


# -- the offline expectation --------------------------------------------------------------


@dataclass
class Expected:
    """What the pure core makes of an input log."""

    records: list[dict[str, Any]] = field(default_factory=list)  # every session record, in order
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # session_id -> latest revision
    dead_letters: dict[Coords, str] = field(default_factory=dict)  # where -> code
    #: id -> where each copy of it came in; id -> type
    occurrences: dict[str, list[Coords]] = field(default_factory=lambda: defaultdict(list))
    types: dict[str, str] = field(default_factory=dict)
    input_records: int = 0
    valid_events: int = 0  # copies included
    events_without_id: int = 0
    misrouted: int = 0
    last_arrival_ms: int = 0
    #: session_id -> the latest arrival time of its events, and its inactivity timeout:
    #: a session closed for inactivity was due at their sum + 1 ms (stream clock)
    session_arrival_ms: dict[str, int] = field(default_factory=dict)
    session_timeout_ms: dict[str, int] = field(default_factory=dict)


def replay(
    records: Iterable[RawRecord],
    *,
    partitions: int,
    rules: SessionRules,
    project_rules: Mapping[str, SessionRules] | None = None,
    wall_ms: int | None = None,
) -> Expected:
    """Run the input log through the pure core as the workers do (see the module doc).

    A record timestamp later than ``wall_ms`` (default: now) + ``max_future_skew`` is
    clamped to that, as a worker clamps it to its wall clock when it reads the record
    (SPEC section 3); a worker read it earlier, so this bound is the looser one."""
    exp = Expected()
    router = Router(partitions)
    own: dict[int, list[Event]] = defaultdict(list)
    foreign: dict[int, list[Event]] = defaultdict(list)
    latest_arrival = (time.time_ns() // 1_000_000 if wall_ms is None else wall_ms) + rules.max_future_skew_ms
    parser = EventParser(rules)
    for record in records:
        exp.input_records += 1
        arrival = min(record.timestamp, latest_arrival)
        exp.last_arrival_ms = max(exp.last_arrival_ms, arrival)
        items = parser.parse(record.value, arrival_ms=arrival, partition=record.partition,
                             offset=record.offset)
        for item in items:
            if isinstance(item, Rejection):
                exp.dead_letters[(record.partition, record.offset, item.index)] = str(item.code)
                continue
            exp.valid_events += 1
            if item.id is None:
                exp.events_without_id += 1
            else:
                exp.occurrences[item.id].append((item.partition, item.offset, item.index))
                exp.types[item.id] = item.type
            target = router.partition_of(item.routing_key)
            if target == record.partition:
                own[target].append(item)
            else:
                exp.misrouted += 1
                foreign[target].append(item)
    for p in sorted(set(own) | set(foreign)):
        engine = Sessionizer(rules, project_rules=project_rules)
        for ev in _merge(own[p], foreign[p]):
            applied = engine.apply(ev)
            exp.records.extend(applied.records)
            state = engine.states.get(ev.key)
            for session in state.sessions() if state is not None else ():
                exp.session_arrival_ms[session.session_id] = session.last_arrival_ms
                exp.session_timeout_ms[session.session_id] = engine.rules_for(
                    session.project).inactivity_timeout_ms
            if applied.rejection is not None:
                rej = applied.rejection
                exp.dead_letters[(rej.partition, rej.offset, rej.index)] = str(rej.code)
        exp.records.extend(engine.advance(_END_OF_TIME_MS))
    for rec in exp.records:
        held = exp.final.get(rec["session_id"])
        if held is None or rec["revision"] >= held["revision"]:
            exp.final[rec["session_id"]] = rec
    return exp


def _merge(own: list[Event], foreign: list[Event]) -> Iterable[Event]:
    """A partition's own events in offset order, re-routed ones slotted in by arrival."""
    if not foreign:
        yield from own
        return
    foreign = sorted(foreign, key=lambda e: e.arrival_ms)
    i = 0
    for ev in own:
        while i < len(foreign) and foreign[i].arrival_ms <= ev.arrival_ms:
            yield foreign[i]
            i += 1
        yield ev
    yield from foreign[i:]


# -- what the pipeline produced -------------------------------------------------------------


@dataclass
class Live:
    """The sessions and dead-letter topics, grouped by their de-duplication keys."""

    sessions: dict[tuple[str, int], list[bytes]] = field(default_factory=lambda: defaultdict(list))
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: dict[Coords, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    session_records: int = 0
    dead_letter_records: int = 0

    @classmethod
    def from_records(cls, sessions: Iterable[RawRecord], dead_letters: Iterable[RawRecord]) -> Live:
        live = cls()
        for r in sessions:
            live.session_records += 1
            rec = orjson.loads(r.value or b"null")
            live.sessions[(rec["session_id"], rec["revision"])].append(r.value or b"")
            held = live.final.get(rec["session_id"])
            if held is None or rec["revision"] > held["revision"]:
                live.final[rec["session_id"]] = rec
        for r in dead_letters:
            live.dead_letter_records += 1
            letter = orjson.loads(r.value or b"null")
            live.dead_letters[(letter["partition"], letter["offset"], letter.get("index"))].append(r.value or b"")
        return live


# -- the verdict ------------------------------------------------------------------------------


@dataclass
class CheckReport:
    """Counts, and every breach found (``ok`` when there is none)."""

    input_records: int = 0
    valid_events: int = 0
    distinct_events: int = 0
    duplicate_copies: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    sessions_expected: int = 0
    sessions_out: int = 0
    session_records: int = 0
    duplicate_session_records: int = 0
    dead_letter_records: int = 0
    duplicate_dead_letters: int = 0
    differing_duplicates: int = 0
    exact_sessions: int = 0
    revision_only: int = 0
    revision_only_ids: list[str] = field(default_factory=list, repr=False)
    mismatched_sessions: int = 0
    missing_sessions: int = 0
    unexpected_sessions: int = 0
    lost: int = 0
    doubled: int = 0
    lost_heartbeats: int = 0
    extra_heartbeats: int = 0
    misrouted: int = 0
    leftovers: dict[str, int] = field(default_factory=dict)
    lag: int | None = None
    problems: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    expected: Expected | None = field(default=None, repr=False)  # what the report was made of
    live: Live | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str, example: Any = None) -> None:
        self.problems.append(text)
        if example is not None and len(self.examples) < 20:
            self.examples.append(f"{text}: {str(example)[:600]}")

    def rows(self) -> list[tuple[str, str]]:
        rejected = ", ".join(f"{code} {n:,}" for code, n in sorted(self.rejected.items()))
        same = "all identical" if not self.differing_duplicates else f"{self.differing_duplicates} DIFFER"
        rows = [
            ("input records", f"{self.input_records:,}"),
            ("events in", f"{self.valid_events:,} valid ({self.distinct_events:,} distinct ids, "
                          f"{self.duplicate_copies:,} duplicate copies); rejected: {rejected or 'none'}"),
            ("sessions out", f"{self.sessions_out:,} (expected {self.sessions_expected:,}; "
                             f"{self.exact_sessions:,} identical to the offline core, "
                             f"{self.revision_only:,} differ in revision number only)"),
            ("session records", f"{self.session_records:,}"),
            ("duplicate records", f"{self.duplicate_session_records:,} sessions + "
                                  f"{self.duplicate_dead_letters:,} dead letters ({same})"),
            ("dead letters", f"{self.dead_letter_records:,} records"),
            ("mismatched sessions", f"{self.mismatched_sessions + self.missing_sessions + self.unexpected_sessions:,}"),
            ("lost", f"{self.lost + self.lost_heartbeats:,}"),
            ("doubled", f"{self.doubled + self.extra_heartbeats:,}"),
            ("redis after drain", ", ".join(f"{k} {v}" for k, v in self.leftovers.items()) or "not checked"),
            ("consumer lag", "not checked" if self.lag is None else f"{self.lag}"),
        ]
        if self.misrouted:
            rows.insert(2, ("misrouted events", f"{self.misrouted:,}"))
        return rows

    def table(self, extra: Iterable[tuple[str, str]] = ()) -> str:
        rows = [*extra, *self.rows()]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
        lines.append(f"{'verdict'.ljust(width)}  " + ("OK" if self.ok else f"{len(self.problems)} PROBLEMS"))
        return "\n".join(lines)


def _without_revision(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != "revision"}


def compare(exp: Expected, live: Live, report: CheckReport | None = None) -> CheckReport:
    """Hold the live output against the offline expectation (see the module doc)."""
    rep = report if report is not None else CheckReport()
    rep.expected, rep.live = exp, live
    rep.input_records = exp.input_records
    rep.valid_events = exp.valid_events
    rep.distinct_events = len(exp.occurrences) + exp.events_without_id
    rep.duplicate_copies = sum(len(c) - 1 for c in exp.occurrences.values())
    rep.misrouted = exp.misrouted
    rep.sessions_expected = len(exp.final)
    rep.sessions_out = len(live.final)
    rep.session_records = live.session_records
    rep.dead_letter_records = live.dead_letter_records

    # repeats are identical
    for (sid, revision), copies in live.sessions.items():
        rep.duplicate_session_records += len(copies) - 1
        if len(set(copies)) > 1:
            rep.differing_duplicates += 1
            rep.problem(f"session {sid} revision {revision}: {len(copies)} records that differ", copies[:2])
    for where, copies in live.dead_letters.items():
        rep.duplicate_dead_letters += len(copies) - 1
        if len(set(copies)) > 1:
            rep.differing_duplicates += 1
            rep.problem(f"dead letter at {where}: {len(copies)} records that differ", copies[:2])

    # closed sessions: the latest revision of each, against the offline core
    for sid, want in exp.final.items():
        got = live.final.get(sid)
        if got is None:
            rep.missing_sessions += 1
            rep.problem(f"session {sid} missing from the sessions topic", want)
        elif got == want:
            rep.exact_sessions += 1
        elif _without_revision(got) == _without_revision(want) and got["revision"] > want["revision"]:
            rep.revision_only += 1
            rep.revision_only_ids.append(sid)
        else:
            rep.mismatched_sessions += 1
            diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
                    if got.get(k) != want.get(k) and k != "events"}
            rep.problem(f"session {sid} differs from the offline core", diff or "events lists differ")
    for sid, got in live.final.items():
        if got.get("status") != "closed":
            rep.problem(f"session {sid} on the sessions topic is not closed", got)
        if sid not in exp.final:
            rep.unexpected_sessions += 1
            rep.problem(f"session {sid} the offline core does not produce", got)

    # dead letters: exactly the rejections of the core
    for where, code in exp.dead_letters.items():
        rep.rejected[code] += 1
        letters = live.dead_letters.get(where)
        if not letters:
            rep.problem(f"rejection at {where} ({code}) missing from the dead-letter topic")
            continue
        got_code = orjson.loads(letters[0]).get("error")
        if got_code != code:
            rep.problem(f"dead letter at {where} has code {got_code}, the core says {code}")
    for where in live.dead_letters:
        if where not in exp.dead_letters:
            rep.problem(f"dead letter at {where} the core does not produce", live.dead_letters[where][0])

    # every valid event: in exactly one closed session or dead-lettered
    listed: dict[str, list[str]] = defaultdict(list)
    heartbeats_out = 0
    for sid, rec in live.final.items():
        heartbeats_out += rec.get("heartbeat_count", 0)
        for ev in rec.get("events", ()):
            if ev.get("id") is not None:
                listed[ev["id"]].append(sid)
    heartbeats_in = 0
    for event_id, places in exp.occurrences.items():
        dead = [w for w in places if w in live.dead_letters]
        if exp.types.get(event_id) == HEARTBEAT:
            if not dead:
                heartbeats_in += 1
            continue
        sessions = listed.get(event_id, [])
        if not sessions and not dead:
            rep.lost += 1
            rep.problem(f"event {event_id} ({places}) is in no session and not dead-lettered")
        elif len(sessions) > 1 or (sessions and dead):
            rep.doubled += 1
            rep.problem(f"event {event_id} is in sessions {sessions} and dead-lettered at {dead}")
    if heartbeats_out < heartbeats_in:
        rep.lost_heartbeats = heartbeats_in - heartbeats_out
        rep.problem(f"{rep.lost_heartbeats} heartbeats counted by no session")
    elif heartbeats_out > heartbeats_in:
        rep.extra_heartbeats = heartbeats_out - heartbeats_in
        rep.problem(f"{rep.extra_heartbeats} heartbeats counted twice")
    return rep


def check_pipeline(
    settings: Settings,
    *,
    check_redis: bool = True,
    check_lag: bool = True,
    timeout_s: float = 180.0,
) -> CheckReport:
    """Read the topics of ``settings`` back, replay the input offline, compare; also
    check what Redis holds and the consumer group's lag."""
    bootstrap = settings.kafka_bootstrap
    events = read_topic(bootstrap, settings.events_topic, timeout_s=timeout_s)
    partitions = 1 + max((r.partition for r in events), default=0)
    probe = _consumer(bootstrap)
    try:
        partitions = max(partitions, len(probe.partitions_for_topic(settings.events_topic) or ()))
    finally:
        probe.close()
    exp = replay(events, partitions=partitions, rules=settings.rules, project_rules=settings.project_rules)
    live = Live.from_records(
        read_topic(bootstrap, settings.sessions_topic, timeout_s=timeout_s),
        read_topic(bootstrap, settings.dlq_topic, timeout_s=timeout_s),
    )
    report = compare(exp, live)
    if check_redis:
        report.leftovers = redis_leftovers(settings.redis_url, settings.redis_key_prefix)
        for name, count in report.leftovers.items():
            if count:
                report.problem(f"Redis still holds {count} {name.replace('_', ' ')} after the drain")
    if check_lag:
        lag = consumer_lag(bootstrap, settings.consumer_group,
                           [settings.events_topic, settings.repartition_topic])
        report.lag = sum(lag.values())
        if report.lag:
            report.problem(f"consumer lag {report.lag}: {sorted((k, v) for k, v in lag.items() if v)}")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.devtools.checker``: check the pipeline that the ``SESSIONIZER_*``
    settings name (topics, consumer group, Redis); prints the table, exits 1 on a breach.
    Run it after the input has drained (sessions idle past the inactivity timeout)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.devtools.checker", description=main.__doc__)
    parser.add_argument("--no-redis", action="store_true", help="do not check what Redis holds")
    parser.add_argument("--no-lag", action="store_true", help="do not check the consumer group's lag")
    args = parser.parse_args(argv)
    report = check_pipeline(load_settings(), check_redis=not args.no_redis, check_lag=not args.no_lag)
    print(report.table())
    for text in report.problems[:50]:
        print(f"problem: {text}")
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
