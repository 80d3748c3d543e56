"""EventParser and the SPEC v1.1 input limits: depth, timestamp range, field lengths,
and hostile bytes, each a rejection with a reason and never an exception."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.deadletter import dead_letter_record
from pipeline.core.event import Event, RejectCode, Rejection
from pipeline.core.limits import MAX_JSON_DEPTH, MAX_TIME_MS, deeper_than_limit
from pipeline.core.parse import EventParser, EventSchema
from pipeline.core.rules import SessionRules

ARRIVAL = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z
RULES = SessionRules()
#: Rules that keep events of any age, so a timestamp's range is what decides.
AGELESS = SessionRules(max_event_age_ms=10**15)


#: The schema with its quick check, and without (every event through the compiled validator).
SCHEMAS = {"quick": EventSchema.load(), "compiled": EventSchema.load(quick=False)}
#: The schema the running test parses with (set by ``_both_paths``).
_schema: list[EventSchema] = [SCHEMAS["quick"]]


@pytest.fixture(params=sorted(SCHEMAS), autouse=True)
def _both_paths(request: pytest.FixtureRequest) -> None:
    _schema[0] = SCHEMAS[request.param]


def run(value: bytes | None, rules: SessionRules = RULES) -> list[Event | Rejection]:
    return EventParser(rules, _schema[0]).parse(value, arrival_ms=ARRIVAL, partition=3, offset=41)


def ev(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "usage", "timestamp": ARRIVAL - 1000, "user_id": "u1"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def nested(depth: int) -> Any:
    """``depth`` levels of objects: ``nested(1)`` is ``{}``."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def only(items: list[Event | Rejection]) -> Event | Rejection:
    assert len(items) == 1
    return items[0]


def rejection(value: bytes | None, code: RejectCode, rules: SessionRules = RULES) -> Rejection:
    item = only(run(value, rules))
    assert isinstance(item, Rejection), item
    assert item.code == code, item
    assert item.raw is value
    assert item.detail
    return item


# -- nesting depth -------------------------------------------------------------


def test_an_event_64_levels_deep_passes_and_65_is_invalid() -> None:
    # The event object is level 1, its data level 2: data nested 63 deep is level 64.
    item = only(run(orjson.dumps(ev(data=nested(MAX_JSON_DEPTH - 1)))))
    assert isinstance(item, Event)
    r = rejection(orjson.dumps(ev(data=nested(MAX_JSON_DEPTH))), RejectCode.INVALID_EVENT)
    assert "nested deeper than 64" in r.detail


def test_unknown_fields_count_like_data() -> None:
    rejection(orjson.dumps(ev(extra=[nested(MAX_JSON_DEPTH)])), RejectCode.INVALID_EVENT)


@pytest.mark.parametrize("depth", [255, 300, 1020])
def test_deeper_than_orjson_writes_is_invalid_event(depth: int) -> None:
    value = b'{"type":"usage","timestamp":1,"user_id":"u","data":' + b'{"a":' * depth
    value += b"1" + b"}" * depth + b"}"
    r = rejection(value, RejectCode.INVALID_EVENT)
    assert "nested deeper" in r.detail
    assert orjson.dumps(dead_letter_record(r, topic="events", timestamp_ms=ARRIVAL, key=None))


def test_deeper_than_orjson_reads_is_invalid_json() -> None:
    rejection(b"[" * 2000 + b"]" * 2000, RejectCode.INVALID_JSON)


def test_a_deep_element_of_a_batch_is_rejected_alone() -> None:
    deep = b'{"type":"usage","timestamp":1,"user_id":"u","data":' + b"[" * 300 + b"]" * 300 + b"}"
    mid = orjson.dumps(ev(data=nested(MAX_JSON_DEPTH)))  # writable, yet too deep
    good = orjson.dumps(ev(user_id="g"))
    value = b"[" + b",".join([good, deep, mid, good]) + b"]"
    items = run(value)
    assert [type(i).__name__ for i in items] == ["Event", "Rejection", "Rejection", "Event"]
    deep_r, mid_r = items[1], items[2]
    assert isinstance(deep_r, Rejection) and isinstance(mid_r, Rejection)
    assert (deep_r.code, deep_r.index, deep_r.raw) == (RejectCode.INVALID_EVENT, 1, value)
    assert (mid_r.code, mid_r.index, mid_r.raw) == (RejectCode.INVALID_EVENT, 2, mid)


def test_brackets_inside_strings_do_not_count() -> None:
    event = ev(message="{[" * 500, data={"x": "]}" * 500})
    assert isinstance(only(run(orjson.dumps(event))), Event)
    batch = [ev(user_id=f"u{i}", data={"list": [{"k": [1]}]}) for i in range(50)]
    assert all(isinstance(i, Event) for i in run(orjson.dumps(batch)))


