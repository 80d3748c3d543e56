"""The quick check derived from the event schema, against the schema itself.

The one place that keeps the quick check honest: objects generated from the
schema's own properties (values at and just past each length bound, of every JSON
kind, null, absent, extra fields) and the hostile inputs of the limits and
adversarial tests. The quick check may say yes only to objects the compiled
validator accepts, and a parser with the quick check gives exactly the items
(codes, details) a parser without it gives.
"""

from __future__ import annotations

import re
import string
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.core.event import Event, Rejection
from pipeline.core.event_schema import EventSchema, derive_check
from pipeline.core.parse import KNOWN_FIELDS, EventParser
from pipeline.core.rules import SessionRules

RULES = SessionRules()
ARRIVAL = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z
QUICK = EventSchema.load()
COMPILED = EventSchema.load(quick=False)
DEFINITION = QUICK.definition
PROPERTIES: dict[str, Any] = DEFINITION["properties"]
REQUIRED: list[str] = DEFINITION["required"]
#: The quick check, asked for every property and one field the schema does not name.
ASKED = (*PROPERTIES, "extra")
ACCEPTS = QUICK.quick_check(ASKED)

# Characters a pattern may allow, then some it likely does not: _, space, newline,
# accented, a non-ASCII digit and letter, one outside the BMP.
ALPHABET = string.ascii_letters + string.digits + "-" + "_ \n\té\u0663\u00df\U0001d7d8"
int64 = st.integers(-(2**63), 2**63 - 1)
stamps = st.integers(ARRIVAL - 5 * 86_400_000, ARRIVAL + 86_400_000) | st.sampled_from(
    ["2025-11-27T09:59:58.893Z", "2025-11-27T05:59:58+04:00", "2025-11-27T09:59:58", "never", ""]
)
#: One value of each JSON kind, near the edges.
any_kind = st.sampled_from(
    [None, True, False, 0, 1, -1, 1.5, 2.0, "", "x", [], [1], {}, {"a": 1}, 2**63 - 1]
)


def _pattern_text(pattern: str, length: int) -> st.SearchStrategy[str]:
    """Text of ``length`` made of the characters ``pattern``'s first class allows."""
    found = re.search(r"\[([^\]]*)\]", pattern)
    if found is None:
        return st.text(alphabet=ALPHABET, min_size=length, max_size=length)
    allowed = [c for c in ALPHABET if re.fullmatch(f"[{found.group(1)}]", c)]
    return st.text(alphabet=allowed, min_size=length, max_size=length)


