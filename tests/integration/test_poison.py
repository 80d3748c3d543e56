"""Records that make processing fail never stop their partition: a ``sessionizer worker``
process on every partition fed, between normal users, records the worker cannot handle
(data nested deeper than it can encode), a session of twenty 60 KB events, a value of
200 KB of control bytes and a record timestamp ten years ahead. Every normal user gets
the exact session, every bad record a dead letter (by partition and offset), every
outgoing message is under 1 MiB, and the consumer lag goes back to 0."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from pipeline.devtools.checker import consumer_lag, read_topic
from pipeline.devtools.process import SessionizerProcess
from pipeline.worker.routing import Router

PARTITIONS = 3
MIB = 1 << 20
YEAR_MS = 365 * 24 * 3600 * 1000


def _deep_event(user: str, at_ms: int, levels: int) -> bytes:
    """An event whose data is nested ``levels`` deep (past what orjson writes)."""
    head = orjson.dumps({"type": "usage", "timestamp": at_ms, "user_id": user})[:-1]
    return head + b',"data":' + b'{"d":' * levels + b'"leaf"' + b"}" * levels + b"}"


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(1.0)


@pytest.mark.timeout(600)
def test_poison_records_are_dead_lettered_and_every_partition_goes_on(
    settings_factory: Any, tmp_path: Path
) -> None:
    settings = settings_factory(topic_partitions=PARTITIONS, inactivity_timeout=5.0,
                                reopen_grace=60.0, record_max_attempts=2,
                                max_future_skew=1.0)
    worker = SessionizerProcess("worker", settings, log_path=tmp_path / "worker.log").spawn()
    router = Router(PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             max_request_size=4 << 20, max_in_flight_requests_per_connection=1)
    try:
        worker.wait_ready(90)
        now = int(time.time() * 1000)
        normal = [f"normal-{n}" for n in range(24)]
        bad: dict[tuple[int, int], str] = {}  # (partition, offset) -> what it was

        def send(user: str, body: dict[str, Any] | bytes, *, timestamp_ms: int | None = None) -> tuple[int, int]:
            value = body if isinstance(body, bytes) else orjson.dumps(body)
            meta = producer.send(settings.events_topic, key=user.encode(), value=value,
                                 partition=router.partition_of(user),
                                 timestamp_ms=timestamp_ms or now).get(30)
            return meta.partition, meta.offset

        for n, user in enumerate(normal):
            send(user, {"type": "session", "timestamp": now + n, "user_id": user, "id": f"{user}-0"})
        for p in range(PARTITIONS):  # on every partition, between the normal users' events
            user = next(f"poison-{p}-{i}" for i in range(1000) if router.partition_of(f"poison-{p}-{i}") == p)
            bad[send(user, _deep_event(user, now, 300))] = "deep"
            bad[send(user, bytes(range(1, 32)) * 6_500)] = "control bytes"
        for n, user in enumerate(normal):
            send(user, {"type": "usage", "timestamp": now + 100 + n, "user_id": user, "id": f"{user}-1"})
        # a record timestamp ten years ahead: clamped, it closes nobody's session early
        send("future-user", {"type": "usage", "timestamp": now, "user_id": "future-user", "id": "f"},
             timestamp_ms=now + 10 * YEAR_MS)
        # one session of twenty 60 KB events: 1.2 MB of messages, trimmed under the limit
        blob = "x" * 60_000
        for i in range(20):
            kind = "session" if i == 0 else "sessionend" if i == 19 else "usage"
            send("big-user", {"type": kind, "timestamp": now + i, "user_id": "big-user",
                              "id": f"big-{i}", "message": blob})
        for n, user in enumerate(normal):
            send(user, {"type": "sessionend", "timestamp": now + 200 + n, "user_id": user, "id": f"{user}-2"})
        producer.flush(30)

        def sessions() -> list[Any]:
            return read_topic(settings.kafka_bootstrap, settings.sessions_topic, timeout_s=30)

        _wait(lambda: len({orjson.loads(r.value)["user_id"] for r in sessions()}
                          & {*normal, "big-user", "future-user"}) == len(normal) + 2,
              240, f"not every session closed:\n{worker.log_text()[-4000:]}")
        records = sessions()
        latest: dict[str, dict[str, Any]] = {}
        for record in records:
            assert len(record.value) < MIB
            session = orjson.loads(record.value)
            latest[session["user_id"]] = session
        for user in normal:
            session = latest[user]
            assert (session["event_count"], session["close_reason"]) == (3, "ended"), session
            assert [e["id"] for e in session["events"]] == [f"{user}-0", f"{user}-1", f"{user}-2"]
        big = latest["big-user"]
        assert big["event_count"] == 20 and big["truncated"] is True
        assert latest["future-user"]["close_reason"] == "timeout"

        letters = read_topic(settings.kafka_bootstrap, settings.dlq_topic, timeout_s=30)
        assert all(len(r.value) < MIB for r in letters)
        found = {(d["partition"], d["offset"]): d for d in map(lambda r: orjson.loads(r.value), letters)}
        for where, what in bad.items():
            assert where in found, f"no dead letter for the {what} record at {where}"
            letter = found[where]
            if what == "deep":
                # processing_failed while the parser lets such depth through; invalid_event
                # where the parser limits nesting (SPEC section 2)
                assert letter["error"] in ("processing_failed", "invalid_event"), letter
                if letter["error"] == "processing_failed":
                    assert "Recursion limit" in letter["detail"], letter["detail"]
            else:
                assert letter["error"] == "too_large" and letter["value_truncated"] is True

        def lag() -> int:
            return sum(consumer_lag(settings.kafka_bootstrap, settings.consumer_group,
                                    [settings.events_topic, settings.repartition_topic]).values())

        _wait(lambda: lag() == 0, 60, "consumer lag not back to 0")
        assert worker.proc.poll() is None, "the worker died"
        metrics = worker.log_text()
        assert "We experienced a crash" not in metrics
    finally:
        producer.close(timeout=5)
        worker.stop()
