"""SPEC section 3: the key, the span, and where an event goes (rules 1, 3, 4, 5).

One boundary per test. Times are offsets from ``T0`` (see ``helpers``); the
rules are small: inactivity 5 min, grace 15 min, max duration 1 h. Events
whose event time runs ahead of their arrival time stand for a client clock
that is ahead, which is how an event lands past the reach (rule 3) without the
stream clock closing the session first.
"""

from __future__ import annotations

import pytest
from helpers import (
    MAX_MS,
    MIN,
    PROJECT,
    RULES,
    TIMEOUT_MS,
    USER_KEY,
    advance,
    engine,
    ev,
    feed,
    open_session,
    state_of,
    ts,
)

from pipeline.core.engine import Sessionizer, auto_session_id
from pipeline.core.event import END, RejectCode
from pipeline.core.session import MAX_DURATION, TIMEOUT

SID = "client-session-0001"

# -- the key ---------------------------------------------------------------------


def test_key_is_project_and_session_id_when_event_has_one() -> None:
    eng = engine()
    eng.apply(ev(sid=SID, user="u1"))
    assert list(eng.states) == [(PROJECT, "s", SID)]


def test_key_is_project_and_user_id_without_session_id() -> None:
    eng = engine()
    eng.apply(ev(user="u1"))
    assert list(eng.states) == [(PROJECT, "u", "u1")]


def test_manual_session_gathers_its_events_whatever_their_user_id() -> None:
    eng = engine()
    feed(eng, [ev(at=0, sid=SID, user="alice"), ev(at=MIN, sid=SID, user="bob")])
    session = open_session(eng, (PROJECT, "s", SID))
    assert session.event_count == 2
    assert session.user_id == "alice"  # the earliest event's


def test_same_user_in_two_projects_has_two_sessions() -> None:
    eng = engine()
    feed(eng, [ev(project="shop"), ev(project="blog")])
    assert open_session(eng, ("shop", "u", "u1")).project == "shop"
    assert open_session(eng, ("blog", "u", "u1")).project == "blog"


def test_same_text_as_user_id_and_as_session_id_are_two_keys() -> None:
    eng = engine()
    feed(eng, [ev(user=SID), ev(user="someone", sid=SID)])
    assert set(eng.states) == {(PROJECT, "u", SID), (PROJECT, "s", SID)}


def test_user_events_with_and_without_session_id_do_not_mix() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(at=MIN, sid=SID)])
    assert open_session(eng).event_count == 1
    assert open_session(eng, (PROJECT, "s", SID)).event_count == 1


def test_record_carries_the_event_project() -> None:
    eng = engine()
    [record] = feed(eng, [ev(at=0), ev("sessionend", at=MIN)])
    assert record["project"] == PROJECT


# -- the two clocks ------------------------------------------------------------------


def test_event_time_sets_start_and_end_not_arrival() -> None:
    eng = engine()
    [record] = feed(eng, [ev(at=0, arrival=3 * MIN), ev(END, at=MIN, arrival=4 * MIN)])
    assert (record["start"], record["end"]) == (ts(0), ts(MIN))


def test_client_clock_far_ahead_does_not_close_other_users_sessions() -> None:
    eng = engine()
    feed(eng, [ev(at=0, user="a"), ev(at=60 * MIN, arrival=MIN, user="b")])
    assert eng.clock_ms == ev(at=MIN).time_ms  # the stream clock follows arrival
    assert open_session(eng, (PROJECT, "u", "a")).status == "open"


# -- the span of an open session -----------------------------------------------


def test_floor_without_session_event_is_start_minus_timeout() -> None:
    eng = engine()
    feed(eng, [ev(at=10 * MIN), ev(at=10 * MIN - TIMEOUT_MS, arrival=11 * MIN)])
    session = open_session(eng)
    assert session.start_ms == ev(at=5 * MIN).time_ms
    assert session.event_count == 2


def test_event_one_ms_below_floor_forms_own_session() -> None:
    eng = engine()
    records = feed(eng, [ev(at=10 * MIN), ev(at=10 * MIN - TIMEOUT_MS - 1, arrival=11 * MIN)])
    assert [r["close_reason"] for r in records] == [TIMEOUT]
    assert open_session(eng).event_count == 1


def test_floor_with_session_event_is_start() -> None:
    eng = engine()
    feed(eng, [ev("session", at=10 * MIN), ev(at=10 * MIN, arrival=11 * MIN)])
    assert open_session(eng).event_count == 2


def test_event_one_ms_before_session_event_forms_own_session() -> None:
    eng = engine()
    records = feed(eng, [ev("session", at=10 * MIN), ev(at=10 * MIN - 1, arrival=11 * MIN)])
    assert len(records) == 1
    assert records[0]["start"] == records[0]["end"] == ts(10 * MIN - 1)
    assert open_session(eng).event_count == 1


