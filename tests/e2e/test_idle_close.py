"""Live, an idle session closes on time with no new input: the stream clock runs on wall
time once the worker is caught up (SPEC section 3, stream clock and idle close)."""

from __future__ import annotations

import time

import orjson
from kafka import KafkaConsumer, TopicPartition

from pipeline.worker.routing import Router

TIMEOUT_S = 3.0
LATE_AT_MOST_S = 1.0


def now_ms() -> int:
    return int(time.time() * 1000)


def stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def test_idle_session_closes_within_a_second_of_its_deadline(start_worker, publish):
    worker = start_worker(inactivity_timeout=TIMEOUT_S)
    user = "u-live-idle"
    partition = Router(worker.partitions).partition_of(user)

    consumer = KafkaConsumer(
        bootstrap_servers=worker.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    try:
        tps = [TopicPartition(worker.sessions_topic, p) for p in range(worker.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        assert not consumer.poll(timeout_ms=200), "the sessions topic starts empty"

        first = now_ms()
        event = {"type": "session", "timestamp": stamp(first), "user_id": user, "id": "live-1"}
        publish(worker.bootstrap, worker.events_topic,
                [(user.encode(), orjson.dumps(event), first, partition)])
        time.sleep(0.5)
        last = now_ms()
        event = {"type": "usage", "timestamp": stamp(last), "user_id": user, "id": "live-2"}
        publish(worker.bootstrap, worker.events_topic,
                [(user.encode(), orjson.dumps(event), last, partition)])
        deadline = last / 1000 + TIMEOUT_S

        records = []
        while not records and time.time() < deadline + 15:
            for batch in consumer.poll(timeout_ms=20).values():
                records.extend(batch)
        seen = time.time()
        assert records, f"no closed session {seen - deadline:.1f} s after the deadline"

        # nothing else comes
        time.sleep(0.5)
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    finally:
        consumer.close()

    assert len(records) == 1, [r.value for r in records]
    late = seen - deadline
    assert late <= LATE_AT_MOST_S, f"closed {late:.2f} s after its deadline"
    assert late >= -0.05, f"closed {-late:.2f} s before its deadline"

    session = orjson.loads(records[0].value)
    assert session["close_reason"] == "timeout"
    assert session["status"] == "closed"
    assert session["user_id"] == user
    assert session["start"] == stamp(first)
    assert session["end"] == stamp(last)  # the last activity, not when the close was noticed
    assert session["event_count"] == 2
    assert [e["id"] for e in session["events"]] == ["live-1", "live-2"]
