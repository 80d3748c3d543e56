"""SPEC section 3, rule 2: a late event amends a session closed less than
``reopen_grace`` ago whose span holds it; the reach of a closed session; the grace
boundary. One boundary per test."""

from __future__ import annotations

from helpers import (
    GRACE_MS,
    MAX_MS,
    MIN,
    PROJECT,
    TIMEOUT_MS,
    advance,
    engine,
    ev,
    feed,
    open_session,
    state_of,
    ts,
)

from pipeline.core.engine import Record, Sessionizer
from pipeline.core.event import END, START
from pipeline.core.session import ENDED, MAX_DURATION, TIMEOUT

SID = "client-session-0001"


def _ended_at_2min(eng: Sessionizer, sid: str | None = None) -> Record:
    """A session [0, 2 min] ended by a sessionend that arrived at 2 min."""
    [record] = feed(eng, [ev(at=0, sid=sid), ev(at=MIN, sid=sid), ev(END, at=2 * MIN, sid=sid)])
    return record


def _idle_closed_at_deadline(eng: Sessionizer) -> Record:
    """A session [0, 1 min], last arrival 1 min, closed idle (deadline 6 min)."""
    feed(eng, [ev(at=0), ev(at=MIN)])
    [record] = advance(eng, MIN + TIMEOUT_MS + 1)
    return record


# -- amending an ended session -------------------------------------------------------


def test_late_event_amends_ended_session_same_id_next_revision() -> None:
    eng = engine()
    first = _ended_at_2min(eng)
    [amended] = feed(eng, [ev(at=30 * 1000, arrival=3 * MIN)])
    assert amended["session_id"] == first["session_id"]
    assert (first["revision"], amended["revision"]) == (1, 2)
    assert amended["event_count"] == 4


def test_amended_ended_session_is_emitted_at_once_keeping_reason_and_end() -> None:
    eng = engine()
    _ended_at_2min(eng)
    [amended] = feed(eng, [ev(at=-MIN, arrival=3 * MIN)])
    assert amended["close_reason"] == ENDED
    assert (amended["start"], amended["end"]) == (ts(-MIN), ts(2 * MIN))
    assert amended["duration_ms"] == 3 * MIN
    assert state_of(eng).open is None


def test_each_late_event_bumps_the_revision_again() -> None:
    eng = engine()
    _ended_at_2min(eng)
    records = feed(eng, [ev(at=10 * 1000, arrival=3 * MIN), ev(at=20 * 1000, arrival=4 * MIN)])
    assert [r["revision"] for r in records] == [2, 3]


def test_sessionend_into_ended_session_amends_it() -> None:
    eng = engine()
    _ended_at_2min(eng)
    out = eng.apply(ev(END, at=90 * 1000, arrival=3 * MIN))
    assert out.rejection is None
    [amended] = out.records
    assert (amended["close_reason"], amended["end"], amended["revision"]) == (ENDED, ts(2 * MIN), 2)


def test_event_exactly_at_ended_session_end_amends_it() -> None:
    eng = engine()
    _ended_at_2min(eng)
    [amended] = feed(eng, [ev(at=2 * MIN, arrival=3 * MIN)])
    assert amended["revision"] == 2
    assert state_of(eng).open is None


def test_event_one_ms_past_ended_session_end_opens_new_session() -> None:
    eng = engine()
    _ended_at_2min(eng)
    assert feed(eng, [ev(at=2 * MIN + 1, arrival=3 * MIN)]) == []
    assert open_session(eng).start_ms == ev(at=2 * MIN + 1).time_ms


def test_event_at_ended_session_floor_amends_it() -> None:
    eng = engine()
    _ended_at_2min(eng)
    [amended] = feed(eng, [ev(at=-TIMEOUT_MS, arrival=3 * MIN)])
    assert amended["start"] == ts(-TIMEOUT_MS)


def test_event_one_ms_below_ended_session_floor_opens_new_session() -> None:
    eng = engine()
    _ended_at_2min(eng)
    assert feed(eng, [ev(at=-TIMEOUT_MS - 1, arrival=3 * MIN)]) == []
    assert open_session(eng).start_ms == ev(at=-TIMEOUT_MS - 1).time_ms


