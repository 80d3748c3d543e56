"""Session state: what the core keeps per session and per key, and the records it emits.

The domain only: :meth:`Session.to_record` is the SPEC section 4 record; how a store
keeps a session (its head fields, names and layout) is :mod:`pipeline.store.codec`'s.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.event import END, ERROR, HEARTBEAT, START, Event, SessionKey
from pipeline.core.rules import SessionRules
from pipeline.core.timefmt import format_ms

OPEN = "open"
CLOSED = "closed"
ENDED = "ended"
TIMEOUT = "timeout"
MAX_DURATION = "max_duration"

# index of each field in a stored event entry (a list, compact in Redis)
_E_TIME, _E_ID, _E_TYPE, _E_SOURCE, _E_MESSAGE, _E_VALUE, _E_PARTITION, _E_OFFSET, _E_SEQ = range(9)


@dataclass(slots=True)
class Session:
    """One session, open or closed, with everything its record needs."""

    session_id: str
    project: str
    manual: bool
    start_ms: int
    last_activity_ms: int
    last_arrival_ms: int
    user_id: str | None = None
    user_id_ms: int = 0
    user_name: str | None = None
    user_name_ms: int = 0
    has_start: bool = False
    status: str = OPEN
    close_reason: str | None = None
    end_ms: int | None = None
    closed_at_ms: int | None = None
    revision: int = 1
    event_count: int = 0
    heartbeat_count: int = 0
    duplicate_events: int = 0
    type_counts: dict[str, int] = field(default_factory=dict)
    has_error: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    data_ms: dict[str, int] = field(default_factory=dict)
    # entries: [time_ms, id, type, source, message, value, partition, offset, seq]
    events: list[list[Any]] = field(default_factory=list)
    events_truncated: bool = False
    ids: dict[str, None] = field(default_factory=dict)  # event ids held, in insertion order
    seq: int = 0
    # what changed in ``events``/``ids`` since the store last took it (see ``take_log``)
    log: list[Any] = field(default_factory=list, compare=False, repr=False)
    #: opaque to the core: what the store that read or wrote this session keeps about
    #: where it is (the Redis store: its event log's handle and number of chunks)
    stored: Any = field(default=None, compare=False, repr=False)

    # -- the span of SPEC section 3 -----------------------------------------
    def floor_ms(self, rules: SessionRules) -> int:
        return self.start_ms if self.has_start else self.start_ms - rules.inactivity_timeout_ms

    def reach_ms(self, rules: SessionRules) -> int:
        if self.status == OPEN or self.end_ms is None:
            return self.last_activity_ms + rules.inactivity_timeout_ms
        if self.close_reason == TIMEOUT:
            return self.end_ms + rules.inactivity_timeout_ms
        return self.end_ms

    def holds(self, time_ms: int, rules: SessionRules) -> bool:
        return self.floor_ms(rules) <= time_ms <= self.reach_ms(rules)

    def idle_deadline_ms(self, rules: SessionRules) -> int:
        """The stream-clock instant after which this open session closes by timeout."""
        return self.last_arrival_ms + rules.inactivity_timeout_ms

    # -- changes ----------------------------------------------------------------
    @classmethod
    def begin(cls, session_id: str, ev: Event) -> Session:
        return cls(
            session_id=session_id,
            project=ev.project,
            manual=ev.manual,
            start_ms=ev.time_ms,
            last_activity_ms=ev.time_ms,
            last_arrival_ms=ev.arrival_ms,
            user_id=ev.user_id,
            user_id_ms=ev.time_ms,
        )

    def add(self, ev: Event, rules: SessionRules) -> None:
        """Put an event into this session (the caller decided it belongs here)."""
        t = ev.time_ms
        # every data value was taken from an event of this session, so at or before its
        # last activity: an event no earlier than that, whose data names are all known
        # already, changes no data value (the first value of a name wins)
        data_settled = t >= self.last_activity_ms
        if t < self.start_ms:
            self.start_ms = t
        if t > self.last_activity_ms:
            self.last_activity_ms = t
        if ev.arrival_ms > self.last_arrival_ms:
            self.last_arrival_ms = ev.arrival_ms
        kind = ev.type
        if kind == START:
            self.has_start = True
        if ev.id is not None:
            self.ids[ev.id] = None
        self.type_counts[kind] = self.type_counts.get(kind, 0) + 1
        if ev.user_name and (self.user_name is None or t >= self.user_name_ms):
            self.user_name, self.user_name_ms = ev.user_name, t
        if ev.user_id and (self.user_id is None or t < self.user_id_ms):
            self.user_id, self.user_id_ms = ev.user_id, t
        if ev.data and not (data_settled and ev.data.keys() <= self.data_ms.keys()):
            data, data_ms = self.data, self.data_ms
            for name, value in ev.data.items():
                seen = data_ms.get(name)
                if seen is None or t < seen:
                    data[name] = value
                    data_ms[name] = t
                    self.log.append({"n": name, "v": value, "t": t})
        if kind == HEARTBEAT:
            self.heartbeat_count += 1
            if ev.id is not None:
                self.log.append(ev.id)
            return
        self.event_count += 1
        if kind == ERROR:
            self.has_error = True
        if not self._list_event(ev, rules.max_events_per_session) and ev.id is not None:
            self.log.append(ev.id)

    def _list_event(self, ev: Event, cap: int) -> bool:
        self.seq += 1
        entry = [ev.time_ms, ev.id, ev.type, ev.source, ev.message, ev.value,
                 ev.partition, ev.offset, self.seq]
        events = self.events
        if len(events) >= cap:
            self.events_truncated = True
            if not events or (entry[_E_TIME], entry[_E_SEQ]) >= (events[-1][_E_TIME], events[-1][_E_SEQ]):
                return False
            self.log.append(-events.pop()[_E_SEQ])
        self.log.append(entry)
        if not events or events[-1][_E_TIME] <= ev.time_ms:
            events.append(entry)
        else:
            insort(events, entry, key=lambda e: (e[_E_TIME], e[_E_SEQ]))
        return True

    def take_log(self) -> list[Any]:
        """The changes to ``events``, ``ids`` and ``data`` since the last call, oldest
        first: an event entry (list) listed, an id (str) held but not listed, a
        negative number: the entry with that ``seq`` dropped from the list (cap),
        or ``{"n": name, "v": value, "t": ms}``: a data value taken.
        Appending these to what the store holds and :meth:`replay_log` rebuild
        them exactly, so a store need not rewrite them."""
        log, self.log = self.log, []
        return log

    def replay_log(self, items: list[Any]) -> None:
        """Rebuild ``events``, ``ids`` and ``data`` from every item :meth:`take_log` gave."""
        removed = {-item for item in items if isinstance(item, int)}
        ids: dict[str, None] = {}
        events = []
        data: dict[str, Any] = {}
        data_ms: dict[str, int] = {}
        for item in items:
            if isinstance(item, list):
                if item[_E_ID] is not None:
                    ids[item[_E_ID]] = None
                if item[_E_SEQ] not in removed:
                    events.append(item)
            elif isinstance(item, str):
                ids[item] = None
            elif isinstance(item, dict):
                data[item["n"]] = item["v"]
                data_ms[item["n"]] = item["t"]
        self.data, self.data_ms = data, data_ms
        events.sort(key=lambda e: (e[_E_TIME], e[_E_SEQ]))
        self.events, self.ids, self.log = events, ids, []

    def full_log(self) -> list[Any]:
        """Log items that rebuild ``events``, ``ids`` and ``data`` from nothing with
        :meth:`replay_log`, for a store that does not hold this session's log."""
        listed = {e[_E_ID] for e in self.events if e[_E_ID] is not None}
        items: list[Any] = list(self.events)
        items += [i for i in self.ids if i not in listed]
        items += [{"n": n, "v": v, "t": self.data_ms.get(n, 0)} for n, v in self.data.items()]
        return items

    def close(self, reason: str, closed_at_ms: int) -> None:
        self.status = CLOSED
        self.close_reason = reason
        self.end_ms = self.last_activity_ms
        self.closed_at_ms = closed_at_ms

    def reopen(self) -> None:
        self.status = OPEN
        self.close_reason = None
        self.end_ms = None
        self.closed_at_ms = None

    # -- output -----------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """The SPEC section 4 session record."""
        end_ms = self.last_activity_ms if self.end_ms is None else self.end_ms
        record: dict[str, Any] = {
            "session_id": self.session_id,
            "project": self.project,
            "user_id": self.user_id,
            "user_name": self.user_name,
            "status": self.status,
            "start": format_ms(self.start_ms),
            "end": format_ms(end_ms),
            "duration_ms": max(0, end_ms - self.start_ms),
        }
        if self.close_reason is not None:
            record["close_reason"] = self.close_reason
        record.update(
            revision=self.revision,
            event_count=self.event_count,
            heartbeat_count=self.heartbeat_count,
            duplicate_events=self.duplicate_events,
            type_counts=dict(self.type_counts),
            has_error=self.has_error,
            data=dict(self.data),
            events=[
                {
                    "id": e[_E_ID],
                    "type": e[_E_TYPE],
                    "timestamp": format_ms(e[_E_TIME]),
                    "source": e[_E_SOURCE],
                    "message": e[_E_MESSAGE],
                    "value": e[_E_VALUE],
                    "partition": e[_E_PARTITION],
                    "offset": e[_E_OFFSET],
                }
                for e in self.events
            ],
            events_truncated=self.events_truncated,
        )
        return record


@dataclass(slots=True)
class KeyState:
    """Everything the core remembers for one session key: the open session (at
    most one) and the sessions closed less than ``reopen_grace`` ago."""

    key: SessionKey
    open: Session | None = None
    closed: list[Session] = field(default_factory=list)

    def is_empty(self) -> bool:
        return self.open is None and not self.closed

    def sessions(self) -> list[Session]:
        return ([self.open] if self.open is not None else []) + self.closed

    def next_due_ms(self, rules: SessionRules) -> int | None:
        """The earliest stream-clock instant at which this key needs attention:
        its open session's idle close, or a closed session leaving the grace."""
        due: int | None = None
        if self.open is not None:
            due = self.open.idle_deadline_ms(rules) + 1
        for c in self.closed:
            assert c.closed_at_ms is not None
            expiry = c.closed_at_ms + rules.reopen_grace_ms
            if due is None or expiry < due:
                due = expiry
        return due


__all__ = [
    "CLOSED",
    "END",
    "ENDED",
    "MAX_DURATION",
    "OPEN",
    "TIMEOUT",
    "KeyState",
    "Session",
]
