"""The consumer API on a real broker: highest revision wins, commit after processing, resume."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_export_table import record

from pipeline.config import Settings
from pipeline.export.consumer import SessionConsumer, SessionRecord, newest


def send(settings: Settings, records: list[dict[str, Any] | bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for rec in records:
        if isinstance(rec, bytes):
            producer.send(settings.sessions_topic, key=b"junk", value=rec)
        else:
            producer.send(settings.sessions_topic, key=rec["session_id"].encode(), value=orjson.dumps(rec))
    producer.flush(30)
    producer.close()


def take(consumer: SessionConsumer, count: int, timeout_s: float = 60) -> list[SessionRecord]:
    got: list[SessionRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        batch = consumer.poll(500)
        if batch is not None:
            got += batch.sessions
            consumer.commit(batch)
    return got


def test_newest_revision_once_then_resume_after_the_commit(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(topic_partitions=2)
    send(settings, [record("a", 1), record("a", 3), record("b", 1), record("a", 1, project="p2"),
                    record("a", 2), b"not json", record("c", 1)])
    with SessionConsumer(settings, group_id="g1", from_beginning=True, session_timeout_ms=6000) as c:
        got = take(c, 4)
        time.sleep(1.5)
        batch = c.poll(500)
        assert batch is None or batch.sessions == []  # revision 2 of a came after 3: left out
    assert sorted((s.project, s.session_id, s.revision) for s in got) == [
        ("p1", "a", 3), ("p1", "b", 1), ("p1", "c", 1), ("p2", "a", 1)]
    a = next(s for s in got if s.key == ("p1", "a"))
    assert (a.duration_ms, a.events[0].type, a.start.isoformat()) == (180_000, "usage", "2026-12-01T10:00:00+00:00")

    send(settings, [record("b", 2)])
    with SessionConsumer(settings, group_id="g1", session_timeout_ms=6000) as c:
        again = take(c, 1)
    assert [(s.session_id, s.revision) for s in again] == [("b", 2)]

    asked: list[tuple[str, list[int]]] = []

    def resume(topic: str, partitions: list[int]) -> dict[int, int]:
        asked.append((topic, partitions))
        return dict.fromkeys(partitions, 0)  # everything from the start, whatever g1 committed

    with SessionConsumer(settings, group_id="g1", resume=resume, session_timeout_ms=6000) as c:
        replay: list[SessionRecord] = []
        deadline = time.monotonic() + 60
        while ("p1", "b", 2) not in {(*s.key, s.revision) for s in replay}:
            assert time.monotonic() < deadline, replay
            replay += take(c, 1, timeout_s=1)
    assert asked == [(settings.sessions_topic, [0, 1])]
    assert sorted((*s.key, s.revision) for s in newest(replay)) == [
        ("p1", "a", 3), ("p1", "b", 2), ("p1", "c", 1), ("p2", "a", 1)]
    seen: dict[tuple[str, str], int] = {}
    for s in replay:  # never an older revision after a newer one
        assert seen.get(s.key, 0) < s.revision
        seen[s.key] = s.revision