def test_late_session_event_moves_the_floor_to_its_time() -> None:
    eng = engine()
    feed(eng, [ev(at=10 * MIN), ev("session", at=8 * MIN, arrival=10 * MIN + 1)])
    assert open_session(eng).floor_ms(RULES) == ev(at=8 * MIN).time_ms
    records = feed(eng, [ev(at=8 * MIN - 1, arrival=10 * MIN + 2)])
    assert len(records) == 1  # before the new floor: a session of its own


def test_event_exactly_at_reach_extends() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(at=TIMEOUT_MS, arrival=MIN)])
    session = open_session(eng)
    assert session.last_activity_ms == ev(at=TIMEOUT_MS).time_ms
    assert session.reach_ms(RULES) == ev(at=2 * TIMEOUT_MS).time_ms


def test_event_one_ms_past_reach_closes_by_gap() -> None:
    eng = engine()
    first = ev(at=0)
    records = feed(eng, [first, ev(at=TIMEOUT_MS + 1, arrival=MIN)])
    [closed] = records
    assert closed["close_reason"] == TIMEOUT
    assert closed["end"] == ts(0)
    assert closed["session_id"] == auto_session_id(USER_KEY, first)
    assert open_session(eng).start_ms == ev(at=TIMEOUT_MS + 1).time_ms


# -- rule 1: into the open session ----------------------------------------------


def test_out_of_order_event_lowers_start_and_keeps_last_activity() -> None:
    eng = engine()
    feed(eng, [ev(at=4 * MIN), ev(at=2 * MIN, arrival=4 * MIN + 1)])
    session = open_session(eng)
    assert (session.start_ms, session.last_activity_ms) == (
        ev(at=2 * MIN).time_ms,
        ev(at=4 * MIN).time_ms,
    )


def test_later_event_raises_last_activity_and_keeps_start() -> None:
    eng = engine()
    feed(eng, [ev(at=2 * MIN), ev(at=4 * MIN)])
    session = open_session(eng)
    assert (session.start_ms, session.last_activity_ms) == (
        ev(at=2 * MIN).time_ms,
        ev(at=4 * MIN).time_ms,
    )


