"""A scripted input log for the whole pipeline, and the output worked out by hand.

Every rule of SPEC section 3 and every dead-letter code of SPEC section 6 has a
scenario here. Each scenario uses its own session key, published with that key as the
record key on the partition the key routes to (so its events are read in order), except
the one that tests re-routing.

Times are seconds from ``base`` (two hours before the test, on a whole minute): ``at``
is the arrival time (the Kafka record timestamp), ``t`` the event time. Records are
published sorted by arrival, so while the worker replays the log each partition's stream
clock is the arrival time of the record it reads. The worker runs with
:data:`WORKER_SETTINGS`: inactivity timeout 300 s, max session duration 600 s, reopen
grace 900 s, max future skew 300 s, max event age 3 days, 64 KiB per event, 6 events
listed per session. The last
records of each partition arrive at ``live`` (now): the stream clock jumps there and every
session of the replayed part that is still open closes by timeout (each scenario keeps
arrival gaps inside a session under 300 s, so it closes only where the scenario says).
The records at ``live`` open sessions that stay open (nothing is expected of them).

The expectations are literal: start and end times, close reasons, revisions, counts,
type counts, merged data and the order of the events list, written down from the rules,
not computed by the code under test. Auto session ids are not written down (they are a
hash): the test checks that they are 32 hex characters, the same for every revision of a
session and different between sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.worker.routing import Router

WORKER_SETTINGS: dict[str, Any] = {
    "inactivity_timeout": 300,
    "max_session_duration": 600,
    "reopen_grace": 900,
    "max_future_skew": 300,
    "max_event_age": 259200,
    "max_event_bytes": 65536,
    "max_events_per_session": 6,
}

DAY_MS = 86_400_000
ROUTE = object()  # record key / partition: the event's routing key and its partition


def iso(ms: int, offset_hours: int = 0) -> str:
    """RFC 3339 with milliseconds: ``Z``, or the given UTC offset."""
    if offset_hours == 0:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    from datetime import timedelta, timezone

    moment = datetime.fromtimestamp(ms / 1000, timezone(timedelta(hours=offset_hours)))
    return moment.isoformat(timespec="milliseconds")


@dataclass
class Published:
    """One input record: where it goes, what it carries, where it landed."""

    arrival_ms: int
    key: bytes | None
    partition: int
    value: bytes | None
    labels: list[str | None]  # the events it carries, in order (None: a bad batch element)
    landed_partition: int | None = None
    offset: int | None = None


@dataclass
class SessionExpect:
    """A closed session record, in scenario terms (seconds from ``base``)."""

    tag: str  # records with the same tag are revisions of one session
    user_id: str | None
    start: float
    end: float
    close_reason: str
    event_count: int
    type_counts: dict[str, int]
    events: list[tuple[str, float]]  # (event label, event time) in list order
    session_id: str | None = None  # a manual session's id; None: an auto id
    session_id_re: str | None = None  # the id's pattern when it is derived
    revision: int = 1
    project: str = "default"
    user_name: str | None = None
    heartbeat_count: int = 0
    duplicate_events: int = 0
    has_error: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    events_truncated: bool = False


@dataclass
class DeadLetterExpect:
    error: str
    record: str  # label of the input record
    key: str | None
    value: str | None
    value_encoding: str | None = None
    index: int | None = None
    value_truncated: bool = False  # the value was cut to max_event_bytes (SPEC section 6)


class ScriptedLog:
    def __init__(self, now_ms: int, partitions: int = 4) -> None:
        self.base_ms = (now_ms // 60_000) * 60_000 - 7_200_000
        self.live = (now_ms - self.base_ms) / 1000  # "now", in seconds from base
        self.router = Router(partitions)
        self.partitions = partitions
        self.records: dict[str, Published] = {}
        self.events: dict[str, tuple[str, dict[str, Any]]] = {}  # label -> (record label, event)
        self.sessions: list[SessionExpect] = []
        self.dead_letters: list[DeadLetterExpect] = []
        self._order: list[str] = []

    # -- building the log -----------------------------------------------------------
    def ms(self, seconds: float) -> int:
        return self.base_ms + round(seconds * 1000)

    def stamp(self, seconds: float, offset_hours: int = 0) -> str:
        return iso(self.ms(seconds), offset_hours)

    def ev(self, label: str, type_: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
        """An event labelled *label*; ``id`` defaults to the label (``id=None``: no id);
        ``timestamp`` defaults to ``t`` as RFC 3339 UTC."""
        event: dict[str, Any] = {"type": type_}
        if "timestamp" not in fields:
            assert t is not None
            event["timestamp"] = self.stamp(t)
        event_id = fields.pop("id", label)
        if event_id is not None:
            event["id"] = event_id
        event.update(fields)
        assert label not in self.events, label
        self.events[label] = ("", event)
        return event

    def send(
        self,
        at: float,
        value: dict[str, Any] | list[Any] | bytes | None,
        *,
        label: str | None = None,
        key: Any = ROUTE,
        partition: Any = ROUTE,
    ) -> str:
        """Publish *value* arriving at *at*; returns the record's label."""
        if isinstance(value, dict | list):
            items = value if isinstance(value, list) else [value]
            labels = [self._label_of(item) for item in items]
            raw: bytes | None = orjson.dumps(value)
        else:
            items, labels, raw = [], [], value
        routing = next(
            (item.get("session_id") or item.get("user_id") for item in items
             if isinstance(item, dict) and (item.get("session_id") or item.get("user_id"))),
            None,
        )
        if key is ROUTE:
            key = routing
        if partition is ROUTE:
            partition = self.router.partition_of(routing or (key or ""))
        label = label or next((x for x in labels if x), None) or f"record-{len(self.records)}"
        assert label not in self.records, label
        self.records[label] = Published(
            self.ms(at), None if key is None else str(key).encode(), partition, raw, labels
        )
        for event_label in labels:
            if event_label is not None:
                self.events[event_label] = (label, self.events[event_label][1])
        self._order.append(label)
        return label

    def _label_of(self, item: Any) -> str | None:
        for label, (_, event) in self.events.items():
            if event is item:
                return label
        return None

    def session(self, **expect: Any) -> None:
        self.sessions.append(SessionExpect(**expect))

    def dead_letter(self, **expect: Any) -> None:
        self.dead_letters.append(DeadLetterExpect(**expect))

    def key_on(self, partition: int, stem: str) -> str:
        """A routing key that the router sends to *partition*."""
        n = 0
        while self.router.partition_of(f"{stem}-{n}") != partition:
            n += 1
        return f"{stem}-{n}"

    # -- publishing -----------------------------------------------------------------
    def in_order(self) -> list[tuple[str, Published]]:
        """The records sorted by arrival (stable: equal arrivals keep script order)."""
        ranked = sorted(enumerate(self._order), key=lambda item: (self.records[item[1]].arrival_ms, item[0]))
        return [(label, self.records[label]) for _, label in ranked]

    def landed(self, label: str, partition: int, offset: int) -> None:
        record = self.records[label]
        assert partition == record.partition, (label, partition, record.partition)
        record.landed_partition, record.offset = partition, offset

    # -- expected output ---------------------------------------------------------------
    def expected_session(self, s: SessionExpect) -> dict[str, Any]:
        """The full SPEC section 4 record (``session_id`` None for an auto session)."""
        events = []
        for label, t in s.events:
            record_label, event = self.events[label]
            record = self.records[record_label]
            events.append({
                "id": event.get("id"),
                "type": event["type"],
                "timestamp": self.stamp(t),
                "source": event.get("source"),
                "message": event.get("message"),
                "value": event.get("value"),
                "partition": record.landed_partition,
                "offset": record.offset,
            })
        return {
            "session_id": s.session_id,
            "project": s.project,
            "user_id": s.user_id,
            "user_name": s.user_name,
            "status": "closed",
            "start": self.stamp(s.start),
            "end": self.stamp(s.end),
            "duration_ms": round((s.end - s.start) * 1000),
            "close_reason": s.close_reason,
            "revision": s.revision,
            "event_count": s.event_count,
            "heartbeat_count": s.heartbeat_count,
            "duplicate_events": s.duplicate_events,
            "type_counts": s.type_counts,
            "has_error": s.has_error,
            "data": s.data,
            "events": events,
            "events_truncated": s.events_truncated,
        }

    def expected_dead_letter(self, d: DeadLetterExpect, events_topic: str) -> dict[str, Any]:
        """The SPEC section 6 record, without ``detail`` (checked apart: a sentence)."""
        record = self.records[d.record]
        letter: dict[str, Any] = {
            "error": d.error,
            "topic": events_topic,
            "partition": record.landed_partition,
            "offset": record.offset,
            "timestamp": record.arrival_ms,
            "key": d.key,
            "value": d.value,
        }
        if d.value_encoding is not None:
            letter["value_encoding"] = d.value_encoding
        if d.value_truncated:
            letter["value_truncated"] = True
        if d.index is not None:
            letter["index"] = d.index
        return letter


