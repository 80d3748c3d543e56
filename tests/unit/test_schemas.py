"""The JSON schemas of the contract: valid 2020-12 schemas that say what SPEC sections 2 and 4 say."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest
from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[2] / "pipeline" / "schemas"


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads((SCHEMAS / name).read_bytes())
    return schema


EVENT = load("event.schema.json")
SESSION = load("session.schema.json")


@pytest.mark.parametrize("name", ["event.schema.json", "session.schema.json"])
def test_is_a_valid_2020_12_schema(name: str) -> None:
    schema = load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    fastjsonschema.compile(schema)  # the worker's validator accepts it too


# -- session.schema.json ---------------------------------------------------------------


def closed_session() -> dict[str, Any]:
    return {
        "session_id": "0123456789abcdef0123456789abcdef",
        "project": "shop",
        "user_id": "ada@example.com",
        "user_name": "Ada",
        "status": "closed",
        "start": "2025-11-27T10:00:00.000Z",
        "end": "2025-11-27T10:04:30.250Z",
        "duration_ms": 270_250,
        "close_reason": "timeout",
        "revision": 1,
        "event_count": 2,
        "heartbeat_count": 1,
        "duplicate_events": 0,
        "type_counts": {"session": 1, "usage": 1, "heartbeat": 1},
        "has_error": False,
        "data": {"@environment": {"os": "linux"}},
        "events": [
            {
                "id": "e1",
                "type": "session",
                "timestamp": "2025-11-27T10:00:00.000Z",
                "source": None,
                "message": None,
                "value": None,
                "partition": 0,
                "offset": 17,
            },
            {
                "id": None,
                "type": "usage",
                "timestamp": "2025-11-27T10:04:30.250Z",
                "source": "checkout",
                "message": "paid",
                "value": 12.5,
                "partition": 0,
                "offset": 18,
            },
        ],
        "events_truncated": False,
    }


def open_session() -> dict[str, Any]:
    record = closed_session()
    record["status"] = "open"
    del record["close_reason"]
    record["user_id"] = None
    record["user_name"] = None
    record["events"] = []
    return record


def errors(record: Any) -> list[str]:
    return [e.message for e in Draft202012Validator(SESSION).iter_errors(record)]


def fast_ok(record: Any) -> bool:
    try:
        fastjsonschema.compile(SESSION)(record)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


@pytest.mark.parametrize("reason", ["ended", "timeout", "max_duration"])
def test_closed_session_is_valid(reason: str) -> None:
    record = closed_session()
    record["close_reason"] = reason
    assert errors(record) == []
    assert fast_ok(record)


def test_open_session_is_valid() -> None:
    assert errors(open_session()) == []
    assert fast_ok(open_session())


def _set(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    record = copy.deepcopy(record)
    *parents, last = path.split(".")
    target: Any = record
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return record


INVALID = [
    ("status", "done"),
    ("status", ...),
    ("close_reason", ...),  # closed without a reason
    ("close_reason", "crashed"),
    ("start", "2025-11-27T10:00:00Z"),  # no milliseconds
    ("start", "2025-11-27T10:00:00.000+00:00"),  # not Z
    ("end", "2025-11-27T10:04:30.25Z"),
    ("end", "2025-11-27 10:04:30.250Z"),
    ("end", 1764237870250),
    ("duration_ms", -1),
    ("duration_ms", 1.5),
    ("revision", 0),
    ("event_count", -1),
    ("heartbeat_count", "1"),
    ("duplicate_events", None),
    ("has_error", 0),
    ("type_counts", {"usage": 1.5}),
    ("type_counts", {"usage": -1}),
    ("data", []),
    ("events", {}),
    ("events_truncated", "no"),
    ("session_id", ""),
    ("project", None),
    ("user_id", 5),
    ("surprise", 1),  # no extra fields
    ("events.0.offset", -1),
    ("events.0.partition", None),
    ("events.0.type", None),
    ("events.0.timestamp", "2025-11-27T10:00:00Z"),
    ("events.0.value", "12"),
    ("events.0.message", ...),  # every key of an event entry is present
    ("events.0.extra", 1),
]


@pytest.mark.parametrize(("path", "value"), INVALID, ids=[f"{p}={v!r}" for p, v in INVALID])
def test_invalid_closed_sessions(path: str, value: Any) -> None:
    record = _set(closed_session(), path, value)
    assert errors(record), record
    assert not fast_ok(record)


def test_open_session_must_not_have_a_close_reason() -> None:
    record = open_session()
    record["close_reason"] = "timeout"
    assert errors(record)
    assert not fast_ok(record)


def test_every_field_is_required() -> None:
    for field in SESSION["required"]:
        assert errors(_set(open_session(), field, ...)), field
    # optional: close_reason (absent while open), truncated (present only when trimmed)
    assert set(SESSION["required"]) | {"close_reason", "truncated"} == set(SESSION["properties"])


def test_session_fields_are_the_spec_fields() -> None:
    assert set(SESSION["properties"]) == {
        "session_id",
        "project",
        "user_id",
        "user_name",
        "status",
        "start",
        "end",
        "duration_ms",
        "close_reason",
        "revision",
        "event_count",
        "heartbeat_count",
        "duplicate_events",
        "type_counts",
        "has_error",
        "data",
        "events",
        "events_truncated",
        "truncated",
    }
    item = SESSION["properties"]["events"]["items"]
    fields = ["id", "type", "timestamp", "source", "message", "value", "partition", "offset"]
    assert sorted(item["required"]) == sorted(fields)
    assert set(item["properties"]) == set(fields)


# -- event.schema.json -----------------------------------------------------------------


GOOD_EVENTS: list[dict[str, Any]] = [
    {"type": "usage", "timestamp": 1764237600000, "user_id": "u1"},
    {"type": "session", "timestamp": "2025-11-27T10:00:00+02:00", "session_id": "abcdefgh"},
    {
        "type": "heartbeat",
        "timestamp": "2025-11-27T10:00:00Z",
        "user_id": "u1",
        "session_id": "A" * 100,
        "id": "x",
        "project": "p",
        "user_name": "Ada",
        "source": "s",
        "message": "m",
        "value": -1.5,
        "close": True,
        "sent_at": 1764237600000,
        "data": {"k": [1]},
        "unknown": {"kept": True},
    },
]
BAD_EVENTS: list[dict[str, Any]] = [
    {"type": "usage", "timestamp": 1},  # no identity
    {"type": "usage", "user_id": "u1"},
    {"timestamp": 1, "user_id": "u1"},
    {"type": "", "timestamp": 1, "user_id": "u1"},
    {"type": "x" * 101, "timestamp": 1, "user_id": "u1"},
    {"type": "usage", "timestamp": True, "user_id": "u1"},
    {"type": "usage", "timestamp": 1, "user_id": ""},
    {"type": "usage", "timestamp": 1, "user_id": "u" * 257},
    {"type": "usage", "timestamp": 1, "session_id": "abcdefg"},
    {"type": "usage", "timestamp": 1, "session_id": "a" * 101},
    {"type": "usage", "timestamp": 1, "session_id": "abcd_efgh"},
    {"type": "usage", "timestamp": 1, "user_id": "u1", "value": False},
    {"type": "usage", "timestamp": 1, "user_id": "u1", "close": "true"},
    {"type": "usage", "timestamp": 1, "user_id": "u1", "data": "x"},
    {"type": "usage", "timestamp": 1, "user_id": "u1", "project": ""},
    {"type": "usage", "timestamp": 1, "user_id": "u1", "sent_at": None},
]


@pytest.mark.parametrize("event", GOOD_EVENTS)
def test_good_events(event: dict[str, Any]) -> None:
    Draft202012Validator(EVENT).validate(event)
    fastjsonschema.compile(EVENT)(event)


@pytest.mark.parametrize("event", BAD_EVENTS)
def test_bad_events(event: dict[str, Any]) -> None:
    assert list(Draft202012Validator(EVENT).iter_errors(event))
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        fastjsonschema.compile(EVENT, use_default=False)(event)


def test_event_fields_are_the_spec_fields() -> None:
    from pipeline.core.parse import KNOWN_FIELDS

    assert set(EVENT["properties"]) == KNOWN_FIELDS
    assert EVENT["additionalProperties"] is True
    assert sorted(EVENT["required"]) == ["timestamp", "type"]
