"""SPEC section 4: the fields of a session record, as the engine fills them."""

from __future__ import annotations

import dataclasses

from helpers import (
    CAP,
    MIN,
    RULES,
    TIMEOUT_MS,
    advance,
    engine,
    ev,
    feed,
    open_session,
    ts,
)

from pipeline.core.engine import Record
from pipeline.core.event import END, ERROR, Event

RECORD_FIELDS = {
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
}
EVENT_FIELDS = {"id", "type", "timestamp", "source", "message", "value", "partition", "offset"}


def closed(*events: Event) -> Record:
    """The record of one session made of ``events``, closed idle."""
    eng = engine()
    assert feed(eng, events) == []
    last_arrival = max(e.arrival_ms for e in events)
    [record] = eng.advance(last_arrival + TIMEOUT_MS + 1)
    return record


def test_closed_record_has_exactly_the_spec_fields() -> None:
    record = closed(ev(at=0))
    assert set(record) == RECORD_FIELDS
    assert record["status"] == "closed"
    assert set(record["events"][0]) == EVENT_FIELDS


def test_open_record_has_no_close_reason_and_ends_at_last_activity() -> None:
    eng = engine()
    feed(eng, [ev(at=0), ev(at=2 * MIN)])
    record = open_session(eng).to_record()
    assert set(record) == RECORD_FIELDS - {"close_reason"}
    assert (record["status"], record["end"], record["duration_ms"]) == (
        "open",
        ts(2 * MIN),
        2 * MIN,
    )


def test_start_end_are_rfc3339_utc_with_milliseconds() -> None:
    record = closed(ev(at=1), ev(at=MIN + 999))
    assert (record["start"], record["end"]) == (
        "2025-11-27T10:00:00.001Z",
        "2025-11-27T10:01:00.999Z",
    )
    assert record["duration_ms"] == MIN + 998


def test_revision_starts_at_one() -> None:
    assert closed(ev(at=0))["revision"] == 1


def test_event_count_excludes_heartbeats() -> None:
    record = closed(
        ev(at=0), ev("heartbeat", at=MIN), ev("heartbeat", at=2 * MIN), ev(ERROR, at=3 * MIN)
    )
    assert (record["event_count"], record["heartbeat_count"]) == (2, 2)


def test_type_counts_count_every_type_heartbeats_included() -> None:
    record = closed(ev(at=0), ev("heartbeat", at=MIN), ev(at=2 * MIN), ev("404", at=3 * MIN))
    assert record["type_counts"] == {"usage": 2, "heartbeat": 1, "404": 1}


def test_has_error_with_an_error_event() -> None:
    assert closed(ev(at=0), ev(ERROR, at=MIN))["has_error"] is True


def test_has_error_false_without_one() -> None:
    assert closed(ev(at=0), ev("log", at=MIN, message="error"))["has_error"] is False


def test_data_merge_earliest_event_time_wins_whatever_the_arrival() -> None:
    record = closed(
        ev(at=2 * MIN, data={"browser": "late", "os": "linux"}),
        ev(at=MIN, arrival=2 * MIN + 1, data={"browser": "early"}),
        ev(at=3 * MIN, data={"browser": "later", "lang": "fr"}),
    )
    assert record["data"] == {"browser": "early", "os": "linux", "lang": "fr"}


def test_data_merge_is_shallow() -> None:
    record = closed(ev(at=0, data={"env": {"a": 1}}), ev(at=MIN, data={"env": {"b": 2}}))
    assert record["data"] == {"env": {"a": 1}}


def test_data_merge_tie_on_event_time_keeps_the_first_in_log_order() -> None:
    record = closed(ev(at=0, data={"k": "first"}), ev(at=0, data={"k": "second"}))
    assert record["data"] == {"k": "first"}


def test_heartbeat_data_is_merged_too() -> None:
    assert closed(ev("heartbeat", at=0, data={"k": 1}))["data"] == {"k": 1}


def test_user_name_is_the_last_non_empty_by_event_time() -> None:
    record = closed(
        ev(at=0, user_name="Ann"),
        ev(at=2 * MIN, user_name="Ann B."),
        ev(at=3 * MIN, user_name=""),
        ev(at=4 * MIN),
        ev(at=MIN, arrival=4 * MIN + 1, user_name="Early"),
    )
    assert record["user_name"] == "Ann B."


