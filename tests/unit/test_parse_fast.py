"""parse_record's quick paths give exactly what the general code gives.

The hand-written check of the bundled event schema may only pass events the
compiled validator passes (everything else goes to the validator), the string
time shortcut in ``parse_timestamp_ms`` must agree with its general code (value or error), and
parse_record must give equal events and rejections (codes, details) with the
quick paths on and off.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.core import parse, timefmt
from pipeline.core.event import Event, Rejection
from pipeline.core.parse import parse_record
from pipeline.core.rules import SessionRules
from pipeline.core.timefmt import format_ms, parse_timestamp_ms

RULES = SessionRules()
ARRIVAL = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z
BUNDLED = Path(parse.__file__).resolve().parents[2] / "pipeline" / "schemas" / parse.EVENT_SCHEMA_FILE


@pytest.fixture(autouse=True)
def bundled_schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(parse.SCHEMA_DIR_ENV, raising=False)
    parse.reset_event_validator()
    yield
    parse.reset_event_validator()


def run(value: bytes, *, fast: bool) -> list[Event | Rejection]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parse, "FAST_PATHS", fast)
        return parse_record(value, arrival_ms=ARRIVAL, partition=3, offset=41, rules=RULES)


# -- objects near the schema -----------------------------------------------------------------

# Session id characters, then some that are not: _, space, newline, accented, a
# non-ASCII digit and letter, one outside the BMP (one code point, two UTF-16 units).
SESSION_ID_CHARS = string.ascii_letters + string.digits + "-"
ALPHABET = SESSION_ID_CHARS + "_ \n\té\u0663\u00df\U0001d7d8"


def text_of(lengths: tuple[int, ...], alphabet: str = ALPHABET) -> st.SearchStrategy[str]:
    return st.sampled_from(lengths).flatmap(
        lambda n: st.text(alphabet=alphabet, min_size=n, max_size=n)
    )


wrong = st.sampled_from(
    [None, True, False, 0, 1, -1, 1.5, 2.0, "", "x", [], [1], {}, {"a": 1}, 2**63 - 1]
)
stamp_texts = st.integers(-5 * 86_400_000, 5 * 86_400_000).flatmap(
    lambda delta: st.sampled_from(
        [
            format_ms(ARRIVAL + delta),
            format_ms(ARRIVAL + delta)[:-1] + "+00:00",
            format_ms(ARRIVAL + delta)[:-1] + "-04:00",
            format_ms(ARRIVAL + delta)[:-5] + "Z",
            format_ms(ARRIVAL + delta)[:-1],  # no offset
            format_ms(ARRIVAL + delta).lower(),
            " " + format_ms(ARRIVAL + delta),
            "yesterday",
            "",
        ]
    )
)
stamps = (
    st.integers(ARRIVAL - 5 * 86_400_000, ARRIVAL + 86_400_000)
    | st.integers(-(2**63), 2**63 - 1)
    | stamp_texts
    | st.integers(ARRIVAL - 86_400_000, ARRIVAL).map(float)
)
any_text = st.text(alphabet=ALPHABET, max_size=5)
int64 = st.integers(-(2**63), 2**63 - 1)
#: Per known field: values the schema accepts (boundary lengths included), and
#: values it refuses (wrong kinds, null, lengths just outside, wrong characters).
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "type": (
        text_of((1, 2, 8, 99, 100)) | st.sampled_from(["usage", "heartbeat"]),
        text_of((0, 101)),
    ),
    "timestamp": (stamps, st.floats(allow_nan=False, allow_infinity=False)),
    "user_id": (text_of((1, 2, 255, 256)) | st.just("u1"), text_of((0, 257))),
    "session_id": (
        text_of((8, 9, 99, 100), SESSION_ID_CHARS),
        text_of((0, 1, 7, 101), SESSION_ID_CHARS) | text_of((8, 9, 100)),
    ),
    "id": (text_of((1, 2, 99, 100)), text_of((0, 101))),
    "project": (text_of((1, 2, 99, 100)) | st.just("shop"), text_of((0, 101))),
    "user_name": (any_text, wrong),
    "source": (any_text, wrong),
    "message": (any_text, wrong),
    "value": (int64 | st.floats(allow_nan=False, allow_infinity=False), st.just("12")),
    "close": (st.booleans(), st.sampled_from([0, 1, "true"])),
    "sent_at": (stamps, st.floats(allow_nan=False, allow_infinity=False)),
    "data": (
        st.dictionaries(any_text, int64 | any_text | st.none(), max_size=3),
        st.lists(st.integers(0, 9), max_size=2),
    ),
}
assert set(FIELDS) == parse.KNOWN_FIELDS
extras = st.dictionaries(
    st.sampled_from(["extra", "browser", "description", "@user", ""]), wrong, max_size=2
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """An event object: each known field absent, accepted by the schema or refused."""
    obj: dict[str, Any] = {}
    for name, (good, bad) in FIELDS.items():
        roll = draw(st.integers(0, 99))
        if name in ("type", "timestamp", "user_id"):
            roll = 36 + roll * 64 // 100  # mostly there
        if roll < 40:
            continue  # absent
        if roll < 90:
            obj[name] = draw(good)
        elif roll < 97:
            obj[name] = draw(bad)
        else:
            obj[name] = draw(wrong)
    obj.update(draw(extras))
    return obj


@st.composite
def one_off_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event but for (at most) one field: refused, null or missing."""
    obj: dict[str, Any] = {"type": draw(FIELDS["type"][0]), "timestamp": draw(stamps)}
    obj["user_id" if draw(st.booleans()) else "session_id"] = "identity"
    for name, (good, _) in FIELDS.items():
        if name not in obj and draw(st.booleans()):
            obj[name] = draw(good)
    name = draw(st.sampled_from(sorted(FIELDS)))
    how = draw(st.sampled_from(["bad", "wrong", "null", "missing", "none"]))
    if how == "bad":
        obj[name] = draw(FIELDS[name][1])
    elif how == "wrong":
        obj[name] = draw(wrong)
    elif how == "null":
        obj[name] = None
    elif how == "missing":
        obj.pop(name, None)
    obj.update(draw(extras))
    return obj