# -- max_duration: reach is end --------------------------------------------------------


def _closed_by_max_duration(eng: Sessionizer) -> None:
    """[0, 56 min] closed max_duration by a `session` event at 60 min + 1 ms, which
    opens a session whose floor is its own start."""
    feed(eng, [ev("heartbeat", at=m * MIN) for m in range(0, 57, 4)])
    [closed] = feed(eng, [ev(START, at=MAX_MS + 1)])
    assert closed["close_reason"] == MAX_DURATION


def test_event_exactly_at_max_duration_session_end_amends_it() -> None:
    eng = engine()
    _closed_by_max_duration(eng)
    [amended] = feed(eng, [ev(at=56 * MIN, arrival=61 * MIN)])
    assert (amended["close_reason"], amended["end"], amended["revision"]) == (
        MAX_DURATION,
        ts(56 * MIN),
        2,
    )


def test_event_one_ms_past_max_duration_session_end_is_not_amended() -> None:
    eng = engine()
    _closed_by_max_duration(eng)
    [own] = feed(eng, [ev(at=56 * MIN + 1, arrival=61 * MIN)])
    assert own["revision"] == 1  # rule 4: before the open session's floor
    assert own["start"] == own["end"] == ts(56 * MIN + 1)


def test_amending_is_not_capped_by_max_duration() -> None:
    # rule 2 amends whatever its span holds; only rule 1 checks the length
    eng = engine()
    _closed_by_max_duration(eng)
    [amended] = feed(eng, [ev(at=-TIMEOUT_MS, arrival=61 * MIN)])
    assert (amended["close_reason"], amended["duration_ms"]) == (MAX_DURATION, 61 * MIN)


# -- timeout: reach is end + inactivity timeout; reopening --------------------------------


def test_event_exactly_at_timeout_session_reach_reopens_it() -> None:
    eng = engine()
    closed = _idle_closed_at_deadline(eng)
    assert feed(eng, [ev(at=MIN + TIMEOUT_MS, arrival=7 * MIN)]) == []
    session = open_session(eng)
    assert (session.session_id, session.revision) == (closed["session_id"], 2)
    assert session.last_activity_ms == ev(at=MIN + TIMEOUT_MS).time_ms


def test_event_one_ms_past_timeout_session_reach_opens_new_session() -> None:
    eng = engine()
    closed = _idle_closed_at_deadline(eng)
    feed(eng, [ev(at=MIN + TIMEOUT_MS + 1, arrival=7 * MIN)])
    session = open_session(eng)
    assert session.session_id != closed["session_id"]
    assert session.revision == 1


def test_reopened_session_is_emitted_again_when_it_closes() -> None:
    eng = engine()
    closed = _idle_closed_at_deadline(eng)
    feed(eng, [ev(at=2 * MIN, arrival=7 * MIN)])
    assert advance(eng, 7 * MIN + TIMEOUT_MS) == []
    [again] = advance(eng, 7 * MIN + TIMEOUT_MS + 1)
    assert again["session_id"] == closed["session_id"]
    assert (again["revision"], again["close_reason"]) == (2, TIMEOUT)
    assert (again["start"], again["end"], again["event_count"]) == (ts(0), ts(2 * MIN), 3)


def test_reopened_session_takes_later_events_by_rule_1_without_new_revision() -> None:
    eng = engine()
    _idle_closed_at_deadline(eng)
    feed(eng, [ev(at=2 * MIN, arrival=7 * MIN), ev(at=7 * MIN, arrival=8 * MIN)])
    [again] = advance(eng, 8 * MIN + TIMEOUT_MS + 1)
    assert (again["revision"], again["end"], again["event_count"]) == (2, ts(7 * MIN), 4)


def test_reopened_session_ended_by_late_sessionend_is_emitted_at_once_as_ended() -> None:
    eng = engine()
    closed = _idle_closed_at_deadline(eng)
    [again] = feed(eng, [ev(END, at=90 * 1000, arrival=7 * MIN)])
    assert again["session_id"] == closed["session_id"]
    assert (again["revision"], again["close_reason"]) == (2, ENDED)
    assert again["end"] == ts(90 * 1000)
    assert state_of(eng).open is None