def test_user_name_none_without_any() -> None:
    assert closed(ev(at=0))["user_name"] is None


def test_events_sorted_by_event_time_heartbeats_left_out() -> None:
    record = closed(
        ev(at=2 * MIN, id="c", offset=1),
        ev("heartbeat", at=MIN, id="hb", offset=2),
        ev(ERROR, at=0, arrival=2 * MIN + 1, id="a", offset=3),
        ev(at=MIN, arrival=2 * MIN + 2, id="b", offset=4),
    )
    assert [(e["id"], e["offset"]) for e in record["events"]] == [("a", 3), ("b", 4), ("c", 1)]


def test_event_entry_fields() -> None:
    record = closed(
        ev(
            ERROR,
            at=MIN,
            id="e1",
            source="checkout",
            message="boom",
            value=2.5,
            partition=3,
            offset=41,
        )
    )
    assert record["events"] == [
        {
            "id": "e1",
            "type": ERROR,
            "timestamp": ts(MIN),
            "source": "checkout",
            "message": "boom",
            "value": 2.5,
            "partition": 3,
            "offset": 41,
        }
    ]


def test_events_with_equal_time_keep_log_order() -> None:
    record = closed(ev(at=0, id="x"), ev(at=0, id="y"), ev(at=0, id="z"))
    assert [e["id"] for e in record["events"]] == ["x", "y", "z"]


def test_events_exactly_at_the_cap_are_not_truncated() -> None:
    record = closed(*[ev(at=m * MIN) for m in range(CAP)])
    assert (len(record["events"]), record["events_truncated"]) == (CAP, False)


def test_events_one_over_the_cap_are_truncated_keeping_the_earliest() -> None:
    record = closed(*[ev(at=m * MIN, id=str(m)) for m in range(CAP + 1)])
    assert [e["id"] for e in record["events"]] == [str(m) for m in range(CAP)]
    assert record["events_truncated"] is True
    assert record["event_count"] == CAP + 1


def test_late_early_event_displaces_the_latest_listed() -> None:
    events = [ev(at=m * MIN, id=str(m)) for m in range(1, CAP + 1)]
    record = closed(*events, ev(at=0, arrival=CAP * MIN + 1, id="0"))
    assert [e["id"] for e in record["events"]] == [str(m) for m in range(CAP)]
    assert record["events_truncated"] is True


def test_heartbeats_do_not_count_toward_the_cap() -> None:
    events = [ev(at=m * MIN) for m in range(CAP)]
    record = closed(*events, ev("heartbeat", at=CAP * MIN))
    assert record["events_truncated"] is False


def test_cap_zero_lists_nothing_and_says_so() -> None:
    eng = engine(dataclasses.replace(RULES, max_events_per_session=0))
    [record] = feed(eng, [ev(at=0), ev(END, at=MIN)])
    assert (record["events"], record["events_truncated"], record["event_count"]) == ([], True, 2)


def test_duration_ms_is_end_minus_start() -> None:
    record = closed(ev(at=MIN), ev(at=-MIN, arrival=MIN + 1), ev(at=3 * MIN + 7))
    assert record["duration_ms"] == 4 * MIN + 7


def test_user_id_of_auto_session_is_the_key() -> None:
    assert closed(ev(at=0, user="alice"))["user_id"] == "alice"


def test_user_id_of_manual_session_is_the_earliest_events() -> None:
    sid = "client-session-0001"
    record = closed(
        ev(at=MIN, sid=sid, user="late"),
        ev(at=0, arrival=MIN + 1, sid=sid, user="early"),
        ev(at=2 * MIN, sid=sid, user=None),
    )
    assert record["user_id"] == "early"


def test_manual_session_without_user_has_null_user_id() -> None:
    assert closed(ev(at=0, sid="client-session-0001", user=None))["user_id"] is None


def test_idle_record_after_advance_only() -> None:
    eng = engine()
    eng.apply(ev(at=0))
    [record] = advance(eng, 60 * MIN)
    assert record["end"] == ts(0)
