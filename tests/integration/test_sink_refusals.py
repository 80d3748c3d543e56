"""A message the broker refuses for good (too large, a partition the topic lacks) is
replaced by a small marker and a ``processing_failed`` dead letter, on a real broker,
instead of failing every send after it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from pipeline.devtools.checker import read_topic
from pipeline.worker.outbox import DEAD_LETTER, FORWARD, SESSION, Outgoing
from pipeline.worker.processor import Topics
from pipeline.worker.sink import KafkaSink

MIB = 1 << 20


def test_refused_messages_become_a_marker_and_a_dead_letter(settings_factory: Any) -> None:
    settings = settings_factory(topic_partitions=2)
    topics = Topics(events=settings.events_topic, repartition=settings.repartition_topic,
                    dlq=settings.dlq_topic, sessions=settings.sessions_topic,
                    updates=settings.updates_topic)
    huge = {"session_id": "s-huge", "project": "default", "user_id": "u", "status": "closed",
            "revision": 3, "data": {"blob": "x" * (2 * MIB)}, "events": []}
    ok = {"session_id": "s-ok", "project": "default", "revision": 1, "data": {}, "events": []}
    messages = [
        Outgoing(SESSION, b"s-huge", orjson.dumps(huge), 1_000),
        Outgoing(FORWARD, b"u", b'{"type":"usage"}', 1_000, partition=7, origin=f"{topics.events}:1:42:"),
        Outgoing(DEAD_LETTER, b"k", orjson.dumps({"error": "invalid_json", "value": "y" * (2 * MIB)}), 1_000),
        Outgoing(SESSION, b"s-ok", orjson.dumps(ok), 1_000),
    ]

    async def main() -> KafkaSink:
        sink = KafkaSink(settings.kafka_bootstrap, topics, "off", max_value_bytes=1024)
        await sink.start()
        try:
            await sink.send(messages)  # returns: nothing is left to retry
        finally:
            await sink.stop()
        return sink

    sink = asyncio.run(main())
    assert sink.refused == 3
    sessions = [orjson.loads(r.value) for r in read_topic(settings.kafka_bootstrap, topics.sessions, timeout_s=30)]
    assert sorted(s["session_id"] for s in sessions) == ["s-huge", "s-ok"]
    marker = next(s for s in sessions if s["session_id"] == "s-huge")
    assert marker["truncated"] is True and marker["revision"] == 3 and marker["data"] == {"blob": None}
    letters = [r for r in read_topic(settings.kafka_bootstrap, topics.dlq, timeout_s=30)]
    assert all(len(r.value) < 64 * 1024 for r in letters)
    found = [orjson.loads(r.value) for r in letters]
    assert [d["error"] for d in found] == ["processing_failed"] * 3
    by_topic = {d["refused_topic"]: d for d in found}  # the topic partitions: any order
    assert set(by_topic) == {topics.sessions, topics.repartition, topics.dlq}
    forward = by_topic[topics.repartition]
    assert (forward["partition"], forward["offset"]) == (1, 42)
    assert forward["value"] == '{"type":"usage"}' and "Unrecognized partition" in forward["detail"]
    assert "MessageSizeTooLarge" in by_topic[topics.sessions]["detail"]
    assert by_topic[topics.dlq]["value"] is None
