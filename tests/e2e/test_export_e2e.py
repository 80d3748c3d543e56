"""``sessionizer export`` end to end: a worker, the exporter killed twice, late events.

The worker sessionizes three waves of users; an exporter process writes the closed
sessions into a database and is killed with SIGKILL in the middle of its work twice;
late events then amend sessions of the first wave (revision 2). The table must equal,
row for row, the newest record of every session on the ``sessions`` topic: none lost,
none doubled, none left at an older revision. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.devtools.process import SessionizerProcess
from pipeline.export.consumer import SessionRecord, newest
from pipeline.export.sql import SessionTable, open_table

USERS_PER_WAVE = 600
LATE = 200  # first-wave sessions amended by a late event


def wave_events(wave: int, now_ms: int) -> list[tuple[bytes, bytes, int, None]]:
    """Each user of the wave: start, usage, sessionend (closes at once as ``ended``)."""
    out = []
    for u in range(USERS_PER_WAVE):
        user = f"w{wave}-user-{u}"
        t0 = now_ms - 60_000 + u
        for step, kind in enumerate(("session", "usage", "sessionend")):
            event = {"type": kind, "timestamp": t0 + step * 2_000, "user_id": user,
                     "id": f"{user}-{step}", "project": f"proj{u % 3}"}
            out.append((user.encode(), orjson.dumps(event), now_ms, None))
    return out


def late_events(now_ms: int, wave_now_ms: int) -> list[tuple[bytes, bytes, int, None]]:
    """A usage event inside each of the first ``LATE`` first-wave sessions."""
    out = []
    for u in range(LATE):
        user = f"w1-user-{u}"
        t = wave_now_ms - 60_000 + u + 3_000
        event = {"type": "error", "timestamp": t, "user_id": user, "id": f"{user}-late",
                 "project": f"proj{u % 3}", "message": "late"}
        out.append((user.encode(), orjson.dumps(event), now_ms, None))
    return out


def table_rows(table: SessionTable) -> dict[tuple[str, str], dict[str, Any]]:
    rows = table.fetch("SELECT project, session_id, revision, record FROM sessions")
    out = {}
    for project, sid, revision, rec in rows:
        record = rec if isinstance(rec, dict) else orjson.loads(rec)
        assert record["revision"] == revision
        out[(project, sid)] = record
    return out


def count(url: str) -> int:
    with open_table(url) as table:
        return int(table.fetch("SELECT count(*) FROM sessions")[0][0])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, log: Callable[[], str],
             child: SessionizerProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert child.proc.poll() is None, f"the exporter exited:\n{log()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log()[-3000:]}"
        time.sleep(0.02)


@pytest.mark.timeout(600)
def test_export_survives_sigkill_and_keeps_the_newest_revision(
    database_url: str, start_worker: Callable[..., Any], publish: Callable[..., Any],
    read_topic: Callable[..., Any], tmp_path: Path,
) -> None:
    worker = start_worker(topic_partitions=4)
    settings = worker.settings
    exporter_args = ["--to", database_url, "--from-beginning", "--progress", "1", "--batch", "50",
                     "--group", f"export-{tmp_path.name}"]
    log_path = tmp_path / "export.log"
    logs = lambda: worker.log_tail() + log_path.read_text(errors="replace")  # noqa: E731

    def start_exporter() -> SessionizerProcess:
        return SessionizerProcess("export", settings, args=exporter_args, log_path=log_path).spawn()

    total = 3 * USERS_PER_WAVE
    partial_kills = 0
    exporter = start_exporter()
    for wave in (1, 2):
        now = int(time.time() * 1000)
        if wave == 1:
            first_wave_now = now
        publish(settings.kafka_bootstrap, settings.events_topic, wave_events(wave, now))
        done = wave * USERS_PER_WAVE
        wait_for(lambda done=done: count(database_url) > done - USERS_PER_WAVE, 180,
                 f"wave {wave} rows", logs, exporter)
        exporter.kill()  # SIGKILL in the middle of its work
        seen = count(database_url)
        partial_kills += int(seen < done)
        exporter = start_exporter()
    now = int(time.time() * 1000)
    publish(settings.kafka_bootstrap, settings.events_topic, wave_events(3, now))
    publish(settings.kafka_bootstrap, settings.events_topic, late_events(now, first_wave_now))

    records = read_topic(settings.kafka_bootstrap, settings.sessions_topic, total + LATE,
                         timeout=240, settle=2)
    expected = {r.key: r for r in newest([SessionRecord.from_json(m.value) for m in records])}
    assert len(expected) == total
    assert sum(r.revision == 2 for r in expected.values()) == LATE

    def converged() -> bool:
        with open_table(database_url) as table:
            rows = table_rows(table)
        return len(rows) == total and all(rows[k]["revision"] == r.revision for k, r in expected.items()
                                          if k in rows)

    wait_for(converged, 240, "the table to hold every session's newest revision", logs, exporter)
    assert exporter.stop(30) == 0, logs()
    with open_table(database_url) as table:
        rows = table_rows(table)
        offsets = table.fetch("SELECT kafka_partition, next_offset FROM sessionizer_offsets")
    assert rows == {key: dict(rec.record) for key, rec in expected.items()}
    by_partition: dict[int, int] = {}
    for m in records:
        by_partition[m.partition] = max(by_partition.get(m.partition, 0), m.offset + 1)
    assert dict(offsets) == by_partition
    text = log_path.read_text()
    assert text.count("exporting ") == 3 and "stopped: exported" in text
    print(f"\n{database_url.split(':')[0]}: {partial_kills} of 2 kills mid-export; "
          + text.strip().splitlines()[-1])
