"""Session and KeyState on their own: the span, the due time, and the stored state."""

from __future__ import annotations

import orjson
from helpers import (
    GRACE_MS,
    MIN,
    RULES,
    TIMEOUT_MS,
    USER_KEY,
    engine,
    ev,
    feed,
    roundtrip,
    state_of,
)

from pipeline.core.event import END, START, Event
from pipeline.core.session import ENDED, MAX_DURATION, TIMEOUT, KeyState, Session
from pipeline.store import codec


def session_of(*events: Event) -> Session:
    first, *rest = events
    session = Session.begin("s-1", first)
    session.add(first, RULES)
    for event in rest:
        session.add(event, RULES)
    return session


def test_open_span_is_start_minus_timeout_to_last_activity_plus_timeout() -> None:
    s = session_of(ev(at=0), ev(at=MIN))
    assert (s.floor_ms(RULES), s.reach_ms(RULES)) == (
        ev(at=-TIMEOUT_MS).time_ms,
        ev(at=MIN + TIMEOUT_MS).time_ms,
    )
    assert s.holds(s.floor_ms(RULES), RULES) and s.holds(s.reach_ms(RULES), RULES)
    assert not s.holds(s.floor_ms(RULES) - 1, RULES)
    assert not s.holds(s.reach_ms(RULES) + 1, RULES)


def test_span_floor_is_start_with_a_session_event() -> None:
    s = session_of(ev(at=MIN), ev(START, at=0, arrival=MIN))
    assert s.floor_ms(RULES) == ev(at=0).time_ms


def test_closed_span_reach_by_close_reason() -> None:
    for reason, reach in [(ENDED, MIN), (MAX_DURATION, MIN), (TIMEOUT, MIN + TIMEOUT_MS)]:
        s = session_of(ev(at=0), ev(at=MIN))
        s.close(reason, ev(at=2 * MIN).time_ms)
        assert s.reach_ms(RULES) == ev(at=reach).time_ms, reason
        assert s.end_ms == ev(at=MIN).time_ms


def test_idle_deadline_is_latest_arrival_plus_timeout() -> None:
    s = session_of(ev(at=0, arrival=MIN), ev(at=-MIN, arrival=3 * MIN), ev(at=0, arrival=2 * MIN))
    assert s.idle_deadline_ms(RULES) == ev(at=3 * MIN + TIMEOUT_MS).time_ms


def test_reopen_clears_the_close() -> None:
    s = session_of(ev(at=0))
    s.close(TIMEOUT, ev(at=TIMEOUT_MS + 1).time_ms)
    s.reopen()
    assert (s.status, s.close_reason, s.end_ms, s.closed_at_ms) == ("open", None, None, None)


def test_key_state_due_is_the_earliest_of_idle_close_and_grace_expiry() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(END, at=MIN), ev(at=2 * MIN, arrival=3 * MIN)])
    state = state_of(eng)
    # open: idle at 3 + 5 min (+1 ms); closed at 1 min: grace ends at 16 min
    assert state.next_due_ms(RULES) == ev(at=3 * MIN + TIMEOUT_MS + 1).time_ms
    state.open = None
    assert state.next_due_ms(RULES) == ev(at=MIN + GRACE_MS).time_ms
    assert KeyState(USER_KEY).next_due_ms(RULES) is None


def _rich_state() -> KeyState:
    """An open session and a closed one, with every field set."""
    eng = engine()
    feed(
        eng,
        [
            ev(START, at=0, id="a", user_name="Ann", data={"env": {"os": "linux"}, "n": 1}),
            ev(
                "error",
                at=MIN,
                id="b",
                source="checkout",
                message="boom",
                value=1.5,
                partition=2,
                offset=7,
            ),
            ev("heartbeat", at=2 * MIN),
            ev(at=MIN, id="b"),  # a duplicate
            ev(END, at=3 * MIN, id="c"),
            ev(at=4 * MIN, id="d", value=3, data={"n": 2}),
            ev(at=3 * MIN + 30 * 1000, arrival=4 * MIN + 1, index=2),
        ],
    )
    state = state_of(eng)
    assert state.open is not None and len(state.closed) == 1
    return state


def test_key_state_round_trips_through_orjson() -> None:
    state = _rich_state()
    again = roundtrip(state)
    assert again == state
    assert codec.to_state(again) == orjson.loads(orjson.dumps(codec.to_state(state)))


def test_records_are_the_same_after_a_round_trip() -> None:
    state = _rich_state()
    again = roundtrip(state)
    assert [s.to_record() for s in again.sessions()] == [s.to_record() for s in state.sessions()]


def test_a_round_tripped_session_goes_on_like_the_original() -> None:
    state = _rich_state()
    again = roundtrip(state)
    assert state.open is not None and again.open is not None
    later = [ev(at=4 * MIN + 10 * 1000, id=str(n)) for n in range(RULES.max_events_per_session)]
    later.append(ev(at=-MIN, arrival=5 * MIN, id="early"))
    for event in later:
        state.open.add(event, RULES)
        again.open.add(event, RULES)
    assert codec.to_state(again.open) == codec.to_state(state.open)
    assert again.open.events_truncated


def test_empty_key_state() -> None:
    state = KeyState(USER_KEY)
    assert state.is_empty() and state.sessions() == []
    assert roundtrip(state) == state


def test_cached_heads_keep_no_serialization_buffer() -> None:
    # a head stays cached as long as its key is held in memory; orjson's results keep
    # their whole 4 KiB write buffer, so what is cached must not be one of them
    import tracemalloc

    states = [KeyState(USER_KEY, open=session_of(ev(at=i))) for i in range(200)]
    tracemalloc.start()
    try:
        for state in states:
            codec.row_head(state, [])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 200 * 1024, held
