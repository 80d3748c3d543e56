"""The append-only event log: what a store keeps instead of rewriting event lists."""

from __future__ import annotations

import random

import orjson
from helpers import earlier_head, earlier_head_fields
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.event import Event
from pipeline.core.rules import SessionRules
from pipeline.core.session import KeyState, Session
from pipeline.store import codec

RULES = SessionRules(max_events_per_session=3)
T0 = 1_767_225_600_000


def event(i: int, t: int, type_: str = "usage", with_id: bool = True) -> Event:
    return Event(type=type_, time_ms=t, arrival_ms=t, project="p", user_id="u",
                 id=f"e{i}" if with_id else None, offset=i)


@settings(max_examples=60, deadline=None)
@given(
    times=st.lists(st.integers(0, 50), min_size=1, max_size=25),
    cuts=st.lists(st.integers(0, 25), max_size=5),
    seed=st.integers(0, 1000),
)
def test_replaying_the_log_rebuilds_events_and_ids(times: list[int], cuts: list[int], seed: int) -> None:
    rng = random.Random(seed)
    session = Session.begin("s1", event(0, times[0]))
    stored: list[bytes] = []  # what a store would hold: the log, appended at each cut
    for i, t in enumerate(times):
        kind = rng.choice(["usage", "usage", "heartbeat", "error"])
        session.add(event(i, t, kind, with_id=rng.random() < 0.8), RULES)
        if i in cuts:
            stored += [orjson.dumps(item) for item in session.take_log()]
    stored += [orjson.dumps(item) for item in session.take_log()]

    rebuilt = codec.session_from_state(orjson.loads(orjson.dumps(codec.to_state(session, with_log=False))))
    rebuilt.replay_log([orjson.loads(item) for item in stored])
    assert rebuilt.events == session.events
    assert list(rebuilt.ids) == list(session.ids)
    assert rebuilt.to_record() == session.to_record()
    assert len(session.events) <= RULES.max_events_per_session


def test_state_without_log_leaves_out_events_and_ids() -> None:
    session = Session.begin("s1", event(0, 10))
    session.add(event(0, 10), RULES)
    state = codec.to_state(session, with_log=False)
    assert "ev" not in state and "ids" not in state
    assert session.take_log() == [[10, "e0", "usage", None, None, None, 0, 0, 1]]
    assert session.take_log() == []


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), st.sampled_from(
    ["usage", "heartbeat", "session", "sessionend", "error"])), min_size=1, max_size=40))