def test_reopened_session_ended_by_earlier_sessionend_ends_at_last_activity() -> None:
    eng = engine()
    _idle_closed_at_deadline(eng)
    [again] = feed(eng, [ev(END, at=30 * 1000, arrival=7 * MIN)])
    assert (again["close_reason"], again["end"]) == (ENDED, ts(MIN))


def test_timeout_session_amended_while_another_is_open_is_emitted_at_once_keeping_end() -> None:
    eng = engine()
    # [0, 1 min] closes by a gap: a `session` event at 10 min opens the next one,
    # whose floor is its start, so 3 min lies only in the closed session's span
    [closed] = feed(eng, [ev(at=0), ev(at=MIN), ev(START, at=10 * MIN, arrival=2 * MIN)])
    [amended] = feed(eng, [ev(at=3 * MIN, arrival=3 * MIN)])
    assert amended["session_id"] == closed["session_id"]
    assert (amended["revision"], amended["close_reason"]) == (2, TIMEOUT)
    assert amended["end"] == ts(MIN)  # kept, although the new event lies after it
    assert amended["event_count"] == 3
    assert open_session(eng).start_ms == ev(at=10 * MIN).time_ms


def test_own_session_of_rule_4_is_amended_while_the_open_session_stays() -> None:
    eng = engine()
    [own] = feed(eng, [ev(at=10 * MIN), ev(at=MIN, arrival=11 * MIN)])
    [amended] = feed(eng, [ev(at=30 * 1000, arrival=12 * MIN)])
    assert amended["session_id"] == own["session_id"]
    assert (amended["revision"], amended["start"], amended["end"]) == (2, ts(30 * 1000), ts(MIN))
    assert open_session(eng).event_count == 1


def test_sessionend_into_timeout_session_while_another_is_open_keeps_timeout() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(at=MIN), ev(START, at=10 * MIN, arrival=2 * MIN)])
    out = eng.apply(ev(END, at=3 * MIN, arrival=3 * MIN))
    assert out.rejection is None
    [amended] = out.records
    assert (amended["close_reason"], amended["end"], amended["revision"]) == (TIMEOUT, ts(MIN), 2)
    assert open_session(eng).status == "open"  # the open session is not ended


def test_reopened_session_closes_by_gap_like_any_open_session() -> None:
    eng = engine()
    closed = _idle_closed_at_deadline(eng)
    feed(eng, [ev(at=2 * MIN, arrival=7 * MIN)])
    [again] = feed(eng, [ev(at=8 * MIN, arrival=7 * MIN + 1)])
    assert (again["session_id"], again["revision"]) == (closed["session_id"], 2)
    assert (again["close_reason"], again["end"]) == (TIMEOUT, ts(2 * MIN))
    assert open_session(eng).start_ms == ev(at=8 * MIN).time_ms


# -- which closed session -------------------------------------------------------------


def _two_closed(eng: Sessionizer) -> tuple[Record, Record]:
    """A: [0, 1 min] closed by a gap (span [-5, 6] min); B: [6 min + 1, 7 min] ended
    (span [1 min + 1, 7 min]). No session open."""
    [a] = feed(eng, [ev(at=0), ev(at=MIN), ev(at=6 * MIN + 1, arrival=2 * MIN)])
    [b] = feed(eng, [ev(END, at=7 * MIN, arrival=2 * MIN + 1)])
    assert a["session_id"] != b["session_id"]
    return a, b


def test_latest_starting_closed_session_takes_the_event() -> None:
    eng = engine()
    _, b = _two_closed(eng)
    [amended] = feed(eng, [ev(at=3 * MIN, arrival=3 * MIN)])
    assert amended["session_id"] == b["session_id"]
    assert (amended["revision"], amended["close_reason"], amended["start"]) == (
        2,
        ENDED,
        ts(3 * MIN),
    )