def values_of(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for one property, derived from its schema: each declared type, strings
    at and just past each length bound (with and without the pattern's characters)."""
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    options: list[st.SearchStrategy[Any]] = [any_kind]
    for kind in kinds:
        if kind == "string":
            low, high = schema.get("minLength", 0), schema.get("maxLength", 12)
            lengths = sorted({n for n in (low - 1, low, low + 1, high - 1, high, high + 1) if n >= 0})
            length = st.sampled_from(lengths)
            options.append(length.flatmap(lambda n: st.text(alphabet=ALPHABET, min_size=n, max_size=n)))
            if "pattern" in schema:
                options.append(length.flatmap(lambda n: _pattern_text(schema["pattern"], n)))
                options.append(length.map(lambda n: "a" * max(n - 1, 0) + "\n"))
        elif kind == "integer":
            options.append(int64)
        elif kind == "number":
            options.append(int64 | st.floats(allow_nan=False, allow_infinity=False))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "object":
            options.append(st.dictionaries(st.text(max_size=4), int64 | st.text(max_size=4) | st.none(), max_size=3))
        elif kind == "array":
            options.append(st.lists(int64, max_size=2))
    if "timestamp" in str(schema.get("description", "")) or kinds == ["string", "integer"]:
        options.append(stamps)
    return st.one_of(options)


FIELD_VALUES = {name: values_of(schema) for name, schema in PROPERTIES.items()}
extras = st.dictionaries(st.sampled_from(["extra", "browser", "description", "@user", ""]), any_kind, max_size=2)


@st.composite
def instances(draw: st.DrawFn) -> dict[str, Any]:
    """An object near the schema: each property absent, null, or a value derived
    from its schema; required ones (and an identity) mostly there."""
    obj: dict[str, Any] = {}
    for name, values in FIELD_VALUES.items():
        roll = draw(st.integers(0, 99))
        if name in REQUIRED or name == "user_id":
            roll = 30 + roll * 70 // 100
        if roll < 35:
            continue
        obj[name] = None if roll < 38 else draw(values)
    obj.update(draw(extras))
    return obj


def validator_accepts(obj: dict[str, Any]) -> bool:
    try:
        COMPILED.validate(obj, name_prefix="event")
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def both(value: bytes) -> tuple[list[Event | Rejection], list[Event | Rejection]]:
    """The items of one record through a parser with the quick check and one without."""
    quick = EventParser(RULES, QUICK).parse(value, arrival_ms=ARRIVAL, partition=3, offset=41)
    compiled = EventParser(RULES, COMPILED).parse(value, arrival_ms=ARRIVAL, partition=3, offset=41)
    return quick, compiled


def test_the_bundled_schema_gets_a_quick_check_over_every_known_field() -> None:
    assert ACCEPTS is not None
    assert COMPILED.quick_check(ASKED) is None
    assert set(PROPERTIES) == KNOWN_FIELDS


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
@example({"type": "usage", "timestamp": ARRIVAL, "user_id": "u1", "close": None})
@example({"type": "usage", "timestamp": ARRIVAL, "user_id": "u1", "data": None})
@example({"type": "usage", "timestamp": ARRIVAL, "session_id": "abcdefg"})
@example({"type": "usage", "timestamp": ARRIVAL, "user_id": "u1", "extra": None})
@example({"type": "usage", "timestamp": float(ARRIVAL), "session_id": "abcd-efgh"})
@example({"type": "usage", "timestamp": ARRIVAL, "session_id": "abcdefgh\n"})
@example({"type": "x" * 100, "timestamp": ARRIVAL, "user_id": "\U0001d7d8" * 256})
@example({"type": "x", "timestamp": ARRIVAL, "user_id": "u", "value": True})
def test_the_quick_check_says_yes_only_to_what_the_schema_accepts(obj: dict[str, Any]) -> None:
    decoded = orjson.loads(orjson.dumps(obj))  # as the parser sees it
    assert ACCEPTS is not None
    fields = ACCEPTS(decoded)
    if fields is not None:
        assert validator_accepts(decoded), obj
        assert fields == tuple(decoded.get(name) for name in ASKED)
    quick, compiled = both(orjson.dumps(obj))
    assert quick == compiled


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(instances() | st.integers(-9, 9) | st.text(max_size=3), min_size=1, max_size=5))
def test_batches_give_the_same_items_with_and_without_the_quick_check(elements: list[Any]) -> None:
    quick, compiled = both(orjson.dumps(elements))
    assert quick == compiled


WORKLOAD = [
    {
        "type": "session",
        "timestamp": "2025-11-27T09:59:58.893+00:00",
        "project": "shop",
        "user_id": "a@example.com",
        "id": "e86c77be9f1743e6",
        "data": {"@environment": {}},
    },
    {"type": "usage", "timestamp": ARRIVAL - 5, "user_id": "u1", "source": "search", "value": 3},
    {"type": "heartbeat", "timestamp": ARRIVAL, "session_id": "abcd-1234", "close": True},
    {
        "type": "log",
        "timestamp": "2025-11-27T09:59:59Z",
        "sent_at": "2025-11-27T10:00:00Z",
        "user_id": "u2",
        "user_name": "Ann",
        "message": "hello",
        "value": 1.5,
        "extra": [1, 2],
    },
]


@pytest.mark.parametrize("obj", WORKLOAD)
def test_usual_events_pass_the_quick_check(obj: dict[str, Any]) -> None:
    assert ACCEPTS is not None
    assert ACCEPTS(obj) == tuple(obj.get(name) for name in ASKED)
    quick, compiled = both(orjson.dumps(obj))
    assert quick == compiled and isinstance(quick[0], Event)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


_USER = b'{"type":"usage","timestamp":%d,"user_id":"hostile"' % ARRIVAL
#: The hostile inputs of test_parse_limits.py and tests/adversarial, as records.
HOSTILE = [
    _USER + b',"data":' + _deep(300) + b"}",
    b"[" + orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": "ok"}) + b"," + _USER
    + b',"data":' + _deep(300) + b"}]",
    _USER + b',"extra":' + _deep(260) + b"}",
    b'{"type":"usage","user_id":"\xc3\x28","timestamp":1}',
    orjson.dumps({"type": None, "timestamp": None, "user_id": None}),
    _USER.replace(b'"usage"', b"null") + b"}",
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": "u" * 100_000}),
    orjson.dumps({"type": "usage", "timestamp": 1e20, "user_id": "u"}),
    orjson.dumps({"type": "usage", "timestamp": "0001-01-01T00:00:00+01:00", "user_id": "u"}),
    orjson.dumps({"type": "usage", "timestamp": 253_402_300_800_000, "user_id": "u"}),
    orjson.dumps({"type": "usage", "timestamp": -1, "user_id": "u"}),
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "sent_at": "10000-01-01T00:00:00Z", "user_id": "u"}),
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": "u", "user_name": "n" * 257}),
    orjson.dumps({"type": "t" * 101, "timestamp": ARRIVAL, "user_id": "u"}),
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "session_id": "s" * 101}),
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": "u", "id": "i" * 101}),
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": "u", "project": "p" * 101}),
    orjson.dumps({"type": "usage", "timestamp": True, "user_id": "u"}),
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": "u", "value": "12"}),
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": 7}),
    orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "session_id": "abc def gh"}),
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_records_give_the_same_items_with_and_without_the_quick_check(value: bytes) -> None:
    quick, compiled = both(value)
    assert quick == compiled
    assert all(isinstance(item, Rejection) for item in quick[-1:]), quick