def build_log(now_ms: int, partitions: int = 4) -> ScriptedLog:
    """The scripted log and its expected output."""
    log = ScriptedLog(now_ms, partitions)
    ev, send, session, dead = log.ev, log.send, log.session, log.dead_letter

    # Rule 1, out of order (no `session` event: the floor is start - 300 s). Data merge:
    # per key the earliest event time wins; unknown top-level fields go to data;
    # user_name is the latest (event time) non-empty one; the list is in event-time order.
    # Timestamps in three forms: Z, +02:00, epoch ms.
    u = "u-ooo"
    send(10, ev("o1", "usage", 10, user_id=u, project="shop", user_name="Ann", source="search",
                value=3, data={"browser": "firefox", "os": "linux"}))
    send(20, ev("o2", "error", timestamp=log.stamp(20, offset_hours=2), user_id=u, project="shop",
                user_name="", source="ValueError", message="boom",
                data={"browser": "chrome", "screen": "1080p"}))
    send(30, ev("o3", "usage", timestamp=log.ms(5), user_id=u, project="shop", user_name="Annie",
                data={"os": "mac", "lang": "de"}, plan="pro"))
    send(40, ev("o4", "log", 35.25, user_id=u, project="shop", message="saved", plan="team"))
    session(tag="ooo", project="shop", user_id=u, user_name="Ann", start=5, end=35.25,
            close_reason="timeout", event_count=4, has_error=True,
            type_counts={"usage": 2, "error": 1, "log": 1},
            data={"browser": "firefox", "os": "mac", "lang": "de", "screen": "1080p", "plan": "pro"},
            events=[("o3", 5), ("o1", 10), ("o2", 20), ("o4", 35.25)])

    # Rule 1, max_session_duration (600 s): the event at 700 would stretch the session to
    # 700 s, so the session closes at its last activity (590) and the event opens another.
    u = "u-long"
    send(0, ev("m1", "session", 0, user_id=u))
    send(200, ev("m2", "usage", 200, user_id=u))
    send(400, ev("m3", "usage", 400, user_id=u))
    send(590, ev("m4", "usage", 590, user_id=u))
    send(700, ev("m5", "usage", 700, user_id=u))
    send(750, ev("m6", "sessionend", 750, user_id=u))
    session(tag="long-1", user_id=u, start=0, end=590, close_reason="max_duration", event_count=4,
            type_counts={"session": 1, "usage": 3},
            events=[("m1", 0), ("m2", 200), ("m3", 400), ("m4", 590)])
    session(tag="long-2", user_id=u, start=700, end=750, close_reason="ended", event_count=2,
            type_counts={"usage": 1, "sessionend": 1}, events=[("m5", 700), ("m6", 750)])

    # Rule 2, amend an ended session: a late event inside it (arrives 60 s after the end)
    # is added, revision 2, emitted at once, still "ended" with the same end. A duplicate of
    # one of its events then changes nothing; an auto `session` event inside its span does
    # not go into it (rule 5 opens a new session).
    u = "u-amend"
    send(0, ev("a1", "session", 0, user_id=u))
    send(30, ev("a2", "usage", 30, user_id=u))
    send(60, ev("a3", "sessionend", 60, user_id=u))
    send(120, ev("a4", "usage", 50, user_id=u, source="late"))
    send(150, ev("a2-again", "usage", 30, id="a2", user_id=u))
    send(180, ev("a5", "session", 40, user_id=u))
    session(tag="amend", user_id=u, start=0, end=60, close_reason="ended", event_count=3,
            type_counts={"session": 1, "usage": 1, "sessionend": 1},
            events=[("a1", 0), ("a2", 30), ("a3", 60)])
    session(tag="amend", revision=2, user_id=u, start=0, end=60, close_reason="ended",
            event_count=4, type_counts={"session": 1, "usage": 2, "sessionend": 1},
            events=[("a1", 0), ("a2", 30), ("a4", 50), ("a3", 60)])
    session(tag="amend-new", user_id=u, start=40, end=40, close_reason="timeout", event_count=1,
            type_counts={"session": 1}, events=[("a5", 40)])

    # Rule 2, reopen: closed by timeout (last arrival 60 + 300 s), a late event (arrival
    # 500, inside the grace, event time inside its span up to 60 + 300) reopens it; a
    # sessionend then ends it: revision 2, "ended", end 230.
    u = "u-reopen"
    send(0, ev("r1", "usage", 0, user_id=u))
    send(60, ev("r2", "usage", 60, user_id=u))
    send(500, ev("r3", "usage", 200, user_id=u))
    send(520, ev("r4", "sessionend", 230, user_id=u))
    session(tag="reopen", user_id=u, start=0, end=60, close_reason="timeout", event_count=2,
            type_counts={"usage": 2}, events=[("r1", 0), ("r2", 60)])
    session(tag="reopen", revision=2, user_id=u, start=0, end=230, close_reason="ended",
            event_count=4, type_counts={"usage": 3, "sessionend": 1},
            events=[("r1", 0), ("r2", 60), ("r3", 200), ("r4", 230)])

    # Rule 2, reopen by a late sessionend: emitted at once as "ended", end = its time.
    u = "u-reopen-end"
    send(0, ev("re1", "usage", 0, user_id=u))
    send(30, ev("re2", "usage", 30, user_id=u))
    send(400, ev("re3", "sessionend", 100, user_id=u))
    session(tag="reopen-end", user_id=u, start=0, end=30, close_reason="timeout", event_count=2,
            type_counts={"usage": 2}, events=[("re1", 0), ("re2", 30)])
    session(tag="reopen-end", revision=2, user_id=u, start=0, end=100, close_reason="ended",
            event_count=3, type_counts={"usage": 2, "sessionend": 1},
            events=[("re1", 0), ("re2", 30), ("re3", 100)])

    # Rule 2, reopen, then idle again: emitted again when it closes, revision 2, "timeout".
    u = "u-reopen-idle"
    send(0, ev("ri1", "usage", 0, user_id=u))
    send(400, ev("ri2", "usage", 200, user_id=u))
    session(tag="reopen-idle", user_id=u, start=0, end=0, close_reason="timeout", event_count=1,
            type_counts={"usage": 1}, events=[("ri1", 0)])
    session(tag="reopen-idle", revision=2, user_id=u, start=0, end=200, close_reason="timeout",
            event_count=2, type_counts={"usage": 2}, events=[("ri1", 0), ("ri2", 200)])

    # Rule 3, a gap in event time (the events arrive 10 s apart, so no idle close): 510 ->
    # 900 is more than 300 s: the session closes (timeout, end 510), the event opens another.
    u = "u-gap"
    send(1000, ev("g1", "usage", 500, user_id=u))
    send(1010, ev("g2", "usage", 510, user_id=u))
    send(1020, ev("g3", "usage", 900, user_id=u))
    session(tag="gap-1", user_id=u, start=500, end=510, close_reason="timeout", event_count=2,
            type_counts={"usage": 2}, events=[("g1", 500), ("g2", 510)])
    # Rule 2 with a session open for the key: 550 is below the open session's floor
    # (900 - 300) and inside the closed one's span (up to 510 + 300): that one is amended
    # and emitted at once, keeping its close reason and its end.
    send(1030, ev("g4", "usage", 550, user_id=u))
    session(tag="gap-1", revision=2, user_id=u, start=500, end=510, close_reason="timeout",
            event_count=3, type_counts={"usage": 3},
            events=[("g1", 500), ("g2", 510), ("g4", 550)])
    session(tag="gap-2", user_id=u, start=900, end=900, close_reason="timeout", event_count=1,
            type_counts={"usage": 1}, events=[("g3", 900)])

    # Rule 4: the open session holds its `session` event, so its floor is its start (100);
    # an event at 90 forms a session of its own, closed at once. The open one goes on.
    u = "u-floor"
    send(0, ev("f1", "session", 100, user_id=u))
    send(10, ev("f2", "usage", 110, user_id=u))
    send(20, ev("f3", "usage", 90, user_id=u))
    send(40, ev("f4", "sessionend", 120, user_id=u))
    session(tag="floor-own", user_id=u, start=90, end=90, close_reason="timeout", event_count=1,
            type_counts={"usage": 1}, events=[("f3", 90)])
    session(tag="floor", user_id=u, start=100, end=120, close_reason="ended", event_count=3,
            type_counts={"session": 1, "usage": 1, "sessionend": 1},
            events=[("f1", 100), ("f2", 110), ("f4", 120)])
    # Rule 2, several closed sessions hold 115 (the own one spans 90 - 300 .. 90 + 300):
    # the latest-starting one is amended (and, "ended", emitted at once).
    send(60, ev("f5", "usage", 115, user_id=u))
    session(tag="floor", revision=2, user_id=u, start=100, end=120, close_reason="ended",
            event_count=4, type_counts={"session": 1, "usage": 2, "sessionend": 1},
            events=[("f1", 100), ("f2", 110), ("f5", 115), ("f4", 120)])

    # Rule 4 without a `session` event: the floor is start - 300 = 100; 50 is below it,
    # 100 is not (the span is inclusive) and joins the open session.
    u = "u-floor-auto"
    send(400, ev("fa1", "usage", 400, user_id=u))
    send(410, ev("fa2", "usage", 50, user_id=u))
    send(420, ev("fa3", "usage", 100, user_id=u))
    session(tag="floor-auto-own", user_id=u, start=50, end=50, close_reason="timeout",
            event_count=1, type_counts={"usage": 1}, events=[("fa2", 50)])
    session(tag="floor-auto", user_id=u, start=100, end=400, close_reason="timeout",
            event_count=2, type_counts={"usage": 2}, events=[("fa3", 100), ("fa1", 400)])

    # Rule 4 with a sessionend: end_without_session; the session goes on.
    u = "u-floor-end"
    send(0, ev("fe1", "session", 100, user_id=u))
    fe2 = send(10, ev("fe2", "sessionend", 50, user_id=u))
    send(20, ev("fe3", "sessionend", 130, user_id=u))
    session(tag="floor-end", user_id=u, start=100, end=130, close_reason="ended", event_count=2,
            type_counts={"session": 1, "sessionend": 1}, events=[("fe1", 100), ("fe3", 130)])
    dead(error="end_without_session", record=fe2, key=u,
         value=orjson.dumps(log.events["fe2"][1]).decode())

    # Rule 5 with a sessionend and nothing open: end_without_session.
    u = "u-orphan-end"
    orphan = send(0, ev("oe1", "sessionend", 0, user_id=u))
    dead(error="end_without_session", record=orphan, key=u,
         value=orjson.dumps(log.events["oe1"][1]).decode())

    # Rule 5, lone heartbeats open a session: counted, not listed, no events.
    u = "u-heartbeat"
    send(0, ev("h1", "heartbeat", 0, user_id=u))
    send(60, ev("h2", "heartbeat", 60, user_id=u))
    session(tag="heartbeat", user_id=u, start=0, end=60, close_reason="timeout", event_count=0,
            heartbeat_count=2, type_counts={"heartbeat": 2}, events=[])

    # A heartbeat with close: true ends the session.
    u = "u-hb-close"
    send(0, ev("hc1", "session", 0, user_id=u))
    send(30, ev("hc2", "usage", 30, user_id=u))
    send(60, ev("hc3", "heartbeat", 60, user_id=u, close=True))
    session(tag="hb-close", user_id=u, start=0, end=60, close_reason="ended", event_count=2,
            heartbeat_count=1, type_counts={"session": 1, "usage": 1, "heartbeat": 1},
            events=[("hc1", 0), ("hc2", 30)])

    # ... and one that opens a session (rule 5) opens and ends it at once.
    u = "u-hb-alone"
    send(0, ev("ha1", "heartbeat", 0, user_id=u, close=True))
    session(tag="hb-alone", user_id=u, start=0, end=0, close_reason="ended", event_count=0,
            heartbeat_count=1, type_counts={"heartbeat": 1}, events=[])

    # Idle close: end is the last activity (100.5), not the moment it was noticed.
    u = "u-idle"
    send(0, ev("i1", "session", 0, user_id=u, user_name="Ida"))
    send(100, ev("i2", "usage", 100.5, user_id=u, id=None, value=1.5))
    session(tag="idle", user_id=u, user_name="Ida", start=0, end=100.5, close_reason="timeout",
            event_count=2, type_counts={"session": 1, "usage": 1},
            events=[("i1", 0), ("i2", 100.5)])

    # Duplicates (a manual session): in the open session they are counted; after it closed,
    # one changes nothing and emits nothing.
    sid = "dup-session-0001"
    send(0, ev("d1", "session", 0, session_id=sid, user_id="u-dup"))
    send(10, ev("d2", "usage", 10, session_id=sid))
    send(20, ev("d2-again", "usage", 10, id="d2", session_id=sid))
    send(30, ev("d2-later", "usage", 30, id="d2", session_id=sid))
    send(40, ev("d3", "sessionend", 40, session_id=sid))
    send(50, ev("d2-closed", "usage", 20, id="d2", session_id=sid))
    session(tag="dup", session_id=sid, user_id="u-dup", start=0, end=40, close_reason="ended",
            event_count=3, duplicate_events=2, type_counts={"session": 1, "usage": 1, "sessionend": 1},
            events=[("d1", 0), ("d2", 10), ("d3", 40)])

    # A manual session beside the same user's auto session: two keys, two sessions.
    sid, u = "manual-A-0001", "u-manual"
    send(0, ev("ma1", "session", 0, session_id=sid, user_id=u, user_name="Mia", data={"app": "web"}))
    send(10, ev("au1", "usage", 10, user_id=u))
    send(20, ev("ma2", "usage", 20, session_id=sid, source="checkout", value=9.5))
    send(30, ev("au2", "404", 30, user_id=u, message="/nowhere"))
    send(40, ev("ma3", "sessionend", 40, session_id=sid))
    session(tag="manual", session_id=sid, user_id=u, user_name="Mia", start=0, end=40,
            close_reason="ended", event_count=3, data={"app": "web"},
            type_counts={"session": 1, "usage": 1, "sessionend": 1},
            events=[("ma1", 0), ("ma2", 20), ("ma3", 40)])
    session(tag="manual-auto", user_id=u, start=10, end=30, close_reason="timeout", event_count=2,
            type_counts={"usage": 1, "404": 1}, events=[("au1", 10), ("au2", 30)])
    # Rule 2: a manual session's `session` event does go into its closed session.
    send(70, ev("ma4", "session", 2, session_id=sid))
    session(tag="manual", revision=2, session_id=sid, user_id=u, user_name="Mia", start=0,
            end=40, close_reason="ended", event_count=4, data={"app": "web"},
            type_counts={"session": 2, "usage": 1, "sessionend": 1},
            events=[("ma1", 0), ("ma4", 2), ("ma2", 20), ("ma3", 40)])

    # Rule 1, max_duration in a manual session: the new session's id is the client's id
    # with a suffix derived from its first event.
    sid, u = "long-manual-01", "u-long-manual"
    send(0, ev("lm1", "session", 0, session_id=sid, user_id=u))
    send(290, ev("lm2", "usage", 290, session_id=sid))
    send(580, ev("lm3", "usage", 580, session_id=sid))
    send(650, ev("lm4", "usage", 650, session_id=sid, user_id=u))
    send(700, ev("lm5", "sessionend", 700, session_id=sid))
    session(tag="long-manual-1", session_id=sid, user_id=u, start=0, end=580,
            close_reason="max_duration", event_count=3, type_counts={"session": 1, "usage": 2},
            events=[("lm1", 0), ("lm2", 290), ("lm3", 580)])
    session(tag="long-manual-2", session_id_re=r"^long-manual-01-[0-9a-f]{8}$", user_id=u,
            start=650, end=700, close_reason="ended", event_count=2,
            type_counts={"usage": 1, "sessionend": 1}, events=[("lm4", 650), ("lm5", 700)])

    # Clock skew: the client's clock is 10 min ahead; sent_at corrects it (without it the
    # events would be clamped to their arrival).
    u = "u-skew"
    send(0, ev("k1", "session", timestamp=log.stamp(599), sent_at=log.stamp(600), user_id=u))
    send(20, ev("k2", "usage", timestamp=log.stamp(619.5), sent_at=log.stamp(620), user_id=u))
    send(40, ev("k3", "sessionend", timestamp=log.stamp(640), sent_at=log.stamp(640), user_id=u))
    session(tag="skew", user_id=u, start=-1, end=40, close_reason="ended", event_count=3,
            type_counts={"session": 1, "usage": 1, "sessionend": 1},
            events=[("k1", -1), ("k2", 19.5), ("k3", 40)])

    # ... 4 days behind, in epoch ms: corrected, not too_old.
    u = "u-skew-old"
    send(0, ev("ko1", "usage", timestamp=log.ms(-2) - 4 * DAY_MS, sent_at=log.ms(0) - 4 * DAY_MS,
               user_id=u))
    session(tag="skew-old", user_id=u, start=-2, end=-2, close_reason="timeout", event_count=1,
            type_counts={"usage": 1}, events=[("ko1", -2)])

    # A timestamp an hour ahead of arrival (more than max_future_skew): clamped to arrival.
    u = "u-future"
    send(0, ev("fu1", "usage", 3600, user_id=u))
    send(10, ev("fu2", "usage", 10, user_id=u))
    send(20, ev("fu3", "sessionend", 20, user_id=u))
    session(tag="future", user_id=u, start=0, end=20, close_reason="ended", event_count=3,
            type_counts={"usage": 2, "sessionend": 1},
            events=[("fu1", 0), ("fu2", 10), ("fu3", 20)])

    # Close by a sessionend earlier than the last activity: end is the later of the two.
    u = "u-end-early"
    send(0, ev("ee1", "session", 0, user_id=u))
    send(10, ev("ee2", "usage", 50, user_id=u))
    send(20, ev("ee3", "sessionend", 30, user_id=u))
    session(tag="end-early", user_id=u, start=0, end=50, close_reason="ended", event_count=3,
            type_counts={"session": 1, "usage": 1, "sessionend": 1},
            events=[("ee1", 0), ("ee3", 30), ("ee2", 50)])

    # The idle deadline follows the latest arrival (250 + 300), not the latest activity
    # (0 + 300): the event arriving at 450 still finds the session open (rule 1).
    u = "u-late-arrival"
    send(0, ev("la1", "usage", 0, user_id=u))
    send(250, ev("la2", "usage", -10, user_id=u))
    send(450, ev("la3", "usage", 290, user_id=u))
    session(tag="late-arrival", user_id=u, start=-10, end=290, close_reason="timeout",
            event_count=3, type_counts={"usage": 3},
            events=[("la2", -10), ("la1", 0), ("la3", 290)])

    # Past the reopen grace (closed at 300, grace 900 s) a late event inside the old span
    # no longer amends it: it opens a new session (rule 5).
    u = "u-grace"
    send(0, ev("gr1", "usage", 0, user_id=u))
    send(1300, ev("gr2", "usage", 100, user_id=u))
    session(tag="grace-1", user_id=u, start=0, end=0, close_reason="timeout", event_count=1,
            type_counts={"usage": 1}, events=[("gr1", 0)])
    session(tag="grace-2", user_id=u, start=100, end=100, close_reason="timeout", event_count=1,
            type_counts={"usage": 1}, events=[("gr2", 100)])

    # The events list holds the first 6 events in event-time order: the 8th event,
    # earlier than most, takes the place of the latest one.
    u = "u-many"
    for n in range(7):
        send(n * 10, ev(f"n{n}", "usage", n * 10, user_id=u))
    send(70, ev("n7", "usage", 5, user_id=u))
    session(tag="many", user_id=u, start=0, end=60, close_reason="timeout", event_count=8,
            type_counts={"usage": 8}, events_truncated=True,
            events=[("n0", 0), ("n7", 5), ("n1", 10), ("n2", 20), ("n3", 30), ("n4", 40)])

    # The same user in another project: another key, another session.
    u = "u-ooo"
    send(15, ev("pb1", "usage", 15, user_id=u, project="blog"))
    session(tag="other-project", project="blog", user_id=u, start=15, end=15,
            close_reason="timeout", event_count=1, type_counts={"usage": 1},
            events=[("pb1", 15)])

    # A batch record with one bad element: that element is dead-lettered alone (with its
    # index), the others go into the session (same partition and offset).
    u = "u-batch"
    bad = {"type": "usage", "timestamp": log.stamp(1)}
    batch = send(0, [ev("b1", "session", 0, user_id=u), bad,
                     ev("b2", "usage", 5, user_id=u, source="cart")], label="batch")
    send(30, ev("b3", "sessionend", 30, user_id=u))
    session(tag="batch", user_id=u, start=0, end=30, close_reason="ended", event_count=3,
            type_counts={"session": 1, "usage": 1, "sessionend": 1},
            events=[("b1", 0), ("b2", 5), ("b3", 30)])
    dead(error="no_identity", record=batch, key=u, value=orjson.dumps(bad).decode(), index=1)

    # A batch record holding two users' events, on the first user's partition: the second
    # user's event is re-routed alone and keeps the batch record's partition and offset.
    # The same id twice in one batch: the second is a duplicate.
    here, away = log.key_on(0, "u-mix-here"), log.key_on(1, "u-mix-away")
    mixed = send(3, [ev("mx1", "usage", 3, user_id=here), ev("mx2", "log", 3, user_id=away),
                     ev("mx1-again", "usage", 3, id="mx1", user_id=here)], label="mixed")
    session(tag="mix-here", user_id=here, start=3, end=3, close_reason="timeout", event_count=1,
            duplicate_events=1, type_counts={"usage": 1}, events=[("mx1", 3)])
    session(tag="mix-away", user_id=away, start=3, end=3, close_reason="timeout", event_count=1,
            type_counts={"log": 1}, events=[("mx2", 3)])
    assert log.records[mixed].partition == 0

    # Rejected records, one per code. Their record keys come back in the dead letter.
    text = b'{"type": "usage", "user_id": "u-x", "timestamp": '
    r = send(5, text, label="truncated", key="junk-1", partition=0)
    dead(error="invalid_json", record=r, key="junk-1", value=text.decode())
    r = send(5, b"\xff\xfe{not json", label="not-utf8", key="junk-2", partition=1)
    dead(error="invalid_json", record=r, key="junk-2", value="//57bm90IGpzb24=", value_encoding="base64")
    r = send(5, None, label="null-value", key="junk-3", partition=2)
    dead(error="invalid_json", record=r, key="junk-3", value=None)
    r = send(6, ev("x1", "", 6, user_id="u-bad-type"), label="empty-type")
    dead(error="invalid_event", record=r, key="u-bad-type", value=orjson.dumps(log.events["x1"][1]).decode())
    r = send(6, ev("x2", "usage", timestamp="yesterday", user_id="u-bad-time"), label="bad-time")
    dead(error="invalid_event", record=r, key="u-bad-time", value=orjson.dumps(log.events["x2"][1]).decode())
    r = send(7, ev("x3", "usage", 7), label="anonymous", key="anonymous", partition=3)
    dead(error="no_identity", record=r, key="anonymous", value=orjson.dumps(log.events["x3"][1]).decode())
    big = ev("x4", "usage", 8, user_id="u-big", data={"blob": "x" * 70_000})
    r = send(8, big, label="too-large")
    # the dead letter's value is cut to max_event_bytes (SPEC section 6: it fits the broker)
    dead(error="too_large", record=r, key="u-big",
         value=orjson.dumps(big)[: WORKER_SETTINGS["max_event_bytes"]].decode(), value_truncated=True)
    old = ev("x5", "usage", timestamp=log.ms(9) - 4 * DAY_MS, user_id="u-old")
    r = send(9, old, label="too-old")
    dead(error="too_old", record=r, key="u-old", value=orjson.dumps(old).decode())

    # Re-routing: a manual session whose records sit on the wrong partition (no key, or
    # another key): the worker forwards them through the repartition topic, in order; the
    # listed events keep the partition and offset they were published at. They arrive just
    # before "now", so the session is open when the clock records come and only ends.
    sid = "routed-session-01"
    wrong = (log.router.partition_of(sid) + 1) % partitions
    live = log.live
    send(live - 30, ev("rt1", "session", live - 30, session_id=sid, user_id="u-routed"),
         key=None, partition=wrong)
    send(live - 20, ev("rt2", "usage", live - 20, session_id=sid), key="not-the-session",
         partition=wrong)
    send(live - 10, ev("rt3", "sessionend", live - 10, session_id=sid), key=None, partition=wrong)
    session(tag="routed", session_id=sid, user_id="u-routed", start=live - 30, end=live - 10,
            close_reason="ended", event_count=3,
            type_counts={"session": 1, "usage": 1, "sessionend": 1},
            events=[("rt1", live - 30), ("rt2", live - 20), ("rt3", live - 10)])

    # The clock: one event per partition arriving now. Their sessions stay open.
    for p in range(partitions):
        u = log.key_on(p, "clock")
        send(live, ev(f"clock-{p}", "usage", live, user_id=u))

    return log
