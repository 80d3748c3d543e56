"""Typed session records and the "highest revision wins" rule, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.export.consumer import SessionRecord, newest


def rec(sid: str, revision: int, project: str = "p", **extra: Any) -> SessionRecord:
    body = {"session_id": sid, "project": project, "revision": revision, "status": "closed",
            "start": "2026-12-01T10:00:00.000Z", "end": "2026-12-01T10:05:00.250Z",
            "duration_ms": 300_250, "close_reason": "timeout", "event_count": 2,
            "has_error": False, "events": [
                {"id": "e1", "type": "usage", "timestamp": "2026-12-01T10:00:00.000Z",
                 "source": "search", "message": None, "value": 2.5, "partition": 1, "offset": 7}],
            **extra}
    return SessionRecord.from_json(orjson.dumps(body))


def test_a_record_is_typed() -> None:
    r = rec("s1", 2, user_id="u1", user_name=None, data={"os": "Linux"})
    assert r.key == ("p", "s1")
    assert (r.revision, r.user_id, r.user_name, r.close_reason, r.duration_ms) == (2, "u1", None, "timeout", 300_250)
    assert r.start == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert r.end == datetime(2026, 12, 1, 10, 5, 0, 250_000, tzinfo=UTC)
    assert r.start.utcoffset() is not None
    [event] = r.events
    assert (event.id, event.type, event.source, event.value, event.partition, event.offset) == (
        "e1", "usage", "search", 2.5, 1, 7)
    assert (r.events_truncated, r.truncated, r.heartbeat_count, dict(r.data)) == (False, False, 0, {"os": "Linux"})
    assert r.record["session_id"] == "s1"


def test_epoch_ms_and_offset_times_are_read_too() -> None:
    r = rec("s1", 1, start=1_764_583_200_000, end="2026-12-01T11:00:00+01:00")
    assert r.start == datetime(2025, 12, 1, 10, 0, tzinfo=UTC)
    assert r.end == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", [b"[]", b"null", b"{}", b'{"session_id": "x"}', b"not json"])
def test_what_is_no_record_raises_a_value_key_or_type_error(value: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        SessionRecord.from_json(value)


def test_newest_keeps_the_highest_revision_per_project_and_session_id() -> None:
    records = [rec("a", 1), rec("a", 3), rec("b", 1), rec("a", 2), rec("a", 1, project="q"),
               rec("b", 1, event_count=9)]
    kept = newest(records)
    assert [(r.project, r.session_id, r.revision) for r in kept] == [("p", "a", 3), ("p", "b", 1), ("q", "a", 1)]
    assert kept[1].event_count == 9  # a repeat of the same revision: the later one read
