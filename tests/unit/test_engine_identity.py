"""SPEC section 3: duplicates and determinism (session ids, same log -> same records)."""

from __future__ import annotations

import re

from helpers import (
    GRACE_MS,
    MIN,
    PROJECT,
    TIMEOUT_MS,
    USER_KEY,
    advance,
    engine,
    ev,
    feed,
    open_session,
    state_of,
)

from pipeline.core.engine import Record, auto_session_id
from pipeline.core.event import END, START, Event
from pipeline.store import codec

SID = "client-session-0001"
SID_KEY = (PROJECT, "s", SID)

# -- duplicates -------------------------------------------------------------------------


def test_duplicate_id_in_open_session_is_ignored_and_counted() -> None:
    eng = engine()
    eng.apply(ev(at=0, id="e1"))
    before = codec.to_state(open_session(eng))
    out = eng.apply(ev("error", at=2 * MIN, arrival=3 * MIN, id="e1", data={"k": 1}))
    assert out.records == [] and out.rejection is None
    after = codec.to_state(open_session(eng))
    assert after.pop("dc") == 1
    before.pop("dc")
    assert after == before  # no new activity, arrival, type, data or event


def test_duplicate_does_not_push_the_idle_deadline() -> None:
    eng = engine()
    feed(eng, [ev(at=0, id="e1"), ev(at=0, arrival=4 * MIN, id="e1")])
    [record] = advance(eng, TIMEOUT_MS + 1)
    assert (record["event_count"], record["duplicate_events"]) == (1, 1)


def test_each_duplicate_is_counted() -> None:
    eng = engine()
    feed(eng, [ev(at=0, id="e1"), ev(at=MIN, id="e2")] + [ev(at=2 * MIN, id="e1")] * 3)
    [record] = feed(eng, [ev(END, at=3 * MIN, id="e3")])
    assert (record["event_count"], record["duplicate_events"]) == (3, 3)


def test_duplicate_id_in_recently_closed_session_changes_nothing() -> None:
    eng = engine()
    feed(eng, [ev(at=0, id="e1"), ev(END, at=MIN, id="e2")])
    before = codec.to_state(state_of(eng))
    out = eng.apply(ev(at=30 * 1000, arrival=3 * MIN, id="e1"))
    assert out.records == [] and out.rejection is None
    assert codec.to_state(state_of(eng)) == before


def test_duplicate_id_does_not_reopen_an_idle_closed_session() -> None:
    eng = engine()
    eng.apply(ev(at=0, id="e1"))
    advance(eng, TIMEOUT_MS + 1)
    before = codec.to_state(state_of(eng))
    assert feed(eng, [ev(at=0, arrival=6 * MIN, id="e1")]) == []
    assert codec.to_state(state_of(eng)) == before


def test_duplicate_sessionend_of_closed_session_is_not_rejected() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(END, at=MIN, id="end-1")])
    out = eng.apply(ev(END, at=MIN, arrival=2 * MIN, id="end-1"))
    assert out.records == [] and out.rejection is None


def test_id_of_a_forgotten_session_is_new_again() -> None:
    eng = engine()
    feed(eng, [ev(at=0, id="e1"), ev(END, at=MIN)])
    advance(eng, MIN + GRACE_MS)
    feed(eng, [ev(at=MIN + GRACE_MS, id="e1")])
    assert open_session(eng).event_count == 1


def test_events_without_id_are_never_duplicates() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(at=0), ev(at=0)])
    session = open_session(eng)
    assert (session.event_count, session.duplicate_events) == (3, 0)


# -- determinism --------------------------------------------------------------------------


def test_auto_session_id_derives_from_key_and_first_event() -> None:
    eng = engine()
    first = ev(at=0, id="e1")
    [record] = feed(eng, [first, ev(at=MIN), ev(END, at=2 * MIN)])
    assert record["session_id"] == auto_session_id(USER_KEY, first)
    assert re.fullmatch(r"[0-9a-f]{32}", record["session_id"])


def test_auto_session_id_is_stable_across_releases() -> None:
    # pinned: a replay must produce the ids already published downstream
    assert auto_session_id(USER_KEY, ev(at=0)) == "39e90f7ee066bf95a2c7e8fd400ae7a0"
    assert auto_session_id(USER_KEY, ev(at=0, id="e1")) == "77bbe3bfea5b68fbd87561015f0dcc4c"


def test_auto_session_id_ignores_arrival_and_coordinates() -> None:
    a = ev(at=0, arrival=MIN, partition=1, offset=5, id="e1")
    b = ev(at=0, arrival=2 * MIN, partition=3, offset=9, id="e1")
    assert auto_session_id(USER_KEY, a) == auto_session_id(USER_KEY, b)