def test_event_held_only_by_the_earlier_session_reopens_it() -> None:
    eng = engine()
    a, _ = _two_closed(eng)
    assert feed(eng, [ev(at=MIN, arrival=3 * MIN)]) == []  # B's floor is 1 min + 1 ms
    session = open_session(eng)
    assert (session.session_id, session.revision) == (a["session_id"], 2)


def test_timeout_session_is_amended_at_once_while_another_is_reopened() -> None:
    eng = engine()
    # A [0, 1 min] closes by a gap; B [10, 11 min] (floor 10 min) closes idle
    [a] = feed(eng, [ev(at=0), ev(at=MIN), ev(START, at=10 * MIN, arrival=2 * MIN)])
    feed(eng, [ev(at=11 * MIN, arrival=3 * MIN)])
    [b] = advance(eng, 3 * MIN + TIMEOUT_MS + 1)
    # both closed by timeout, none open: B reopens ...
    assert feed(eng, [ev(at=12 * MIN, arrival=9 * MIN)]) == []
    assert open_session(eng).session_id == b["session_id"]
    # ... and now A, with a session open for the key, is amended and emitted at once
    [amended] = feed(eng, [ev(at=3 * MIN, arrival=9 * MIN + 1)])
    assert (amended["session_id"], amended["revision"]) == (a["session_id"], 2)
    assert (amended["close_reason"], amended["end"]) == (TIMEOUT, ts(MIN))
    assert open_session(eng).session_id == b["session_id"]


# -- `session` events -------------------------------------------------------------------


def test_auto_session_event_never_goes_into_a_closed_session() -> None:
    eng = engine()
    first = _ended_at_2min(eng)
    assert feed(eng, [ev(START, at=MIN, arrival=3 * MIN)]) == []
    session = open_session(eng)
    assert session.session_id != first["session_id"]
    assert session.type_counts == {START: 1}


def test_manual_session_event_may_go_into_a_closed_session() -> None:
    eng = engine()
    first = _ended_at_2min(eng, sid=SID)
    [amended] = feed(eng, [ev(START, at=-MIN, arrival=3 * MIN, sid=SID)])
    assert amended["session_id"] == first["session_id"] == SID
    assert (amended["revision"], amended["start"]) == (2, ts(-MIN))
    assert state_of(eng, (PROJECT, "s", SID)).open is None


# -- the grace ----------------------------------------------------------------------------


def test_closed_exactly_grace_ago_is_no_longer_eligible() -> None:
    eng = engine()
    first = _ended_at_2min(eng)  # closed at stream clock 2 min
    assert feed(eng, [ev(at=MIN, arrival=2 * MIN + GRACE_MS)]) == []
    session = open_session(eng)
    assert session.session_id != first["session_id"]
    assert state_of(eng).closed == []


def test_closed_one_ms_less_than_grace_ago_is_eligible() -> None:
    eng = engine()
    first = _ended_at_2min(eng)
    [amended] = feed(eng, [ev(at=MIN, arrival=2 * MIN + GRACE_MS - 1)])
    assert (amended["session_id"], amended["revision"]) == (first["session_id"], 2)


def test_idle_closed_grace_runs_from_the_deadline_one_ms_short() -> None:
    eng = engine()
    closed = _idle_closed_at_deadline(eng)  # closed at 6 min + 1 ms, noticed then
    advance(eng, 15 * MIN)  # noticing later changes nothing
    feed(eng, [ev(at=MIN, arrival=MIN + TIMEOUT_MS + 1 + GRACE_MS - 1)])
    assert open_session(eng).session_id == closed["session_id"]


def test_idle_closed_grace_runs_from_the_deadline_exactly() -> None:
    eng = engine()
    closed = _idle_closed_at_deadline(eng)
    feed(eng, [ev(at=MIN, arrival=MIN + TIMEOUT_MS + 1 + GRACE_MS)])
    assert open_session(eng).session_id != closed["session_id"]


def test_key_is_forgotten_when_its_last_closed_session_leaves_the_grace() -> None:
    eng = engine()
    _ended_at_2min(eng)
    advance(eng, 2 * MIN + GRACE_MS - 1)
    assert len(state_of(eng).closed) == 1
    assert advance(eng, 2 * MIN + GRACE_MS) == []
    assert eng.states == {}
