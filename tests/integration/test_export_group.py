"""Several exporters in one consumer group share the partitions, and take over each
other's when one stops: every session ends up in the table once, at its newest revision."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_export_throughput import session_record

from pipeline.config import Settings
from pipeline.devtools.process import SessionizerProcess
from pipeline.export.sql import open_table

SESSIONS = 3_000


def produce(settings: Settings, first: int, last: int, revision: int) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    for i in range(first, last):
        rec = {**session_record(i), "revision": revision, "event_count": revision}
        producer.send(settings.sessions_topic, key=rec["session_id"].encode(), value=orjson.dumps(rec))
    producer.flush(60)
    producer.close()


def rows(url: str) -> tuple[int, int]:
    with open_table(url) as table:
        count, revisions = table.fetch("SELECT count(*), coalesce(sum(revision), 0) FROM sessions")[0]
    return int(count), int(revisions)


def applied(url: str) -> int:
    """Records the table's offsets cover (the topic's offsets start at 0)."""
    with open_table(url) as table:
        return int(table.fetch("SELECT coalesce(sum(next_offset), 0) FROM sessionizer_offsets")[0][0])


def wait(predicate: Callable[[], bool], children: list[SessionizerProcess], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for child in children:
            assert child.proc.poll() is None, child.log_text()
        assert time.monotonic() < deadline, "\n".join(c.log_text()[-2000:] for c in children)
        time.sleep(0.2)


@pytest.mark.timeout(600)
def test_two_exporters_share_the_partitions_and_take_over(
    database_url: str, settings_factory: Callable[..., Settings], tmp_path: Path,
) -> None:
    settings = settings_factory(topic_partitions=4)
    args = ("--to", database_url, "--from-beginning", "--progress", "1", "--batch", "200",
            "--group", f"group-{tmp_path.name}")
    first = SessionizerProcess("export", settings, args=args, log_path=tmp_path / "first.log").spawn()
    second = SessionizerProcess("export", settings, args=args, log_path=tmp_path / "second.log").spawn()

    def held(child: SessionizerProcess) -> list[int]:
        found = re.findall(r"partitions \[([\d, ]*)\]", child.log_text())
        return [int(p) for p in found[-1].split(",") if p.strip()] if found else []

    try:
        produce(settings, 0, SESSIONS, 1)
        wait(lambda: rows(database_url)[0] == SESSIONS, [first, second])
        wait(lambda: sorted(held(first) + held(second)) == [0, 1, 2, 3] and held(first) != [], [first, second])
        assert first.stop(30) == 0, first.log_text()  # its partitions go to the other

        produce(settings, 0, SESSIONS, 2)  # every session amended
        produce(settings, 0, SESSIONS // 2, 1)  # stale repeats: change nothing
        wait(lambda: applied(database_url) == 2 * SESSIONS + SESSIONS // 2, [second])
        assert rows(database_url) == (SESSIONS, 2 * SESSIONS)
        wait(lambda: held(second) == [0, 1, 2, 3], [second])
        assert second.stop(30) == 0, second.log_text()
        with open_table(database_url) as table:
            assert table.fetch("SELECT min(revision), max(revision), sum(event_count) FROM sessions") == [
                (2, 2, 2 * SESSIONS)]
        assert "stopped: exported" in first.log_text() and "stopped: exported" in second.log_text()
    finally:  # a failed wait leaves no exporter behind
        for child in (first, second):
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