def _hour_of_heartbeats(eng: Sessionizer, until: int = 56 * MIN) -> None:
    """One session from 0 to ``until`` kept alive by heartbeats every 4 minutes."""
    feed(eng, [ev("heartbeat", at=m * MIN) for m in range(0, until // MIN + 1, 4)])
    assert len(state_of(eng).sessions()) == 1


def test_session_exactly_max_duration_long_stays_open() -> None:
    eng = engine()
    _hour_of_heartbeats(eng)
    assert feed(eng, [ev(at=MAX_MS)]) == []
    session = open_session(eng)
    assert session.last_activity_ms - session.start_ms == MAX_MS


def test_event_one_ms_past_max_duration_closes_as_max_duration_and_opens_new() -> None:
    eng = engine()
    _hour_of_heartbeats(eng)
    [closed] = feed(eng, [ev(at=MAX_MS + 1)])
    assert closed["close_reason"] == MAX_DURATION
    assert (closed["start"], closed["end"]) == (ts(0), ts(56 * MIN))  # end = last activity
    assert closed["heartbeat_count"] == 15 and closed["event_count"] == 0
    session = open_session(eng)
    assert session.start_ms == session.last_activity_ms == ev(at=MAX_MS + 1).time_ms
    assert session.event_count == 1


def test_early_event_exactly_at_max_duration_stays() -> None:
    eng = engine()
    _hour_of_heartbeats(eng)
    assert feed(eng, [ev(at=56 * MIN - MAX_MS, arrival=57 * MIN)]) == []
    assert open_session(eng).start_ms == ev(at=-4 * MIN).time_ms


def test_early_event_one_ms_past_max_duration_closes_and_opens_new() -> None:
    eng = engine()
    _hour_of_heartbeats(eng)
    [closed] = feed(eng, [ev(at=56 * MIN - MAX_MS - 1, arrival=57 * MIN)])
    assert closed["close_reason"] == MAX_DURATION
    assert (closed["start"], closed["end"]) == (ts(0), ts(56 * MIN))
    assert open_session(eng).start_ms == ev(at=-4 * MIN - 1).time_ms


def test_sessionend_past_max_duration_closes_session_and_is_rejected() -> None:
    eng = engine()
    _hour_of_heartbeats(eng)
    out = eng.apply(ev(END, at=MAX_MS + 1))
    assert [r["close_reason"] for r in out.records] == [MAX_DURATION]
    assert out.rejection is not None
    assert out.rejection.code == RejectCode.END_WITHOUT_SESSION
    assert state_of(eng).open is None


# -- rule 3: a gap past the reach -----------------------------------------------


def test_gap_closes_open_session_as_timeout_with_end_last_activity() -> None:
    eng = engine()
    [closed] = feed(eng, [ev(at=0), ev(at=MIN), ev(at=10 * MIN, arrival=2 * MIN)])
    assert closed["close_reason"] == TIMEOUT
    assert (closed["start"], closed["end"], closed["duration_ms"]) == (ts(0), ts(MIN), MIN)
    assert closed["event_count"] == 2


def test_gap_event_opens_new_session() -> None:
    eng = engine()
    gap_event = ev("error", at=10 * MIN, arrival=2 * MIN)
    feed(eng, [ev(at=0), gap_event])
    session = open_session(eng)
    assert session.session_id == auto_session_id(USER_KEY, gap_event)
    assert session.type_counts == {"error": 1}


def test_sessionend_past_reach_closes_by_gap_and_is_rejected() -> None:
    eng = engine()
    eng.apply(ev(at=0))
    out = eng.apply(ev("sessionend", at=10 * MIN, arrival=MIN))
    assert [r["close_reason"] for r in out.records] == [TIMEOUT]
    assert out.rejection is not None
    assert out.rejection.code == RejectCode.END_WITHOUT_SESSION
    assert state_of(eng).open is None


# -- rule 4: before the floor, a session of its own -------------------------------


def test_event_before_floor_forms_own_session_closed_at_once() -> None:
    eng = engine()
    late = ev("log", at=MIN, arrival=11 * MIN, id="late-1")
    [own] = feed(eng, [ev(at=10 * MIN), late])
    assert own["status"] == "closed"
    assert own["close_reason"] == TIMEOUT
    assert own["start"] == own["end"] == ts(MIN)
    assert own["duration_ms"] == 0
    assert own["revision"] == 1
    assert own["session_id"] == auto_session_id(USER_KEY, late)
    assert [e["id"] for e in own["events"]] == ["late-1"]
    session = open_session(eng)  # the open session is untouched
    assert (session.start_ms, session.event_count) == (ev(at=10 * MIN).time_ms, 1)


def test_heartbeat_close_before_floor_forms_own_session_closed_as_timeout() -> None:
    eng = engine()
    [own] = feed(eng, [ev(at=10 * MIN), ev("heartbeat", at=MIN, arrival=11 * MIN, close=True)])
    assert own["close_reason"] == TIMEOUT
    assert own["heartbeat_count"] == 1
    assert open_session(eng).status == "open"


def test_sessionend_before_floor_is_rejected_end_without_session() -> None:
    eng = engine()
    eng.apply(ev(at=10 * MIN))
    out = eng.apply(ev("sessionend", at=MIN, arrival=11 * MIN))
    assert out.records == []
    assert out.rejection is not None
    assert out.rejection.code == RejectCode.END_WITHOUT_SESSION
    assert len(state_of(eng).sessions()) == 1


# -- rule 5: otherwise a new session ----------------------------------------------


@pytest.mark.parametrize(
    "kind", ["usage", "error", "log", "404", "feature.click", "session", "heartbeat"]
)
def test_first_event_of_any_type_opens_session(kind: str) -> None:
    eng = engine()
    out = eng.apply(ev(kind))
    assert out.records == [] and out.rejection is None
    session = open_session(eng)
    assert session.type_counts == {kind: 1}
    assert session.status == "open"


def test_lone_heartbeat_opens_session_with_no_events() -> None:
    eng = engine()
    eng.apply(ev("heartbeat"))
    [record] = advance(eng, TIMEOUT_MS + 1)
    assert (record["event_count"], record["heartbeat_count"]) == (0, 1)
    assert record["events"] == []
    assert record["close_reason"] == TIMEOUT


def test_sessionend_with_no_session_is_rejected_end_without_session() -> None:
    eng = engine()
    out = eng.apply(ev("sessionend", partition=2, offset=17))
    assert out.records == []
    assert out.rejection is not None
    assert out.rejection.code == RejectCode.END_WITHOUT_SESSION
    assert (out.rejection.partition, out.rejection.offset) == (2, 17)
    assert eng.states == {}


def test_sessionend_after_an_ended_session_past_its_end_is_rejected() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev("sessionend", at=MIN)])
    out = eng.apply(ev("sessionend", at=MIN + 1))
    assert out.rejection is not None
    assert out.rejection.code == RejectCode.END_WITHOUT_SESSION


def test_heartbeat_close_with_no_session_opens_and_ends_it_at_once() -> None:
    eng = engine()
    [record] = feed(eng, [ev("heartbeat", at=MIN, close=True)])
    assert record["close_reason"] == "ended"
    assert record["start"] == record["end"] == ts(MIN)
    assert state_of(eng).open is None