def test_auto_session_id_differs_by_project_user_and_first_event() -> None:
    base = auto_session_id(USER_KEY, ev(at=0))
    others = {
        auto_session_id(("shop", "u", "u1"), ev(at=0, project="shop")),
        auto_session_id((PROJECT, "u", "u2"), ev(at=0, user="u2")),
        auto_session_id(USER_KEY, ev(at=1)),
        auto_session_id(USER_KEY, ev("error", at=0)),
        auto_session_id(USER_KEY, ev(at=0, id="x")),
    }
    assert base not in others and len(others) == 5


def test_auto_session_id_comes_from_first_event_in_log_order_not_earliest() -> None:
    eng = engine()
    first = ev(at=2 * MIN)
    [record] = feed(eng, [first, ev(at=MIN, arrival=2 * MIN + 1), ev(END, at=3 * MIN)])
    assert record["session_id"] == auto_session_id(USER_KEY, first)


def test_manual_session_id_is_the_client_id() -> None:
    eng = engine()
    [record] = feed(eng, [ev(at=0, sid=SID), ev(END, at=MIN, sid=SID)])
    assert record["session_id"] == SID


def test_manual_id_still_remembered_gets_a_suffix() -> None:
    eng = engine()
    [first] = feed(eng, [ev(at=0, sid=SID), ev(END, at=MIN, sid=SID)])
    [second] = feed(eng, [ev(at=2 * MIN, sid=SID), ev(END, at=3 * MIN, sid=SID)])
    assert first["session_id"] == SID
    assert re.fullmatch(re.escape(SID) + r"-[0-9a-f]{8}", second["session_id"])
    assert second["revision"] == 1


def test_manual_id_is_the_client_id_again_once_forgotten() -> None:
    eng = engine()
    feed(eng, [ev(at=0, sid=SID), ev(END, at=MIN, sid=SID)])
    advance(eng, MIN + GRACE_MS)
    [again] = feed(eng, [ev(at=20 * MIN, sid=SID), ev(END, at=21 * MIN, sid=SID)])
    assert again["session_id"] == SID


def test_suffixed_manual_id_stays_within_100_chars() -> None:
    sid = "a" * 100
    eng = engine()
    feed(eng, [ev(at=0, sid=sid), ev(END, at=MIN, sid=sid)])
    [second] = feed(eng, [ev(at=2 * MIN, sid=sid), ev(END, at=3 * MIN, sid=sid)])
    assert len(second["session_id"]) == 100 and second["session_id"] != sid


def test_same_first_event_twice_gets_a_distinct_auto_id() -> None:
    eng = engine()
    # an auto `session` event never amends a closed session, so the same one
    # opens a second session while the first is remembered
    [first] = feed(eng, [ev(START, at=0), ev(END, at=MIN)])
    [second] = feed(eng, [ev(START, at=0, arrival=2 * MIN), ev(END, at=MIN, arrival=2 * MIN)])
    assert second["session_id"] == first["session_id"] + "-2"


def _scripted_log() -> list[Event]:
    return [
        ev(START, at=0, user="a", id="a1"),
        ev(at=10 * 1000, user="b"),
        ev(at=MIN, user="a", sid=SID),
        ev("heartbeat", at=2 * MIN, user="a"),
        ev(at=-MIN, arrival=3 * MIN, user="b"),
        ev(at=30 * MIN, user="b"),
        ev(at=4 * MIN, arrival=31 * MIN, user="b"),
        ev(END, at=32 * MIN, user="a", sid=SID),
        ev("error", at=33 * MIN, user="a", data={"browser": "x"}),
        ev(at=34 * MIN, user="a", id="a1"),
        ev(END, at=40 * MIN, user="a"),
    ]


def _replay(log: list[Event]) -> list[Record]:
    eng = engine()
    records = feed(eng, log)
    records.extend(advance(eng, 24 * 60 * MIN))
    return records


def test_same_log_twice_gives_same_records_in_same_order() -> None:
    first, second = _replay(_scripted_log()), _replay(_scripted_log())
    assert len(first) >= 4
    assert first == second


def test_nothing_remains_after_the_grace() -> None:
    eng = engine()
    feed(eng, _scripted_log())
    advance(eng, 24 * 60 * MIN)
    assert eng.states == {}
    assert eng.next_due_ms() is None
    changes = eng.take_changes()  # the store learns each key is gone
    assert changes == dict.fromkeys([(PROJECT, "u", "a"), (PROJECT, "u", "b"), SID_KEY])