@given(st.integers(min_value=1, max_value=200), st.sampled_from(["{", "["]))
def test_depth_check_is_exact(depth: int, kind: str) -> None:
    value: Any = {} if kind == "{" else []
    for _ in range(depth - 1):
        value = {"k": value} if kind == "{" else [value]
    raw = orjson.dumps(value)
    assert deeper_than_limit(value, raw) is (depth > MAX_JSON_DEPTH)
    assert deeper_than_limit(value) is (depth > MAX_JSON_DEPTH)


# -- timestamp range -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "0001-01-01T00:00:00+01:00"),
        ("timestamp", "1969-12-31T23:59:59.999Z"),
        ("timestamp", "9999-12-31T23:59:59.999-00:01"),
        ("timestamp", -1),
        ("timestamp", MAX_TIME_MS + 1),
        ("timestamp", 10**19),
        ("timestamp", 1e20),
        ("sent_at", "0001-01-01T00:00:00+01:00"),
        ("sent_at", -1),
        ("sent_at", 10**19),
    ],
)
def test_a_time_outside_1970_to_9999_is_invalid(field: str, value: object) -> None:
    r = rejection(orjson.dumps(ev(**{field: value})), RejectCode.INVALID_EVENT, AGELESS)
    assert "1970-9999" in r.detail
    assert field in r.detail


@pytest.mark.parametrize("value", [0, "1970-01-01T00:00:00Z", "1970-01-01T01:00:00+01:00"])
def test_the_epoch_itself_is_in_range(value: object) -> None:
    item = only(run(orjson.dumps(ev(timestamp=value)), AGELESS))
    assert isinstance(item, Event) and item.time_ms == 0


def test_the_last_millisecond_of_9999_is_in_range_and_clamped() -> None:
    item = only(run(orjson.dumps(ev(timestamp="9999-12-31T23:59:59.999Z"))))
    assert isinstance(item, Event) and (item.time_ms, item.clamped) == (ARRIVAL, True)


# -- field lengths ---------------------------------------------------------------


def test_user_name_up_to_256_characters() -> None:
    assert isinstance(only(run(orjson.dumps(ev(user_name="n" * 256)))), Event)
    r = rejection(orjson.dumps(ev(user_name="n" * 257)), RejectCode.INVALID_EVENT)
    assert "user_name" in r.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_id", "u" * 257),
        ("user_id", "u" * 60_000),
        ("type", "t" * 101),
        ("type", ""),
        ("id", "i" * 101),
        ("project", "p" * 101),
        ("session_id", "s" * 101),
    ],
)
def test_fields_over_their_length_are_invalid(field: str, value: str) -> None:
    rejection(orjson.dumps(ev(**{field: value})), RejectCode.INVALID_EVENT)


def test_a_100_kb_user_id_is_too_large() -> None:
    rejection(orjson.dumps(ev(user_id="u" * 100_000)), RejectCode.TOO_LARGE)


# -- hostile bytes and nulls -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"\xff\xfe{}", RejectCode.INVALID_JSON),
        (b'{"type":"usage","timestamp":1,"user_id":"\xc3\x28"}', RejectCode.INVALID_JSON),
        (bytes(range(32)) * 10, RejectCode.INVALID_JSON),
        (b'{"type":"usage","timestamp":1,"user_id":"a\x01b"}', RejectCode.INVALID_JSON),
        (b"\x00" * 200_000, RejectCode.TOO_LARGE),
        (b"null", RejectCode.INVALID_EVENT),
        (b'{"type":null,"timestamp":1,"user_id":"u"}', RejectCode.INVALID_EVENT),
        (b'{"type":"usage","timestamp":null,"user_id":"u"}', RejectCode.INVALID_EVENT),
        (b'{"type":"usage","timestamp":1,"user_id":null}', RejectCode.NO_IDENTITY),
        (b'{"type":"usage","timestamp":1,"user_id":"u","data":null}', RejectCode.INVALID_EVENT),
        (b'{"type":"usage","timestamp":1,"user_id":"u","sent_at":null}', RejectCode.INVALID_EVENT),
    ],
)
def test_hostile_values_are_rejected_with_a_reason(value: bytes, code: RejectCode) -> None:
    rejection(value, code)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    items = run(value)
    assert items
    for item in items:
        if isinstance(item, Rejection):
            assert item.detail
            orjson.dumps(dead_letter_record(item, topic="events", timestamp_ms=ARRIVAL, key=None))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["type", "timestamp", "user_id", "session_id", "data", "sent_at", "x"]),
        children,
        max_size=6,
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_arbitrary_json_never_raises(doc: Any) -> None:
    try:
        value = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        return
    items = run(value, AGELESS)
    assert items
    assert len(items) == (len(doc) if type(doc) is list and doc else 1)