def validator_accepts(obj: dict[str, Any]) -> bool:
    try:
        parse.event_validator()(obj, name_prefix="event")
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def test_the_bundled_schema_is_the_one_checked_by_hand() -> None:
    parse.event_validator()
    assert parse._bundled_schema


def test_events_are_built_with_positional_arguments() -> None:
    # Event's fields are in the order _parse_event passes them (else the slower
    # by-name constructor is used; update parse._EVENT_FIELDS).
    assert parse._new_event is Event
    assert Event.__match_args__ == parse._EVENT_FIELDS


def test_the_by_name_constructor_builds_the_same_event() -> None:
    args = (
        "usage",
        5,
        6,
        "p",
        "u",
        "abcdefgh",
        "i",
        "n",
        "s",
        "m",
        1.5,
        True,
        {"a": 1},
        1,
        2,
        3,
        True,
    )
    assert parse._event_by_name(*args) == Event(*args)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events() | one_off_events())
@example({"type": "usage", "timestamp": ARRIVAL, "user_id": "u1", "close": None})
@example({"type": "usage", "timestamp": ARRIVAL, "user_id": "u1", "data": None})
@example({"type": "usage", "timestamp": ARRIVAL, "session_id": "abcdefg"})
@example({"type": "usage", "timestamp": ARRIVAL, "user_id": "u1", "extra": None})
@example({"type": "usage", "timestamp": float(ARRIVAL), "session_id": "abcd-efgh"})
@example({"type": "usage", "timestamp": ARRIVAL, "session_id": "abcdefgh\n"})
@example({"type": "x" * 100, "timestamp": ARRIVAL, "user_id": "\U0001d7d8" * 256})
@example({"type": "x", "timestamp": ARRIVAL, "user_id": "u", "value": True})
def test_quick_schema_check_passes_only_what_the_validator_passes(obj: dict[str, Any]) -> None:
    value = orjson.dumps(obj)
    validate = parse.event_validator()
    calls: list[object] = []

    def spy(data: object, **kwargs: Any) -> object:
        calls.append(data)
        return validate(data, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parse, "_validator", spy)
        fast = run(value, fast=True)
    slow = run(value, fast=False)
    assert fast == slow
    (item,) = fast
    if not calls and not (isinstance(item, Rejection) and item.code == "no_identity"):
        # The hand-written check passed it without the validator: it must be valid.
        assert validator_accepts(orjson.loads(value)), obj


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        events() | one_off_events() | st.integers(-9, 9) | st.text(max_size=3),
        min_size=1,
        max_size=5,
    )
)
def test_batches_give_the_same_items_with_and_without_the_quick_paths(
    elements: list[Any],
) -> None:
    value = orjson.dumps(elements)
    assert run(value, fast=True) == run(value, fast=False)


