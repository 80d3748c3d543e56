"""The append-only event log: what a store keeps instead of rewriting event lists."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.event import Event
from pipeline.core.rules import SessionRules
from pipeline.core.session import Session
from pipeline.store import codec

RULES = SessionRules(max_events_per_session=3)


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
            head = orjson.loads(codec.head_json(state))
            assert codec.to_state(codec.key_state_from_state(head), with_log=False) == fresh
            # filed under its key, written without it
            keyless = orjson.loads(codec.head_json(state, with_key=False))
            assert "k" not in keyless
            assert codec.to_state(codec.key_state_from_state(keyless, state.key), with_log=False) == fresh
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
    rebuilt = codec.session_from_state(orjson.loads(orjson.dumps(codec.head_fields(session))))
    rebuilt.replay_log(orjson.loads(orjson.dumps(session.take_log())))
    assert rebuilt.data == session.data and rebuilt.data_ms == session.data_ms