def test_cached_head_always_equals_a_fresh_serialization(steps: list[tuple[int, int, str]]) -> None:
    from pipeline.core.engine import Sessionizer

    rules = SessionRules(inactivity_timeout_ms=5, reopen_grace_ms=20, max_session_duration_ms=30,
                         max_events_per_session=3)
    engine = Sessionizer(rules)
    for n, (user, t, kind) in enumerate(steps):
        ev = Event(type=kind, time_ms=t, arrival_ms=n + 1, project="p", user_id=f"u{user}",
                   id=f"e{n % 7}", offset=n)
        engine.apply(ev)
        for state in engine.states.values():
            fresh = orjson.loads(orjson.dumps(codec.to_state(state, with_log=False)))
            head = orjson.loads(earlier_head(state))
            assert codec.to_state(codec.key_state_from_state(head), with_log=False) == fresh
            # filed under its key, written without it
            keyless = orjson.loads(earlier_head(state, with_key=False))
            assert "k" not in keyless
            assert codec.to_state(codec.key_state_from_state(keyless, state.key), with_log=False) == fresh
            # the row head the Redis store writes, filed under its key
            rows = orjson.loads(codec.row_head(state, [["1.0", 0]] * len(state.sessions())))
            assert codec.to_state(codec.key_state_from_row(rows, state.key), with_log=False) == fresh
            for session, row in zip(state.sessions(), [head["o"]] * (state.open is not None) + head["c"],
                                    strict=True):
                assert list(codec.to_state(session, with_log=False)) == list(codec.HEAD_FIELDS)
                assert dict(zip(codec.HEAD_FIELDS, row, strict=True)) == orjson.loads(
                    orjson.dumps(codec.to_state(session, with_log=False)))


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(st.tuples(
    st.integers(0, 30),
    st.dictionaries(st.sampled_from(["os", "browser", "path", "ip"]), st.integers(0, 3), max_size=4),
), min_size=1, max_size=30))
def test_data_keeps_the_earliest_value_of_each_name(steps: list[tuple[int, dict[str, int]]]) -> None:
    """``data`` holds, per name, the value of the earliest event that carried it (the
    first added among equal times), however the events arrive."""
    session = Session.begin("s1", event(0, steps[0][0]))
    expected: dict[str, tuple[int, int]] = {}
    for i, (t, data) in enumerate(steps):
        ev = event(i, t)
        ev.data = dict(data)
        session.add(ev, RULES)
        for name, value in data.items():
            if name not in expected or t < expected[name][0]:
                expected[name] = (t, value)
    assert session.data == {name: value for name, (_, value) in expected.items()}
    assert session.data_ms == {name: t for name, (t, _) in expected.items()}
    rebuilt = codec.session_from_state(orjson.loads(orjson.dumps(earlier_head_fields(session))))
    rebuilt.replay_log(orjson.loads(orjson.dumps(session.take_log())))
    assert rebuilt.data == session.data and rebuilt.data_ms == session.data_ms


def test_a_row_head_names_only_what_its_key_does_not_say() -> None:
    """A row leaves out the key's project and a user key's user id, and keeps a session
    whose names differ from its key's (a client session id key with a user) as it is."""
    session = Session(
        session_id="c1", project="shop", manual=True, start_ms=T0, last_activity_ms=T0 + 5,
        last_arrival_ms=T0 - 3, user_id="alice", user_id_ms=T0 + 1, has_start=True,
        status="closed", close_reason="ended", end_ms=T0 + 5, closed_at_ms=T0 + 9, revision=3,
        event_count=2, type_counts={"session": 1, "sessionend": 1}, has_error=True,
        events_truncated=True, seq=4,
    )
    fresh = codec.to_state(session, with_log=False)
    for key in [("shop", "s", "c1"), ("shop", "u", "alice"), ("blog", "u", "bob")]:
        state = KeyState(key=key, closed=[session])
        row = orjson.loads(codec.row_head(state, [["1.0", 2]]))
        again = codec.key_state_from_row(row, key)
        assert again.open is None and codec.to_state(again.closed[0], with_log=False) == fresh
        written = row[1][0]
        assert (written[1] == 0) == (key[0] == "shop")
        assert (written[5] == 0) == (key[1:] == ("u", "alice"))
        assert row[2] == [["1.0", 2]]
    # a user name and user id never set stay unset; an open session has no end
    bare = Session(session_id="s2", project="shop", manual=False, start_ms=T0, last_activity_ms=T0,
                   last_arrival_ms=T0)
    row = orjson.loads(codec.row_head(KeyState(key=("shop", "u", "x"), open=bare), []))
    assert codec.to_state(codec.key_state_from_row(row, ("shop", "u", "x")).open, with_log=False) \
        == codec.to_state(bare, with_log=False)
    assert codec.head_has_open(codec.row_head(KeyState(key=("shop", "u", "x"), open=bare), []))
    assert not codec.head_has_open(codec.row_head(KeyState(key=("shop", "s", "c1"), closed=[session]), []))
    assert codec.head_has_open(earlier_head(KeyState(key=("shop", "u", "x"), open=bare), with_key=False))
    # and a row is about a third smaller than the head earlier versions wrote
    state = KeyState(key=("shop", "u", "x"), open=bare)
    assert len(codec.row_head(state, [])) < len(earlier_head(state, [], with_key=False)) * 2 // 3