# -- what the generator translates ---------------------------------------------------------


def test_titles_descriptions_and_defaults_do_not_matter() -> None:
    definition = {k: v for k, v in DEFINITION.items() if k not in ("title", "description")}
    definition["properties"] = {
        name: {k: v for k, v in schema.items() if k not in ("description", "default")}
        for name, schema in PROPERTIES.items()
    }
    assert derive_check(definition) is not None


@pytest.mark.parametrize(
    "change",
    [
        {"additionalProperties": False},
        {"minProperties": 2},
        {"type": ["object", "null"]},
        {"properties": {**PROPERTIES, "value": {"type": "number", "minimum": 0}}},
        {"properties": {**PROPERTIES, "type": {"type": "string", "enum": ["usage"]}}},
        {"properties": {**PROPERTIES, "id": {"type": "string", "format": "uuid"}}},
        {"properties": {**PROPERTIES, "id": {"minLength": 1}}},
        {"properties": {**PROPERTIES, "data": {"type": "object", "required": ["x"]}}},
        {"properties": {**PROPERTIES, "id": {"type": "uuid"}}},
    ],
)
def test_a_keyword_the_generator_does_not_translate_leaves_no_quick_check(change: dict[str, Any]) -> None:
    assert derive_check({**DEFINITION, **change}) is None


def test_the_quick_check_follows_a_changed_schema() -> None:
    definition = {**DEFINITION, "properties": {**PROPERTIES, "type": {"type": "string", "maxLength": 3}}}
    accepts = derive_check(definition)
    assert accepts is not None
    assert accepts({"type": "log", "timestamp": 1, "user_id": "u"}) == ()
    assert accepts({"type": "usage", "timestamp": 1, "user_id": "u"}) is None
    schema = EventSchema(definition)
    (item,) = EventParser(RULES, schema).parse(
        orjson.dumps({"type": "usage", "timestamp": ARRIVAL, "user_id": "u"}),
        arrival_ms=ARRIVAL,
        partition=0,
        offset=0,
    )
    assert isinstance(item, Rejection) and "type" in item.detail
