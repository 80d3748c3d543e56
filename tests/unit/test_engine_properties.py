"""Properties of the sessionizer over generated input (hypothesis).

(a) the order in which one session's events arrive does not change its record;
(b) a log replayed gives the same records, and keys do not influence each other;
(c) key state that goes through the store's encoding mid-log changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from helpers import (
    CAP,
    MIN,
    RULES,
    SEC,
    T0,
    TIMEOUT_MS,
    canonical,
    engine,
    roundtrip,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.engine import Record, Sessionizer, revision_marks
from pipeline.core.event import Event

FAR_MS = T0 + 7 * 24 * 60 * MIN  # every session closed and forgotten by then

# -- (a) permutations of one session ---------------------------------------------------

_TYPES = ["usage", "error", "log", "404", "heartbeat"]


@st.composite
def one_session(draw: st.DrawFn) -> tuple[list[Event], bool]:
    """Events of one key whose event times lie within the inactivity timeout of each
    other (distinct times; a `session` event, if any, the earliest), and some exact
    copies of them. No event ends the session."""
    manual = draw(st.booleans())
    times = draw(st.lists(st.integers(0, TIMEOUT_MS), min_size=1, max_size=8, unique=True))
    with_start = draw(st.booleans())
    earliest = min(times)
    events = []
    for i, at in enumerate(times):
        kind = "session" if with_start and at == earliest else draw(st.sampled_from(_TYPES))
        events.append(
            Event(
                type=kind,
                time_ms=T0 + at,
                arrival_ms=0,  # set from the arrival order below
                project="p",
                user_id=draw(st.sampled_from(["u1", "u2"])) if manual else "u1",
                session_id="client-session-0001" if manual else None,
                id=draw(st.one_of(st.none(), st.just(f"e{i}"))),
                user_name=draw(st.sampled_from([None, "", "Ann", "Bob"])),
                source=draw(st.sampled_from([None, "checkout"])),
                value=draw(st.one_of(st.none(), st.integers(-5, 5), st.floats(-1, 1))),
                data=draw(st.dictionaries(st.sampled_from("abc"), st.integers(0, 3), max_size=2)),
                partition=i % 2,
                offset=100 + i,
            )
        )
    copies = draw(st.lists(st.sampled_from(events), max_size=3))
    return events + copies, manual


def _closed_by_idle(events: list[Event]) -> Record:
    """Apply events arriving one second apart in the given order; the one record
    they make once the stream clock has left them behind."""
    eng = engine()
    start = T0 + TIMEOUT_MS
    for n, event in enumerate(events):
        out = eng.apply(dataclasses.replace(event, arrival_ms=start + n * SEC))
        assert out.records == [] and out.rejection is None
    [record] = eng.advance(FAR_MS)
    return record


@settings(max_examples=100, deadline=None)
@given(one_session(), st.randoms(use_true_random=False))
def test_arrival_order_of_one_session_does_not_change_its_record(
    session: tuple[list[Event], bool], rnd: Any
) -> None:
    events, manual = session
    shuffled = list(events)
    rnd.shuffle(shuffled)
    expected = _closed_by_idle(sorted(events, key=lambda e: e.time_ms))
    got = _closed_by_idle(shuffled)
    if not manual:  # an auto id derives from the first event in log order
        expected.pop("session_id")
        got.pop("session_id")
    assert got == expected
    assert got["event_count"] + got["heartbeat_count"] + got["duplicate_events"] == len(events)
    assert len(got["events"]) == min(got["event_count"], CAP)


# -- generated logs ----------------------------------------------------------------------

_GAPS = [0, 0, SEC, 30 * SEC, MIN, 4 * MIN, 6 * MIN, 20 * MIN]
_KINDS = ["usage", "usage", "error", "heartbeat", "heartbeat", "session", "sessionend", "close"]
_WHO = [
    ("p1", "a", None),
    ("p1", "b", None),
    ("p2", "a", None),
    ("p1", "a", "client-session-0001"),
    ("p1", "b", "client-session-0002"),
]

_step = st.tuples(
    st.sampled_from(_GAPS),  # arrival gap since the previous record
    st.integers(-8 * MIN, 2 * MIN),  # event time minus arrival time
    st.sampled_from(_KINDS),
    st.sampled_from(_WHO),
    st.one_of(st.none(), st.integers(0, 5)),  # event id, from a small pool: duplicates
    st.one_of(st.none(), st.dictionaries(st.sampled_from("xy"), st.integers(0, 2), max_size=1)),
)


@st.composite
def logs(draw: st.DrawFn) -> list[Event]:
    """An arrival-ordered input log of a few keys, with idle gaps, late events,
    clocks ahead, duplicates, starts and ends."""
    arrival = T0
    log = []
    for offset, (gap, skew, kind, (project, user, sid), ident, data) in enumerate(
        draw(st.lists(_step, min_size=1, max_size=40))
    ):
        arrival += gap
        log.append(
            Event(
                type="heartbeat" if kind == "close" else kind,
                close=kind == "close",
                time_ms=arrival + skew,
                arrival_ms=arrival,
                project=project,
                user_id=user,
                session_id=sid,
                id=None if ident is None else f"id{ident}",
                user_name=f"name{offset % 3}",
                data=data or {},
                offset=offset,
            )
        )
    return log


def _run(log: list[Event], eng: Sessionizer | None = None) -> list[Record | str]:
    """Everything the engine says about the log, in order: records and rejections."""
    eng = eng or engine()
    out: list[Record | str] = []
    for event in log:
        applied = eng.apply(event)
        out.extend(applied.records)
        if applied.rejection is not None:
            out.append(f"rejected {applied.rejection.code} at {applied.rejection.offset}")
    out.extend(eng.advance(FAR_MS))
    assert eng.states == {}
    return out


def _records(outputs: list[Record | str]) -> list[Record]:
    return [o for o in outputs if isinstance(o, dict)]


@settings(max_examples=100, deadline=None)
@given(logs())
def test_same_log_twice_gives_the_same_outputs(log: list[Event]) -> None:
    assert _run(log) == _run(log)


@settings(max_examples=100, deadline=None)
@given(logs(), st.sets(st.sampled_from(_WHO)))
def test_keys_are_independent(log: list[Event], first_engine_keys: set[Any]) -> None:
    def who(e: Event) -> tuple[str, str, str | None]:
        return (e.project, e.user_id or "", e.session_id)

    one = _run(log)
    split = _run([e for e in log if who(e) in first_engine_keys]) + _run(
        [e for e in log if who(e) not in first_engine_keys]
    )
    assert canonical(_records(split)) == canonical(_records(one))
    assert sorted(o for o in split if isinstance(o, str)) == sorted(
        o for o in one if isinstance(o, str)
    )


@settings(max_examples=100, deadline=None)
@given(logs(), st.sets(st.integers(0, 40)))
def test_state_through_the_store_encoding_mid_log_changes_nothing(
    log: list[Event], cuts: set[int]
) -> None:
    """At each cut the engine is rebuilt from its key states sent through orjson,
    as the worker does per batch with the Redis store.

    A client-chosen session id that a key forgot (past the reopen grace) leaves no key
    state behind, yet its next session must go on above the revisions it had (SPEC 4):
    the worker keeps those in the store's revision marks, written before each commit
    (:func:`revision_marks`) and read as the engine's floors at the next batch. The
    rebuilt engine gets them the same way."""
    expected = _run(log)
    eng = engine()
    marks: dict[tuple[str, str], int] = {}  # the store's revision marks (``sz:revs``)
    got: list[Record | str] = []
    for n, event in enumerate(log):
        if n in cuts:
            for ref, revision in revision_marks(eng.states, eng.forgotten_revisions).items():
                marks[ref] = max(marks.get(ref, 0), revision)
            fresh = Sessionizer(RULES, clock_ms=eng.clock_ms)
            for state in eng.states.values():
                fresh.load(roundtrip(state))
            fresh.revision_floors.update(marks)
            eng = fresh
        applied = eng.apply(event)
        got.extend(applied.records)
        if applied.rejection is not None:
            got.append(f"rejected {applied.rejection.code} at {applied.rejection.offset}")
    got.extend(eng.advance(FAR_MS))
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(logs())
def test_records_are_well_formed(log: list[Event]) -> None:
    records = _records(_run(log))
    manual_ids = {e.session_id for e in log}
    seen: set[tuple[str, int]] = set()
    last_revision: dict[str, int] = {}
    for r in records:
        assert r["status"] == "closed"
        assert r["start"] <= r["end"]
        assert r["close_reason"] in {"ended", "timeout", "max_duration"}
        assert len(r["events"]) <= min(r["event_count"], CAP)
        assert r["events_truncated"] == (r["event_count"] > CAP)
        assert r["events"] == sorted(r["events"], key=lambda e: e["timestamp"])
        assert sum(r["type_counts"].values()) == r["event_count"] + r["heartbeat_count"]
        if r["session_id"] in manual_ids:
            continue  # a client id is used as is again once the key forgot it
        assert (r["session_id"], r["revision"]) not in seen
        seen.add((r["session_id"], r["revision"]))
        assert r["revision"] > last_revision.get(r["session_id"], 0)
        last_revision[r["session_id"]] = r["revision"]


def test_the_deadline_heap_stays_in_proportion_to_the_keys_held() -> None:
    """Superseded deadlines (each event moves its key's) and forgotten keys' do not pile
    up: the heap is rebuilt from the live deadlines, and the closes stay the same."""
    from pipeline.core.engine import Sessionizer
    from pipeline.core.event import Event
    from pipeline.core.rules import SessionRules

    engine = Sessionizer(SessionRules(inactivity_timeout_ms=1_000_000))
    for n in range(50_000):
        engine.apply(Event(type="usage", time_ms=n, arrival_ms=n, project="p", user_id=f"u{n % 100}"))
        if n % 7 == 0:
            engine.forget(("p", "u", f"u{n % 100}"))
    assert len(engine._heap) <= 2 * len(engine._due) + 1024
    held_open = {state.open.session_id for state in engine.states.values() if state.open is not None}
    assert held_open
    closed = engine.advance(10_000_000)
    assert {r["session_id"] for r in closed} == held_open and len(closed) == len(held_open)