def test_workload_like_records_give_the_same_items() -> None:
    values = [
        {
            "type": "session",
            "timestamp": "2025-11-27T09:59:58.893+00:00",
            "project": "shop",
            "user_id": "a@example.com",
            "id": "e86c77be9f1743e6",
            "data": {"@environment": {}},
        },
        {
            "type": "usage",
            "timestamp": "2025-11-27T05:59:59.856-04:00",
            "user_name": "Ivan",
            "user_id": "ivan",
            "session_id": "6eef66f6e69ff54745910d1b40295be3",
            "sent_at": "2025-11-27T05:59:59.900-04:00",
        },
        {"type": "heartbeat", "timestamp": ARRIVAL - 5, "user_id": "u", "close": True, "value": 3},
        {"type": "log", "timestamp": "27/11/2025 10:00", "user_id": "u"},
        {"type": "log", "timestamp": "2025-11-27T09:59:30", "user_id": "u"},
    ]
    for obj in values:
        fast = run(orjson.dumps(obj), fast=True)
        assert fast == run(orjson.dumps(obj), fast=False)
    assert all(isinstance(run(orjson.dumps(o), fast=True)[0], Event) for o in values[:3])


# -- which schemas get the hand-written check ---------------------------------------------


def bundled_definition() -> dict[str, Any]:
    definition: dict[str, Any] = orjson.loads(BUNDLED.read_bytes())
    definition.pop("anyOf")
    return definition


def test_descriptions_and_titles_do_not_matter() -> None:
    definition = bundled_definition()
    definition["title"] = "another title"
    definition["properties"]["type"]["description"] = "changed"
    del definition["properties"]["user_id"]["description"]
    assert parse._is_bundled_schema(definition)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["properties"]["type"].update(maxLength=3),
        lambda d: d["properties"]["user_id"].update(minLength=1.0),
        lambda d: d.update(additionalProperties=False),
        lambda d: d.update(additionalProperties=1),
        lambda d: d["properties"].update(description={"type": "string"}),
        lambda d: d["properties"]["data"].update(properties={"a": {"type": "string"}}),
        lambda d: d["required"].append("user_id"),
        lambda d: d.update({"$schema": "http://json-schema.org/draft-04/schema#"}),
        lambda d: d["properties"].pop("close"),
    ],
    ids=[
        "maxLength",
        "float-minLength",
        "no-additional",
        "additional-1",
        "property-named-description",
        "nested-properties",
        "required",
        "draft",
        "property-removed",
    ],
)
def test_any_other_constraint_turns_the_hand_written_check_off(change: Any) -> None:
    definition = bundled_definition()
    change(definition)
    assert not parse._is_bundled_schema(definition)


def test_a_copy_of_the_bundled_schema_elsewhere_gets_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / parse.EVENT_SCHEMA_FILE).write_bytes(BUNDLED.read_bytes())
    monkeypatch.setenv(parse.SCHEMA_DIR_ENV, str(tmp_path))
    parse.reset_event_validator()
    parse.event_validator()
    assert parse._bundled_schema


