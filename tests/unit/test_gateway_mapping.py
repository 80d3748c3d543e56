"""Exceptionless and SPEC request bodies to SPEC events: the pure mapping."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from pipeline.gateway.mapping import (
    BodyError,
    EventError,
    assign_ids,
    check_size,
    from_exceptionless,
    from_spec,
    heartbeat_event,
    parse_body,
    parse_bool,
    routing_key,
)

SESSION = "66e634246cc3414faed6531eb988749a"
RECEIVED_MS = 1_795_758_300_000  # 2026-11-27T05:45:00Z
USER = {"identity": "alice@example.com", "name": "Alice"}


def xl(**fields: Any) -> dict[str, Any]:
    """An Exceptionless event as @exceptionless/node 3.2 sends it (trimmed environment)."""
    event: dict[str, Any] = {
        "date": "2026-11-27T05:44:19.342Z",
        "type": "usage",
        "data": {
            "@user": dict(USER),
            "@ref:session": SESSION,
            "@environment": {"o_s_name": "Linux"},
        },
        "tags": [],
    }
    event.update(fields)
    return event


# -- Exceptionless -----------------------------------------------------------------


def test_session_start_takes_the_session_id_from_reference_id() -> None:
    raw = {
        "date": "2026-11-27T05:44:19.331Z",
        "type": "session",
        "data": {"@user": dict(USER), "@environment": {"o_s_name": "Linux"}},
        "tags": [],
        "reference_id": SESSION,
    }
    event = from_exceptionless(raw, project="shop", received_ms=RECEIVED_MS)
    assert event == {
        "type": "session",
        "timestamp": "2026-11-27T05:44:19.331Z",
        "project": "shop",
        "user_id": "alice@example.com",
        "user_name": "Alice",
        "session_id": SESSION,
        "data": raw["data"],
    }


def test_usage_takes_the_session_id_from_ref_session_and_keeps_data_whole() -> None:
    raw = xl(source="checkout")
    event = from_exceptionless(raw, project="shop", received_ms=RECEIVED_MS)
    assert event["type"] == "usage"
    assert event["session_id"] == SESSION
    assert event["source"] == "checkout"
    assert event["data"] == raw["data"]
    assert "tags" not in event  # empty tags are not carried


def test_log_keeps_source_message_and_level() -> None:
    raw = xl(type="log", source="cart", message="added 2 items")
    raw["data"]["@level"] = "Info"
    event = from_exceptionless(raw, project="shop", received_ms=RECEIVED_MS)
    assert (event["type"], event["source"], event["message"]) == ("log", "cart", "added 2 items")
    assert event["data"]["@level"] == "Info"


def test_error_reference_id_is_not_a_session_id() -> None:
    raw = xl(type="error", reference_id="3009f8c3d6")
    raw["data"]["@error"] = {
        "type": "TypeError",
        "message": "price is not a number",
        "stack_trace": [],
    }
    event = from_exceptionless(raw, project="shop", received_ms=RECEIVED_MS)
    assert event["session_id"] == SESSION
    assert event["reference_id"] == "3009f8c3d6"
    assert event["source"] == "TypeError"
    assert event["message"] == "price is not a number"
    assert event["data"]["@error"]["type"] == "TypeError"


def test_error_without_session_and_with_reference_id_is_an_auto_session_event() -> None:
    raw = {"type": "error", "reference_id": "3009f8c3d6", "data": {"@user": dict(USER)}}
    event = from_exceptionless(raw, project="shop", received_ms=RECEIVED_MS)
    assert "session_id" not in event
    assert event["user_id"] == "alice@example.com"


def test_simple_error_gives_source_and_message() -> None:
    raw = xl(type="error")
    raw["data"]["@simple_error"] = {"type": "System.Exception", "message": "boom"}
    event = from_exceptionless(raw, project="shop", received_ms=RECEIVED_MS)
    assert (event["source"], event["message"]) == ("System.Exception", "boom")


def test_explicit_source_wins_over_the_error_type() -> None:
    raw = xl(type="error", source="payments")
    raw["data"]["@error"] = {"type": "TypeError", "message": "x"}
    assert from_exceptionless(raw, project="p", received_ms=RECEIVED_MS)["source"] == "payments"


def test_sessionend_and_custom_types_are_kept() -> None:
    for kind in ("sessionend", "404", "checkout-step"):
        assert (
            from_exceptionless(xl(type=kind), project="p", received_ms=RECEIVED_MS)["type"] == kind
        )


def test_missing_type_is_log_and_missing_date_is_the_time_received() -> None:
    raw = xl()
    del raw["type"], raw["date"]
    event = from_exceptionless(raw, project="p", received_ms=RECEIVED_MS)
    assert event["type"] == "log"
    assert event["timestamp"] == "2026-11-27T05:45:00.000Z"


def test_dotnet_dates_with_offsets_and_7_digit_fractions_are_normalized_to_utc() -> None:
    event = from_exceptionless(
        xl(date="2026-11-27T06:44:19.1234567+01:00"), project="p", received_ms=RECEIVED_MS
    )
    assert event["timestamp"] == "2026-11-27T05:44:19.123Z"


def test_value_tags_geo_count_are_carried() -> None:
    raw = xl(value=12.5, tags=["beta"], geo="52.5,13.4", count=3)
    event = from_exceptionless(raw, project="p", received_ms=RECEIVED_MS)
    assert (event["value"], event["tags"], event["geo"], event["count"]) == (
        12.5,
        ["beta"],
        "52.5,13.4",
        3,
    )


def test_user_without_name_and_session_without_user() -> None:
    raw = xl()
    raw["data"]["@user"] = {"identity": "bob"}
    assert "user_name" not in from_exceptionless(raw, project="p", received_ms=RECEIVED_MS)
    del raw["data"]["@user"]
    event = from_exceptionless(raw, project="p", received_ms=RECEIVED_MS)
    assert event["session_id"] == SESSION and "user_id" not in event


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda e: e["data"].pop("@user") and e["data"].pop("@ref:session"), "no_identity"),
        (lambda e: e.update(date="yesterday"), "invalid_event"),
        (lambda e: e.update(date="2026-11-27T05:44:19"), "invalid_event"),
        (lambda e: e.update(type=7), "invalid_event"),
        (lambda e: e.update(type="x" * 101), "invalid_event"),
        (lambda e: e.update(value="12"), "invalid_event"),
        (lambda e: e.update(value=True), "invalid_event"),
        (lambda e: e.update(source=5), "invalid_event"),
        (lambda e: e.update(data=[1]), "invalid_event"),
        (lambda e: e["data"].update({"@user": "alice"}), "invalid_event"),
        (lambda e: e["data"]["@user"].update(identity=42), "invalid_event"),
        (lambda e: e["data"]["@user"].update(identity="x" * 257), "invalid_event"),
        (lambda e: e["data"]["@user"].update(name=["A"]), "invalid_event"),
        (lambda e: e["data"].update({"@ref:session": "short"}), "invalid_event"),
        (lambda e: e["data"].update({"@ref:session": "has space in it"}), "invalid_event"),
    ],
)
def test_bad_exceptionless_events_are_refused_with_a_code(change: Any, code: str) -> None:
    raw = xl()
    change(raw)
    with pytest.raises(EventError) as caught:
        from_exceptionless(raw, project="p", received_ms=RECEIVED_MS)
    assert caught.value.code == code


def test_a_non_object_event_is_refused() -> None:
    with pytest.raises(EventError):
        from_exceptionless("usage", project="p", received_ms=RECEIVED_MS)


def test_mapping_does_not_change_the_input() -> None:
    raw = xl(type="error", reference_id="3009f8c3d6")
    before = copy.deepcopy(raw)
    from_exceptionless(raw, project="p", received_ms=RECEIVED_MS)
    assert raw == before


# -- SPEC events -------------------------------------------------------------------


def spec(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "usage", "timestamp": "2026-11-27T05:44:19Z", "user_id": "u1"}
    event.update(fields)
    return event


def test_spec_event_passes_through_with_the_key_project_and_unknown_fields() -> None:
    event = from_spec(spec(custom={"a": 1}, timestamp=1_795_758_259_000), project="shop")
    assert event == {
        "type": "usage",
        "timestamp": 1_795_758_259_000,
        "user_id": "u1",
        "custom": {"a": 1},
        "project": "shop",
    }


def test_spec_event_with_its_own_project_must_match_the_key() -> None:
    assert from_spec(spec(project="shop"), project="shop")["project"] == "shop"
    with pytest.raises(EventError) as caught:
        from_spec(spec(project="blog"), project="shop")
    assert caught.value.code == "forbidden_project"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"user_id": None}, "no_identity"),
        ({"type": ""}, "invalid_event"),
        ({"timestamp": "soon"}, "invalid_event"),
        ({"timestamp": 1.5e12}, "invalid_event"),
        ({"timestamp": True}, "invalid_event"),
        ({"sent_at": "2026-11-27 05:44"}, "invalid_event"),
        ({"session_id": "abc"}, "invalid_event"),
        ({"user_id": ""}, "invalid_event"),
        ({"id": ""}, "invalid_event"),
        ({"close": "yes"}, "invalid_event"),
        ({"value": "1"}, "invalid_event"),
        ({"data": "x"}, "invalid_event"),
        ({"user_name": 3}, "invalid_event"),
    ],
)
def test_bad_spec_events_are_refused(fields: dict[str, Any], code: str) -> None:
    event = spec(**fields)
    if event.get("user_id") is None:
        event.pop("user_id")
    with pytest.raises(EventError) as caught:
        from_spec(event, project="p")
    assert caught.value.code == code


def test_spec_event_without_timestamp_is_refused() -> None:
    event = spec()
    del event["timestamp"]
    with pytest.raises(EventError):
        from_spec(event, project="p")


# -- heartbeats, ids, keys, bodies ---------------------------------------------------


def test_heartbeat_event_is_stamped_with_the_time_received() -> None:
    assert heartbeat_event(
        project="p", received_ms=RECEIVED_MS, close=True, session_id=SESSION
    ) == {
        "type": "heartbeat",
        "timestamp": "2026-11-27T05:45:00.000Z",
        "project": "p",
        "session_id": SESSION,
        "close": True,
    }
    event = heartbeat_event(project="p", received_ms=RECEIVED_MS, close=False, user_id="a@b.c")
    assert event["user_id"] == "a@b.c" and "close" not in event and "session_id" not in event


def test_assign_ids_is_deterministic_and_separates_identical_events() -> None:
    raws = [xl(), xl(), xl(source="other"), {**xl(), "id": "given"}]

    def ids() -> list[str]:
        events = [from_exceptionless(r, project="p", received_ms=RECEIVED_MS) for r in raws]
        events[3]["id"] = "given"
        assign_ids(events, raws, project="p")
        return [e["id"] for e in events]

    first = ids()
    assert first == ids()  # a retried request gets the same ids
    assert len(set(first)) == 4 and first[3] == "given"
    assert all(len(i) <= 100 for i in first)
    other = [from_exceptionless(raws[0], project="q", received_ms=RECEIVED_MS)]
    assign_ids(other, raws[:1], project="q")
    assert other[0]["id"] != first[0]  # ids differ per project


def test_routing_key_prefers_the_session_id() -> None:
    assert routing_key({"session_id": SESSION, "user_id": "u"}) == SESSION.encode()
    assert routing_key({"user_id": "ü@x"}) == "ü@x".encode()


def test_check_size_refuses_events_over_the_worker_limit() -> None:
    small = spec()
    assert check_size(small, 1000) == orjson.dumps(small)
    with pytest.raises(EventError) as caught:
        check_size(spec(message="x" * 2000), 1000)
    assert caught.value.code == "too_large"


def test_parse_body() -> None:
    assert parse_body(b'{"a": 1}') == [{"a": 1}]
    assert parse_body(b"[1, 2]") == [1, 2]
    for body, code in [(b"", "invalid_body"), (b"{", "invalid_json"), (b"42", "invalid_body")]:
        with pytest.raises(BodyError) as caught:
            parse_body(body)
        assert caught.value.code == code


def test_parse_bool() -> None:
    assert parse_bool("true", name="close") is True
    assert parse_bool("False", name="close") is False
    assert parse_bool(None, name="close") is False
    with pytest.raises(EventError):
        parse_bool("maybe", name="close")
