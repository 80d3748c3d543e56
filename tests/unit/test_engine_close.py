"""SPEC section 3, closing: by a `sessionend`, by a closing heartbeat, and idle by the
stream clock alone (``advance`` with no new events). One boundary per test."""

from __future__ import annotations

from helpers import (
    GRACE_MS,
    MIN,
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

from pipeline.core.event import END
from pipeline.core.session import ENDED, TIMEOUT

# -- ended ---------------------------------------------------------------------------


def test_sessionend_closes_as_ended_at_its_time() -> None:
    eng = engine()
    [record] = feed(eng, [ev(at=0), ev(at=MIN), ev(END, at=2 * MIN)])
    assert record["close_reason"] == ENDED
    assert (record["start"], record["end"], record["duration_ms"]) == (ts(0), ts(2 * MIN), 2 * MIN)
    assert record["status"] == "closed"
    assert state_of(eng).open is None


def test_sessionend_earlier_than_last_activity_ends_at_last_activity() -> None:
    eng = engine()
    [record] = feed(eng, [ev(at=0), ev(at=3 * MIN), ev(END, at=2 * MIN, arrival=3 * MIN + 1)])
    assert record["close_reason"] == ENDED
    assert record["end"] == ts(3 * MIN)
    assert [e["type"] for e in record["events"]] == ["usage", END, "usage"]


def test_sessionend_is_counted_as_an_event() -> None:
    eng = engine()
    [record] = feed(eng, [ev(at=0), ev(END, at=MIN)])
    assert record["event_count"] == 2
    assert record["type_counts"] == {"usage": 1, END: 1}


def test_heartbeat_with_close_true_ends_session() -> None:
    eng = engine()
    [record] = feed(eng, [ev(at=0), ev("heartbeat", at=2 * MIN, close=True)])
    assert record["close_reason"] == ENDED
    assert record["end"] == ts(2 * MIN)
    assert (record["event_count"], record["heartbeat_count"]) == (1, 1)


def test_heartbeat_without_close_keeps_session_open() -> None:
    eng = engine()
    assert feed(eng, [ev(at=0), ev("heartbeat", at=2 * MIN)]) == []
    assert open_session(eng).last_activity_ms == ev(at=2 * MIN).time_ms


def test_ended_session_is_closed_at_the_stream_clock() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(END, at=MIN, arrival=2 * MIN)])
    assert state_of(eng).closed[0].closed_at_ms == ev(at=2 * MIN).time_ms


# -- idle, by the stream clock --------------------------------------------------------


def test_idle_session_stays_open_exactly_at_deadline() -> None:
    eng = engine()
    eng.apply(ev(at=0))
    assert advance(eng, TIMEOUT_MS) == []
    assert open_session(eng).status == "open"


def test_idle_session_closes_one_ms_after_deadline() -> None:
    eng = engine()
    eng.apply(ev(at=0))
    [record] = advance(eng, TIMEOUT_MS + 1)
    assert record["close_reason"] == TIMEOUT
    assert record["end"] == ts(0)
    assert state_of(eng).open is None


def test_idle_close_end_is_last_activity_not_the_clock() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(at=MIN, arrival=2 * MIN)])
    [record] = advance(eng, 3 * 60 * MIN)
    assert (record["start"], record["end"], record["duration_ms"]) == (ts(0), ts(MIN), MIN)


def test_idle_deadline_follows_latest_arrival_not_event_time() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(at=-MIN, arrival=4 * MIN)])
    assert advance(eng, 4 * MIN + TIMEOUT_MS) == []
    [record] = advance(eng, 4 * MIN + TIMEOUT_MS + 1)
    assert (record["start"], record["end"]) == (ts(-MIN), ts(0))


def test_earlier_arrival_does_not_pull_the_deadline_back() -> None:
    eng = engine()
    feed(eng, [ev(at=0, arrival=4 * MIN), ev(at=MIN, arrival=MIN)])
    assert advance(eng, 4 * MIN + TIMEOUT_MS) == []
    assert len(advance(eng, 4 * MIN + TIMEOUT_MS + 1)) == 1


def test_idle_close_needs_no_new_event_and_spares_other_keys() -> None:
    eng = engine()
    feed(eng, [ev(at=0, user="a"), ev(at=3 * MIN, user="b")])
    [record] = advance(eng, TIMEOUT_MS + 1)
    assert record["user_id"] == "a"
    assert open_session(eng, ("default", "u", "b")).status == "open"


def test_idle_close_comes_out_of_another_keys_event() -> None:
    eng = engine()
    eng.apply(ev(at=0, user="a"))
    out = eng.apply(ev(at=TIMEOUT_MS + 1, user="b"))
    assert [(r["user_id"], r["close_reason"]) for r in out.records] == [("a", TIMEOUT)]


def test_idle_closes_come_out_in_deadline_order() -> None:
    eng = engine()
    feed(
        eng, [ev(at=0, user="late"), ev(at=-MIN, arrival=0, user="early"), ev(at=MIN, user="later")]
    )
    feed(eng, [ev(at=-2 * MIN, arrival=30 * 1000, user="late")])  # deadline 5:30
    records = advance(eng, 60 * MIN)
    assert [r["user_id"] for r in records] == ["early", "late", "later"]


def test_event_arriving_exactly_at_deadline_joins_the_open_session() -> None:
    eng = engine()
    records = feed(eng, [ev(at=0), ev(at=MIN, arrival=TIMEOUT_MS)])
    assert records == []
    assert open_session(eng).event_count == 2


def test_event_arriving_one_ms_after_deadline_finds_the_session_closed() -> None:
    eng = engine()
    eng.apply(ev(at=0))
    out = eng.apply(ev(at=MIN, arrival=TIMEOUT_MS + 1))
    [closed] = out.records  # idle close first, at the event's arrival
    assert (closed["close_reason"], closed["revision"], closed["event_count"]) == (TIMEOUT, 1, 1)
    reopened = open_session(eng)  # then rule 2: the late event reopens it
    assert reopened.session_id == closed["session_id"]
    assert (reopened.revision, reopened.event_count) == (2, 2)


def test_idle_closed_session_is_dated_at_its_deadline_not_when_noticed() -> None:
    eng = engine()
    eng.apply(ev(at=0))
    advance(eng, 12 * MIN)
    assert state_of(eng).closed[0].closed_at_ms == ev(at=TIMEOUT_MS + 1).time_ms


def test_advance_never_moves_the_clock_back() -> None:
    eng = engine()
    eng.apply(ev(at=0))
    advance(eng, 4 * MIN)
    advance(eng, MIN)
    assert eng.clock_ms == ev(at=4 * MIN).time_ms


def test_next_due_is_idle_deadline_then_grace_expiry_then_nothing() -> None:
    eng = engine()
    eng.apply(ev(at=0))
    assert eng.next_due_ms() == ev(at=TIMEOUT_MS + 1).time_ms
    advance(eng, TIMEOUT_MS + 1)
    assert eng.next_due_ms() == ev(at=TIMEOUT_MS + 1 + GRACE_MS).time_ms
    advance(eng, TIMEOUT_MS + 1 + GRACE_MS)
    assert eng.next_due_ms() is None
    assert USER_KEY not in eng.states