def test_another_schema_always_goes_to_the_validator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = orjson.loads(BUNDLED.read_bytes())
    schema["properties"]["user_id"]["maxLength"] = 2
    (tmp_path / parse.EVENT_SCHEMA_FILE).write_bytes(orjson.dumps(schema))
    monkeypatch.setenv(parse.SCHEMA_DIR_ENV, str(tmp_path))
    parse.reset_event_validator()
    (item,) = run(
        orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": "abc"}), fast=True
    )
    assert isinstance(item, Rejection)
    assert (
        item.detail == "invalid event: event.user_id must be shorter than or equal to 2 characters"
    )
    assert not parse._bundled_schema
    parse.reset_event_validator()
    assert not parse._bundled_schema


# -- string times ------------------------------------------------------------------------------


def outcome(func: Any, value: object) -> tuple[str, object]:
    try:
        return ("ok", func(value))
    except Exception as exc:  # the same exception, with the same message
        return (type(exc).__name__, str(exc))


@st.composite
def near_rfc3339(draw: st.DrawFn) -> str:
    """Strings shaped like RFC 3339 date-times, right or slightly wrong."""
    year = draw(
        st.sampled_from(
            [
                "2025",
                "1970",
                "1969",
                "0001",
                "9999",
                "0000",
                "\u0662\u0660\u0662\u0665",
                "20250",
                "25",
            ]
        )
    )
    month = draw(st.sampled_from(["01", "02", "11", "12", "00", "13", "1", "\u0661\u0661"]))
    day = draw(st.sampled_from(["01", "27", "28", "29", "30", "31", "00", "32"]))
    sep = draw(st.sampled_from(["T", "t", " ", "_", "TT"]))
    hour = draw(st.sampled_from(["00", "09", "23", "24", "9"]))
    minute = draw(st.sampled_from(["00", "59", "60"]))
    second = draw(st.sampled_from([":00", ":59", ":60", "", ":5"]))
    fraction = draw(
        st.sampled_from(["", ".", ".5", ".123", ".1234", ".123456", ".1234567", ".12a"])
    )
    zone = draw(
        st.sampled_from(
            [
                "Z",
                "z",
                "",
                "+00:00",
                "-00:00",
                "+05:30",
                "-04:00",
                "+23:59",
                "-23:59",
                "+24:00",
                "+05:60",
                "+0530",
                "+05",
                "+05:30:15",
                "+05:30:15.5",
                "+\u0660\u0665:\u0663\u0660",
                "Z0",
            ]
        )
    )
    before = draw(st.sampled_from(["", "", " ", "\n", "\u3000"]))
    after = draw(st.sampled_from(["", "", " ", "\n", "\u3000"]))
    return f"{before}{year}-{month}-{day}{sep}{hour}:{minute}{second}{fraction}{zone}{after}"


@settings(max_examples=3000, deadline=None)
@given(near_rfc3339() | st.text(max_size=30) | st.floats() | st.integers() | st.none())
@example("2025-11-27T09:59:59.250Z")
@example("2025-11-27T11:59:30+02:00")
@example("1969-12-31T23:59:59.9995Z")
@example("0001-01-01T00:00:00+23:59")
@example("9999-12-31T23:59:59.999-23:59")
def test_string_time_shortcut_agrees_with_parse_timestamp_ms(value: object) -> None:
    assert outcome(parse_timestamp_ms, value) == outcome(timefmt._parse_general, value)


@pytest.mark.parametrize(
    "text",
    ["2025-11-27T09:59:59.250Z", "2025-11-27T05:59:59.250-04:00", "2025-11-27T09:59:59Z"],
)
def test_string_time_shortcut_is_taken_for_the_usual_shapes(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def general(value: object) -> int:
        raise AssertionError(f"{value!r} went to the general code")

    expected = timefmt._parse_general(text)
    monkeypatch.setattr(timefmt, "_parse_general", general)
    assert parse_timestamp_ms(text) == expected
