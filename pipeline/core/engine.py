"""The sessionizer: SPEC section 3 as a plain object.

One :class:`Sessionizer` serves one input partition: it holds the stream clock
and the key states it was given (all of them in tests and offline replays; in
the worker, those the current batch touches or that fall due during it).

    engine.advance(clock_ms)  -> closed-session records due by that clock
    engine.apply(event)       -> Applied(records, rejection)
    engine.apply_to(event, out) -> rejection or None (Emitted appended; the worker's)
    engine.advance_to(clock_ms, out) -> the same for the clock (Emitted appended)
    engine.take_changes()     -> keys whose state changed since the last call

Records are SPEC section 4 dicts, ready to serialize. The worker's calls hand out
:class:`Emitted`: the record with what the worker needs of it (its end in ms, the
idle deadline an inactivity close was dated by), so no session rule is worked out
again outside this module. Nothing here reads a clock, a socket or a random number:
the same calls give the same results.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from pipeline.core.event import END, START, Event, RejectCode, Rejection, SessionKey
from pipeline.core.rules import SessionRules
from pipeline.core.session import ENDED, MAX_DURATION, TIMEOUT, KeyState, Session

Record = dict[str, Any]


@dataclass(slots=True, frozen=True)
class Emitted:
    """A session record the engine gives out, and what the worker needs of it."""

    #: the SPEC section 4 record (serialized once, by the worker)
    record: Record
    session_id: str
    project: str
    #: the session's end (its last activity while open), epoch ms: the record's ``end``
    end_ms: int
    #: the record's ``close_reason`` (None: an update of an open session)
    close_reason: str | None
    #: for a session this call closed for inactivity: the stream-clock deadline it passed
    #: (last arrival + inactivity timeout; the close is dated a millisecond after it)
    idle_deadline_ms: int | None = None


def _emitted(session: Session, idle_deadline_ms: int | None = None) -> Emitted:
    return Emitted(
        session.to_record(), session.session_id, session.project,
        session.last_activity_ms if session.end_ms is None else session.end_ms,
        session.close_reason, idle_deadline_ms,
    )


@dataclass(slots=True)
class Applied:
    """What applying one event produced."""

    records: list[Record] = field(default_factory=list)
    rejection: Rejection | None = None


def auto_session_id(key: SessionKey, ev: Event) -> str:
    """A session id derived from the key and the session's first event (32 hex chars)."""
    project, kind, ident = key
    text = f"{project}\x1f{kind}\x1f{ident}\x1f{ev.time_ms}\x1f{ev.type}\x1f{ev.id or ''}"
    return blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def revision_marks(
    states: Mapping[SessionKey, KeyState | None], forgotten: Mapping[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    """The highest revision given to each client-chosen session id, by
    ``(session_id, project)``: of the sessions the client-id keys' states hold, and of
    the ones forgotten meanwhile (:attr:`Sessionizer.forgotten_revisions`). What the
    store must record before a commit so that a later session with the id, rebuilt from
    the store on any partition, goes on above them (SPEC 4: revisions never go back)."""
    marks = dict(forgotten)
    for key, state in states.items():
        if key[1] != "s" or state is None:
            continue
        for session in state.sessions():
            ref = (session.session_id, session.project)
            if session.revision > marks.get(ref, 0):
                marks[ref] = session.revision
    return marks


class Sessionizer:
    """Sessions of one partition. See the module docstring."""

    def __init__(
        self,
        rules: SessionRules,
        clock_ms: int = 0,
        project_rules: Mapping[str, SessionRules] | None = None,
    ) -> None:
        self.rules = rules
        self.project_rules: Mapping[str, SessionRules] = project_rules or {}
        self.clock_ms = clock_ms
        self.states: dict[SessionKey, KeyState] = {}
        self.counters: Counter[str] = Counter()
        self._heap: list[tuple[int, SessionKey]] = []
        self._due: dict[SessionKey, int] = {}
        self._changed: set[SessionKey] = set()
        self._dropped: list[tuple[SessionKey, Session]] = []
        #: (session_id, project) -> the highest revision already given to that client-chosen
        #: id by sessions this engine does not hold (another partition's, or ones it forgot):
        #: a new session with the id starts above it. The caller adds what its store knows;
        #: the engine adds the sessions it forgets (past the grace).
        self.revision_floors: dict[tuple[str, str], int] = {}
        #: the highest revision of each client-chosen id among the sessions forgotten
        #: since the caller last cleared it: gone from every key state, so a store that
        #: rebuilds the engine must record them (:func:`revision_marks`)
        self.forgotten_revisions: dict[tuple[str, str], int] = {}

    def rules_for(self, project: str) -> SessionRules:
        """The rules of a project: its overrides, else the defaults."""
        return self.project_rules.get(project, self.rules)

    # -- state in and out --------------------------------------------------------
    def load(self, state: KeyState) -> None:
        """Hand the engine a key's stored state (replacing what it held)."""
        self.states[state.key] = state
        self._schedule(state)

    def forget(self, key: SessionKey) -> None:
        """Drop a key from memory (its state is safe in the store)."""
        self.states.pop(key, None)
        self._due.pop(key, None)
        self._compact()

    def _compact(self) -> None:
        """Rebuild the deadline heap from the live deadlines once superseded entries
        (a key's earlier deadlines, forgotten keys') outnumber them: the heap stays
        in proportion to the keys held, however many events and keys went through."""
        heap, due = self._heap, self._due
        if len(heap) > 2 * len(due) + 1024:
            heap[:] = [(at, key) for key, at in due.items()]  # in place: advance() holds it
            heapq.heapify(heap)

    def take_changes(self) -> dict[SessionKey, KeyState | None]:
        """Keys changed since the last call: their state, or None once nothing is left."""
        changes: dict[SessionKey, KeyState | None] = {}
        for key in self._changed:
            changes[key] = self.states.get(key)
        self._changed.clear()
        return changes

    def take_dropped(self) -> list[tuple[SessionKey, Session]]:
        """Sessions forgotten (past the reopen grace) since the last call, with their key."""
        dropped, self._dropped = self._dropped, []
        return dropped

    def due_ms(self, key: SessionKey) -> int | None:
        return self._due.get(key)

    def deadlines(self, keys: Iterable[SessionKey]) -> dict[SessionKey, int | None]:
        """:meth:`due_ms` of each key."""
        due = self._due
        return {key: due.get(key) for key in keys}

    def next_due_ms(self) -> int | None:
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- the clock -----------------------------------------------------------------
    def advance(self, clock_ms: int) -> list[Record]:
        """Move the stream clock forward (never back); close what falls due."""
        out: list[Emitted] = []
        self.advance_to(clock_ms, out)
        return [e.record for e in out]

    def advance_to(self, clock_ms: int, out: list[Emitted]) -> None:
        """:meth:`advance`, what it closes appended to ``out``: the worker's call."""
        if clock_ms > self.clock_ms:
            self.clock_ms = clock_ms
        self._close_due(out)

    def _close_due(self, records: list[Emitted]) -> None:
        """Attend to every key due by the stream clock, in deadline order."""
        heap, due_of = self._heap, self._due
        while heap and heap[0][0] <= self.clock_ms:
            due, key = heapq.heappop(heap)
            if due_of.get(key) != due:
                continue  # superseded
            state = self.states[key]
            self._on_due(state, due, records)

    def _on_due(self, state: KeyState, due: int, records: list[Emitted]) -> None:
        rules, clock = self.rules_for(state.key[0]), self.clock_ms
        opened = state.open
        if opened is not None and clock > opened.idle_deadline_ms(rules):
            # end = last activity, not the moment it was noticed; the close is
            # dated at its deadline so a replay expires the grace identically
            state.open = None
            deadline = opened.idle_deadline_ms(rules)
            opened.close(TIMEOUT, deadline + 1)
            state.closed.append(opened)
            records.append(_emitted(opened, deadline))
            self.counters["closed_timeout"] += 1
        self._expire_closed(state)
        self._touch(state)

    def _expire_closed(self, state: KeyState) -> None:
        grace, clock = self.rules_for(state.key[0]).reopen_grace_ms, self.clock_ms
        if state.closed:
            kept = []
            for c in state.closed:
                if c.closed_at_ms is not None and clock - c.closed_at_ms < grace:
                    kept.append(c)
                else:
                    self._dropped.append((state.key, c))
                    if c.manual:
                        ref = (c.session_id, c.project)
                        if self.revision_floors.get(ref, 0) < c.revision:
                            self.revision_floors[ref] = c.revision
                        if self.forgotten_revisions.get(ref, 0) < c.revision:
                            self.forgotten_revisions[ref] = c.revision
            state.closed = kept

    # -- events --------------------------------------------------------------------
    def apply(self, ev: Event) -> Applied:
        """Place one event (SPEC section 3, rules 1-5), after advancing to its arrival."""
        emitted: list[Emitted] = []
        rejection = self.apply_to(ev, emitted)
        return Applied([e.record for e in emitted], rejection)

    def apply_to(
        self, ev: Event, records: list[Emitted], key: SessionKey | None = None
    ) -> Rejection | None:
        """:meth:`apply`, what it emits appended to ``records`` and the rejection (or
        None) returned: the worker's call, one object fewer per event. ``key`` is
        ``ev.key`` when the caller has it already."""
        if ev.arrival_ms > self.clock_ms:
            self.clock_ms = ev.arrival_ms
        heap = self._heap
        if heap and heap[0][0] <= self.clock_ms:
            self._close_due(records)
        if ev.clamped:  # SPEC 3: an event time too far ahead is clamped and counted
            self.counters["clamped_events"] += 1
        if key is None:
            key = ev.key
        state = self.states.get(key)
        if state is None:
            state = KeyState(key)
            self.states[key] = state
        elif state.closed:
            self._expire_closed(state)
        rejection = self._place(state, ev, records)
        self._touch(state)
        return rejection

    def _place(self, state: KeyState, ev: Event, records: list[Emitted]) -> Rejection | None:
        rules, t = self.rules_for(ev.project), ev.time_ms
        opened = state.open

        if ev.id is not None:
            if opened is not None and ev.id in opened.ids:
                opened.duplicate_events += 1
                self.counters["duplicate_events"] += 1
                return None
            if state.closed and any(ev.id in c.ids for c in state.closed):
                self.counters["duplicate_events_closed"] += 1
                return None

        # rule 1: inside the open session's span (Session.holds, written out: this is
        # most events' path, and the open session's reach is its last activity + timeout)
        if opened is not None:
            timeout = rules.inactivity_timeout_ms
            start, last = opened.start_ms, opened.last_activity_ms
            if (start if opened.has_start else start - timeout) <= t <= last + timeout:
                if t < start:
                    start = t
                elif t > last:
                    last = t
                if last - start > rules.max_session_duration_ms:
                    self._close(state, opened, MAX_DURATION, records)
                    return self._open(state, ev, rules, records)
                opened.add(ev, rules)
                if ev.ends_session:
                    self._close(state, opened, ENDED, records)
                return None

        # rule 2: into a recently closed session whose span holds the event
        if state.closed and (ev.session_id is not None or ev.type != START):
            holding = [c for c in state.closed if c.holds(t, rules)]
            if holding:
                amended = max(holding, key=lambda c: c.start_ms)
                amended.add(ev, rules)
                amended.revision += 1
                self.counters["amended"] += 1
                if amended.close_reason == TIMEOUT and state.open is None:
                    state.closed.remove(amended)
                    amended.reopen()
                    state.open = amended
                    self.counters["reopened"] += 1
                    if ev.ends_session:
                        self._close(state, amended, ENDED, records)
                else:
                    records.append(_emitted(amended))
                return None

        if opened is not None:
            if t > opened.reach_ms(rules):  # rule 3: a gap
                self._close(state, opened, TIMEOUT, records)
            else:  # rule 4: before the floor, a session of its own
                if ev.type == END:
                    return self._reject(ev, "a sessionend before the start of the user's open session")
                own = self._begin(state, ev)
                own.add(ev, rules)
                own.close(TIMEOUT, self.clock_ms)
                state.closed.append(own)
                records.append(_emitted(own))
                self.counters["closed_timeout"] += 1
                return None
        return self._open(state, ev, rules, records)

    def _open(
        self, state: KeyState, ev: Event, rules: SessionRules, records: list[Emitted]
    ) -> Rejection | None:
        """Rule 5: the event opens a new session."""
        if ev.type == END:
            return self._reject(ev, "a sessionend with no open session to end")
        session = self._begin(state, ev)
        session.add(ev, rules)
        state.open = session
        self.counters["opened"] += 1
        if ev.ends_session:
            self._close(state, session, ENDED, records)
        return None

    def _close(self, state: KeyState, session: Session, reason: str, records: list[Emitted]) -> None:
        session.close(reason, self.clock_ms)
        if state.open is session:
            state.open = None
        state.closed.append(session)
        records.append(_emitted(session))
        self.counters[f"closed_{reason}"] += 1

    def _reject(self, ev: Event, detail: str) -> Rejection:
        self.counters["rejected_end_without_session"] += 1
        return Rejection(
            RejectCode.END_WITHOUT_SESSION, detail, partition=ev.partition, offset=ev.offset,
            index=ev.index,
        )

    def _begin(self, state: KeyState, ev: Event) -> Session:
        """A new session for the event; a client-chosen id goes on above the revisions it
        had elsewhere (SPEC 4: revisions never go back)."""
        session = Session.begin(self._new_id(state, ev), ev)
        floors = self.revision_floors
        if floors and session.manual:
            floor = floors.get((session.session_id, session.project))
            if floor is not None:
                session.revision = floor + 1
        return session

    def _new_id(self, state: KeyState, ev: Event) -> str:
        """The client's session id, or one derived from the key and this first event;
        a suffix keeps it unique among the sessions the key still remembers."""
        taken = {s.session_id for s in state.sessions()}
        if ev.session_id is not None:
            base = ev.session_id
            if base not in taken:
                return base
            base = f"{base[:91]}-{auto_session_id(state.key, ev)[:8]}"
        else:
            base = auto_session_id(state.key, ev)
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    # -- bookkeeping -----------------------------------------------------------------
    def _touch(self, state: KeyState) -> None:
        key = state.key
        self._changed.add(key)
        opened = state.open
        if not state.closed:
            if opened is None:
                del self.states[key]
                self._due.pop(key, None)
            else:  # KeyState.next_due_ms of a key with only an open session, written out
                rules = self.rules_for(key[0])
                self._set_due(key, opened.last_arrival_ms + rules.inactivity_timeout_ms + 1)
            return
        self._schedule(state)

    def _schedule(self, state: KeyState) -> None:
        self._set_due(state.key, state.next_due_ms(self.rules_for(state.key[0])))

    def _set_due(self, key: SessionKey, due: int | None) -> None:
        if due is None:
            self._due.pop(key, None)
        elif self._due.get(key) != due:
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))
            self._compact()
