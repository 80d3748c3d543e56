"""EventParser.parse: every rejection path at its boundary, clocks, batches, dead letters."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import parse
from pipeline.core.deadletter import dead_letter_record
from pipeline.core.event import Event, RejectCode, Rejection
from pipeline.core.parse import EventParser, EventSchema
from pipeline.core.rules import SessionRules
from pipeline.core.timefmt import format_ms

RULES = SessionRules()
SCHEMA = EventSchema.load()
ARRIVAL = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z
SKEW = RULES.max_future_skew_ms
AGE = RULES.max_event_age_ms


def ev(**fields: Any) -> dict[str, Any]:
    """A valid event; ``fields`` override or add (a value of ``...`` removes the field)."""
    base: dict[str, Any] = {"type": "usage", "timestamp": ARRIVAL - 1000, "user_id": "u1"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def run(value: bytes | None, rules: SessionRules = RULES) -> list[Event | Rejection]:
    return EventParser(rules, SCHEMA).parse(value, arrival_ms=ARRIVAL, partition=3, offset=41)


def one(value: bytes | None, rules: SessionRules = RULES) -> Event | Rejection:
    items = run(value, rules)
    assert len(items) == 1
    return items[0]


def ok(obj: Any, rules: SessionRules = RULES) -> Event:
    item = one(orjson.dumps(obj), rules)
    assert isinstance(item, Event), item
    return item


def rejected(value: bytes | None, code: RejectCode, rules: SessionRules = RULES) -> Rejection:
    item = one(value, rules)
    assert isinstance(item, Rejection), item
    assert item.code == code, item
    assert (item.partition, item.offset, item.index) == (3, 41, None)
    assert item.raw is value
    assert item.detail
    return item


def bad(obj: Any, code: RejectCode = RejectCode.INVALID_EVENT) -> Rejection:
    return rejected(orjson.dumps(obj), code)


def padded(obj: Any, size: int) -> bytes:
    """``obj`` as JSON padded with trailing whitespace to exactly ``size`` bytes."""
    raw = orjson.dumps(obj)
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


# -- a good event --------------------------------------------------------------------------


def test_minimal_event() -> None:
    e = ok(ev())
    assert (e.type, e.time_ms, e.arrival_ms) == ("usage", ARRIVAL - 1000, ARRIVAL)
    assert (e.project, e.user_id, e.session_id, e.id) == ("default", "u1", None, None)
    assert (e.user_name, e.source, e.message, e.value) == (None, None, None, None)
    assert (e.close, e.data, e.clamped) == (False, {}, False)
    assert (e.partition, e.offset, e.index) == (3, 41, None)
    assert e.key == ("default", "u", "u1")


def test_every_known_field_maps() -> None:
    e = ok(
        ev(
            type="heartbeat",
            session_id="abcdefgh-1234",
            id="evt-1",
            project="shop",
            user_name="Ada",
            source="checkout",
            message="paid",
            value=12.5,
            close=True,
            data={"browser": "firefox"},
        )
    )
    assert (e.type, e.project, e.user_id) == ("heartbeat", "shop", "u1")
    assert (e.session_id, e.id, e.user_name) == ("abcdefgh-1234", "evt-1", "Ada")
    assert (e.source, e.message, e.value, e.close) == ("checkout", "paid", 12.5, True)
    assert e.data == {"browser": "firefox"}
    assert e.key == ("shop", "s", "abcdefgh-1234")
    assert e.ends_session


def test_integer_value_stays_integer() -> None:
    assert ok(ev(value=7)).value == 7


def test_session_id_alone_is_an_identity() -> None:
    e = ok(ev(user_id=..., session_id="ABCDEFGH"))
    assert (e.user_id, e.session_id, e.manual) == (None, "ABCDEFGH", True)


def test_unknown_fields_go_into_data_and_data_keys_win() -> None:
    nested = {"os": "linux", "tags": [1, 2]}
    e = ok(ev(browser="ff", env=nested, data={"browser": "mine", "x": 1}))
    assert e.data == {"browser": "mine", "x": 1, "env": nested}
    assert list(e.data) == ["browser", "x", "env"]


def test_unknown_fields_without_data() -> None:
    e = ok(ev(**{"@user": {"identity": "u1"}, "build": 17}))
    assert e.data == {"@user": {"identity": "u1"}, "build": 17}


# -- invalid_json ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_no_value_is_invalid_json(value: bytes | None) -> None:
    rejected(value, RejectCode.INVALID_JSON)


@pytest.mark.parametrize(
    "value",
    [b"{", b"not json", b'{"type": "x",}', b"NaN", b'{"value": Infinity}', b"\xef\xbb\xbf{}"],
    ids=["truncated", "text", "trailing-comma", "nan", "infinity", "utf8-bom"],
)
def test_not_json_is_invalid_json(value: bytes) -> None:
    rej = rejected(value, RejectCode.INVALID_JSON)
    assert "JSON" in rej.detail


def test_non_utf8_bytes_are_invalid_json_and_base64_in_the_dead_letter() -> None:
    value = b'{"type":"usage","timestamp":1,"user_id":"caf\xe9"}'  # Latin-1, not UTF-8
    rej = rejected(value, RejectCode.INVALID_JSON)
    record = dead_letter_record(rej, topic="events", timestamp_ms=ARRIVAL, key=b"u1")
    assert record["value_encoding"] == "base64"
    assert isinstance(record["value"], str)
    assert base64.b64decode(record["value"]) == value
    assert record["key"] == "u1"
    assert "key_encoding" not in record
    orjson.dumps(record)


# -- invalid_event: top level ------------------------------------------------------------


@pytest.mark.parametrize("value", [b"42", b'"event"', b"null", b"true", b"1.5"])
def test_top_level_not_object_nor_array(value: bytes) -> None:
    rej = rejected(value, RejectCode.INVALID_EVENT)
    assert "object" in rej.detail


def test_empty_array_is_invalid_event() -> None:
    rej = rejected(b"[]", RejectCode.INVALID_EVENT)
    assert "empty" in rej.detail


# -- too_large -------------------------------------------------------------------------------


SMALL = SessionRules(max_event_bytes=256)


def test_single_record_exactly_at_the_size_limit_passes() -> None:
    value = padded(ev(), SMALL.max_event_bytes)
    assert len(value) == 256
    assert isinstance(one(value, SMALL), Event)


def test_single_record_one_byte_over_the_size_limit_is_too_large() -> None:
    value = padded(ev(), SMALL.max_event_bytes + 1)
    rej = rejected(value, RejectCode.TOO_LARGE, SMALL)
    assert "257 bytes" in rej.detail and "256" in rej.detail


def test_oversized_non_json_is_too_large_not_invalid_json() -> None:
    rejected(b"x" * 257, RejectCode.TOO_LARGE, SMALL)


def test_batch_record_may_exceed_the_per_event_limit() -> None:
    value = orjson.dumps([ev(id=f"e{i}") for i in range(20)])
    assert len(value) > SMALL.max_event_bytes
    items = run(b"\n  " + value, SMALL)
    assert len(items) == 20 and all(isinstance(i, Event) for i in items)


def _batch_of_size(size: int, rules: SessionRules) -> bytes:
    element = orjson.dumps(ev())
    count = (size - 2) // (len(element) + 1)
    body = b"[" + b",".join([element] * count) + b"]"
    return body + b" " * (size - len(body))


def test_batch_record_exactly_at_the_batch_limit_passes() -> None:
    rules = SessionRules(max_event_bytes=64)
    value = _batch_of_size(64 * parse.BATCH_SIZE_FACTOR, rules)
    assert len(value) == 64_000
    items = run(value, rules)
    assert items and all(isinstance(i, Event) for i in items)


def test_batch_record_one_byte_over_the_batch_limit_is_too_large_as_a_whole() -> None:
    rules = SessionRules(max_event_bytes=64)
    value = _batch_of_size(64 * parse.BATCH_SIZE_FACTOR + 1, rules)
    rej = rejected(value, RejectCode.TOO_LARGE, rules)
    assert "batch" in rej.detail


def _element_of_size(size: int) -> dict[str, Any]:
    element = ev(user_id="")
    element["user_id"] = "u" * (size - len(orjson.dumps(element)))
    assert len(orjson.dumps(element)) == size
    return element


def test_batch_element_exactly_at_the_limit_passes_one_byte_over_is_too_large() -> None:
    at, over = _element_of_size(256), _element_of_size(257)
    items = run(orjson.dumps([at, over]), SMALL)
    assert isinstance(items[0], Event)
    rej = items[1]
    assert isinstance(rej, Rejection)
    assert (rej.code, rej.index, rej.raw) == (RejectCode.TOO_LARGE, 1, orjson.dumps(over))
    assert "batch element 1" in rej.detail


def test_batch_element_size_is_measured_compact() -> None:
    # Whitespace in the record does not count against an element.
    element = _element_of_size(256)
    spaced = json.dumps([element], indent=8).encode()
    items = run(spaced, SMALL)
    assert isinstance(items[0], Event)


# -- no_identity -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": ...},
        {"user_id": ""},
        {"user_id": None},
        {"user_id": "", "session_id": ""},
        {"user_id": None, "session_id": None},
        {"user_id": ..., "type": 5, "timestamp": ...},  # identity is checked first
    ],
    ids=["absent", "empty", "null", "both-empty", "both-null", "before-schema"],
)
def test_no_identity(fields: dict[str, Any]) -> None:
    rej = bad(ev(**fields), RejectCode.NO_IDENTITY)
    assert rej.detail == "event has neither user_id nor session_id; set one of them"


@pytest.mark.parametrize("user_id", [123, 0, False, ["u"], {"id": "u"}])
def test_identity_of_the_wrong_type_is_invalid_event(user_id: Any) -> None:
    rej = bad(ev(user_id=user_id))
    assert "user_id" in rej.detail


def test_empty_user_id_beside_a_session_id_is_invalid_event() -> None:
    rej = bad(ev(user_id="", session_id="abcdefgh"))
    assert "user_id" in rej.detail


# -- invalid_event: schema ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_id", "valid"),
    [
        ("a" * 7, False),
        ("a" * 8, True),
        ("A1b2-C3d" * 12 + "abcd", True),  # 100
        ("a" * 101, False),
        ("abcd_efgh", False),
        ("abcdefgh\n", False),
        ("abcd efgh", False),
        ("abcdéfgh", False),
        ("0123456789abcdef0123456789abcdef", True),
    ],
)
def test_session_id_format(session_id: str, valid: bool) -> None:
    obj = ev(user_id=..., session_id=session_id)
    if valid:
        assert ok(obj).session_id == session_id
    else:
        assert "session_id" in bad(obj).detail


@pytest.mark.parametrize(
    ("field", "good", "too_long"),
    [("type", 100, 101), ("user_id", 256, 257), ("id", 100, 101), ("project", 100, 101)],
)
def test_string_length_limits(field: str, good: int, too_long: int) -> None:
    assert isinstance(ok(ev(**{field: "x" * good})), Event)
    assert field in bad(ev(**{field: "x" * too_long})).detail


@pytest.mark.parametrize("field", ["type", "id", "project"])
def test_empty_strings_are_invalid(field: str) -> None:
    assert field in bad(ev(**{field: ""})).detail


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({"type": ...}, "type"),
        ({"timestamp": ...}, "timestamp"),
        ({"type": 5}, "type"),
        ({"value": True}, "value"),
        ({"value": "12"}, "value"),
        ({"close": "yes"}, "close"),
        ({"close": 1}, "close"),
        ({"data": [1, 2]}, "data"),
        ({"data": None}, "data"),
        ({"user_name": 5}, "user_name"),
        ({"source": None}, "source"),
        ({"message": {"text": "x"}}, "message"),
        ({"project": None}, "project"),
        ({"sent_at": True}, "sent_at"),
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
    ],
)
def test_schema_violations_name_the_field(fields: dict[str, Any], mentions: str) -> None:
    rej = bad(ev(**fields))
    assert mentions in rej.detail
    assert rej.detail.startswith("invalid event: event")


# -- timestamps ------------------------------------------------------------------------------


def test_rfc3339_with_offset() -> None:
    # 11:59:30+02:00 is 09:59:30Z, 30 s before arrival
    assert ok(ev(timestamp="2025-11-27T11:59:30+02:00")).time_ms == ARRIVAL - 30_000


def test_rfc3339_utc_with_millis() -> None:
    assert ok(ev(timestamp="2025-11-27T09:59:59.250Z")).time_ms == ARRIVAL - 750


def test_epoch_ms_integer() -> None:
    assert ok(ev(timestamp=ARRIVAL - 12_345)).time_ms == ARRIVAL - 12_345


def test_integral_float_timestamp_is_epoch_ms() -> None:
    assert ok(ev(timestamp=float(ARRIVAL - 5))).time_ms == ARRIVAL - 5


@pytest.mark.parametrize("stamp", ["2025-11-27T09:59:30", "2025-11-27T09:59:30.000"])
def test_naive_timestamp_is_rejected(stamp: str) -> None:
    rej = bad(ev(timestamp=stamp))
    assert "timestamp" in rej.detail and "2025-11-27T09:59:30" in rej.detail


def test_naive_timestamp_detail_asks_for_an_offset() -> None:
    assert "offset" in bad(ev(timestamp="2025-11-27T09:59:30.000")).detail


@pytest.mark.parametrize("stamp", [True, False])
def test_boolean_timestamp_is_rejected(stamp: bool) -> None:
    assert "timestamp" in bad(ev(timestamp=stamp)).detail


@pytest.mark.parametrize("stamp", ["yesterday", "", "2025-11-27", "2025-13-45T10:00:00Z"])
def test_unparseable_timestamp_is_rejected(stamp: str) -> None:
    assert "timestamp" in bad(ev(timestamp=stamp)).detail


def test_sent_at_corrects_the_client_clock() -> None:
    # The client clock is one hour behind: sent at (its) 08:59:58, happened 5 s earlier.
    client_sent = ARRIVAL - 3_600_000 - 2_000
    e = ok(ev(timestamp=client_sent - 5_000, sent_at=client_sent))
    assert e.time_ms == ARRIVAL - 5_000
    assert not e.clamped


def test_sent_at_as_rfc3339() -> None:
    e = ok(ev(timestamp="2025-11-27T12:00:00+02:00", sent_at="2025-11-27T12:00:10+02:00"))
    assert e.time_ms == ARRIVAL - 10_000


def test_sent_at_brings_a_future_event_back() -> None:
    # The client clock is a day ahead: uncorrected, the event would be clamped.
    ahead = 86_400_000
    e = ok(ev(timestamp=ARRIVAL + ahead - 100, sent_at=ARRIVAL + ahead))
    assert (e.time_ms, e.clamped) == (ARRIVAL - 100, False)


@pytest.mark.parametrize("sent_at", ["", "soon", "2025-11-27T10:00:00"])
def test_bad_sent_at_is_rejected(sent_at: str) -> None:
    rej = bad(ev(sent_at=sent_at))
    assert "sent_at" in rej.detail


def test_batch_elements_with_different_sent_at() -> None:
    items = run(
        orjson.dumps(
            [
                ev(timestamp=1_000, sent_at="1970-01-01T00:00:02Z"),
                ev(timestamp=1_000, sent_at="1970-01-01T00:00:02Z"),
                ev(timestamp=1_000, sent_at="1970-01-01T00:00:03Z"),
                ev(timestamp=1_000, sent_at=""),
            ]
        )
    )
    times = [i.time_ms if isinstance(i, Event) else i.code for i in items]
    assert times == [ARRIVAL - 1_000, ARRIVAL - 1_000, ARRIVAL - 2_000, RejectCode.INVALID_EVENT]


# -- clock skew and age ------------------------------------------------------------------


def test_future_skew_exactly_at_the_limit_is_kept() -> None:
    e = ok(ev(timestamp=ARRIVAL + SKEW))
    assert (e.time_ms, e.clamped) == (ARRIVAL + SKEW, False)


def test_future_skew_one_ms_over_the_limit_is_clamped_to_arrival() -> None:
    e = ok(ev(timestamp=ARRIVAL + SKEW + 1))
    assert (e.time_ms, e.clamped) == (ARRIVAL, True)


def test_far_future_is_clamped() -> None:
    e = ok(ev(timestamp=253_402_300_799_999))  # 9999-12-31T23:59:59.999Z
    assert (e.time_ms, e.clamped) == (ARRIVAL, True)


def test_timestamp_past_year_9999_is_invalid() -> None:
    # SPEC v1.1 section 2: a timestamp outside the years 1970-9999 is invalid_event.
    r = bad(ev(timestamp=10**19), RejectCode.INVALID_EVENT)
    assert "1970-9999" in r.detail


def test_zero_skew_allowed() -> None:
    rules = SessionRules(max_future_skew_ms=0)
    assert ok(ev(timestamp=ARRIVAL), rules).clamped is False
    assert ok(ev(timestamp=ARRIVAL + 1), rules).clamped is True


def test_age_exactly_at_the_limit_is_kept() -> None:
    assert ok(ev(timestamp=ARRIVAL - AGE)).time_ms == ARRIVAL - AGE


def test_age_one_ms_over_the_limit_is_too_old() -> None:
    rej = bad(ev(timestamp=ARRIVAL - AGE - 1), RejectCode.TOO_OLD)
    assert format_ms(ARRIVAL - AGE - 1) in rej.detail
    assert "max_event_age" in rej.detail


def test_age_is_measured_after_sent_at_correction() -> None:
    # Timestamp a week old on a client clock a week behind: fine.
    week = 7 * 86_400_000
    assert ok(ev(timestamp=ARRIVAL - week - 10, sent_at=ARRIVAL - week)).time_ms == ARRIVAL - 10
    # A fresh timestamp whose sent_at says it was sent a week later: too old.
    rej = bad(ev(timestamp=ARRIVAL, sent_at=ARRIVAL + week), RejectCode.TOO_OLD)
    assert "sent_at" in rej.detail


def test_absurdly_old_epoch_is_out_of_range() -> None:
    # SPEC v1.1 section 2: a timestamp before 1970 is invalid_event.
    rej = bad(ev(timestamp=-(10**18)), RejectCode.INVALID_EVENT)
    assert "1970-9999" in rej.detail


def test_event_time_before_year_1_is_too_old_with_a_readable_detail() -> None:
    # Both clocks in range, the correction by sent_at puts the event before year 1.
    rej = bad(ev(timestamp=0, sent_at=253_402_300_799_999), RejectCode.TOO_OLD)
    assert "event time -6005-11-28T10:00:00.001Z is" in rej.detail


# -- batches -------------------------------------------------------------------------------


def test_batch_with_mixed_good_and_bad_elements() -> None:
    elements: list[Any] = [
        ev(id="a"),
        "not an event",
        ev(user_id=...),
        ev(type=""),
        ev(timestamp=ARRIVAL - AGE - 1),
        [ev()],
        ev(id="f", session_id="abcdefgh", extra=1),
    ]
    items = run(orjson.dumps(elements))
    assert len(items) == len(elements)
    expected: list[RejectCode | None] = [
        None,
        RejectCode.INVALID_EVENT,
        RejectCode.NO_IDENTITY,
        RejectCode.INVALID_EVENT,
        RejectCode.TOO_OLD,
        RejectCode.INVALID_EVENT,
        None,
    ]
    for index, (item, code) in enumerate(zip(items, expected, strict=True)):
        assert (item.partition, item.offset, item.index) == (3, 41, index)
        if code is None:
            assert isinstance(item, Event)
        else:
            assert isinstance(item, Rejection)
            assert item.code == code
            assert item.raw == orjson.dumps(elements[index])
            assert item.detail.startswith(f"batch element {index}")
    last = items[-1]
    assert isinstance(last, Event)
    assert (last.id, last.data) == ("f", {"extra": 1})
    assert "string" in items[1].detail and "array" in items[5].detail  # type: ignore[union-attr]


def test_a_single_event_record_gives_index_none() -> None:
    assert ok(ev()).index is None
    assert bad(ev(type="")).index is None


# -- never raises ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_never_raise(value: bytes) -> None:
    for item in run(value, SMALL):
        assert isinstance(item, Event | Rejection)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={name: json_values | st.text(max_size=40) for name in sorted(parse.KNOWN_FIELDS)},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(event_like | json_values, max_size=4) | event_like)
def test_any_json_never_raises(doc: Any) -> None:
    items = run(orjson.dumps(doc))
    for item in items:
        assert isinstance(item, Event | Rejection)
        if isinstance(item, Rejection):
            orjson.dumps(dead_letter_record(item, topic="events", timestamp_ms=ARRIVAL, key=None))


# -- schema location -----------------------------------------------------------------------


def test_schema_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = orjson.loads(
        (Path(parse.__file__).resolve().parents[2] / "pipeline" / "schemas" / "event.schema.json").read_bytes()
    )
    schema["properties"]["type"]["maxLength"] = 3
    (tmp_path / "event.schema.json").write_bytes(orjson.dumps(schema))
    monkeypatch.setenv(parse.SCHEMA_DIR_ENV, str(tmp_path))
    assert parse.schema_dir() == tmp_path
    parser = EventParser(RULES)
    (refused,) = parser.parse(orjson.dumps(ev(type="usage")), arrival_ms=ARRIVAL, partition=3, offset=41)
    assert isinstance(refused, Rejection) and refused.code is RejectCode.INVALID_EVENT
    assert "type" in refused.detail
    (event,) = parser.parse(orjson.dumps(ev(type="log")), arrival_ms=ARRIVAL, partition=3, offset=41)
    assert isinstance(event, Event)


def test_missing_schema_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parse.SCHEMA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=parse.SCHEMA_DIR_ENV):
        EventParser(RULES)


def test_a_parser_compiles_its_schema_once_when_made() -> None:
    parser = EventParser(RULES, SCHEMA)
    assert parser.schema is SCHEMA
    assert isinstance(EventParser(RULES).schema, EventSchema)


# -- dead-letter records -----------------------------------------------------------------


def test_dead_letter_record_of_a_single_record() -> None:
    value = orjson.dumps(ev(user_id=...))
    rej = rejected(value, RejectCode.NO_IDENTITY)
    record = dead_letter_record(rej, topic="events", timestamp_ms=ARRIVAL, key=None)
    assert record == {
        "error": "no_identity",
        "detail": "event has neither user_id nor session_id; set one of them",
        "topic": "events",
        "partition": 3,
        "offset": 41,
        "timestamp": ARRIVAL,
        "key": None,
        "value": value.decode(),
    }
    assert orjson.loads(orjson.dumps(record)) == record


def test_dead_letter_record_of_a_batch_element() -> None:
    items = run(orjson.dumps([ev(), ev(type="")]))
    rej = items[1]
    assert isinstance(rej, Rejection)
    record = dead_letter_record(rej, topic="events", timestamp_ms=ARRIVAL, key="ключ".encode())
    assert (record["error"], record["index"], record["key"]) == ("invalid_event", 1, "ключ")
    assert orjson.loads(record["value"]) == ev(type="")  # type: ignore[arg-type]


def test_dead_letter_record_of_a_record_without_value() -> None:
    rej = rejected(None, RejectCode.INVALID_JSON)
    record = dead_letter_record(rej, topic="events", timestamp_ms=0, key=b"")
    assert (record["value"], record["key"]) == (None, "")
    assert "value_encoding" not in record and "index" not in record


def test_dead_letter_key_not_utf8_is_base64() -> None:
    rej = rejected(b"{", RejectCode.INVALID_JSON)
    record = dead_letter_record(rej, topic="t", timestamp_ms=5, key=b"\xff\x00\xfe")
    assert (record["key"], record["key_encoding"]) == ("/wD+", "base64")
    assert (record["value"], record["timestamp"]) == ("{", 5)
    assert "value_encoding" not in record
