"""A real ``sessionizer worker`` process serves its metrics at ``GET /metrics`` and, with
``SESSIONIZER_LOG_FORMAT=json``, logs nothing but JSON lines."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from worker_admin import admin

from pipeline.config import Settings
from pipeline.devtools.process import SessionizerProcess
from pipeline.devtools.services import free_port


@pytest.fixture
def worker(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[SessionizerProcess]:
    settings = settings_factory(
        redis_key_prefix=f"metrics-{uuid.uuid4().hex[:8]}",
        web_port=free_port(),
        metrics_interval=0.5,
        inactivity_timeout=2,
        log_format="json",
    )
    process = SessionizerProcess("worker", settings, log_path=tmp_path / "worker.log").spawn()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://{settings.web_host}:{settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the series that have ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def test_the_worker_serves_its_metrics(worker: SessionizerProcess) -> None:
    settings = worker.settings
    now_ms = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    records: list[tuple[str, Any]] = []
    for i in range(5):
        user = f"metrics-user-{i}"
        records.append((user, {"type": "session", "timestamp": now_ms, "user_id": user}))
        records.append((user, {"type": "usage", "timestamp": now_ms + 10, "user_id": user, "source": "cart"}))
    records.append(("metrics-user-9", {"type": "checkout-v2", "timestamp": now_ms, "user_id": "metrics-user-9"}))
    records.append(("metrics-user-8", b"{not json"))
    try:
        for key, body in records:
            value = body if isinstance(body, bytes) else orjson.dumps(body)
            producer.send(settings.events_topic, key=key.encode(), value=value)
            producer.flush(30)
    finally:
        producer.close(5)

    # all six sessions go idle and close 2 s after their last arrival
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(settings)
        closed = total(samples, "sessionizer_sessions_closed_total", reason="timeout")
        if closed >= 6 and total(samples, "sessionizer_open_sessions") == 0:
            break
        assert time.monotonic() < deadline, f"closed {closed}:\n{worker.log_text()[-2000:]}"
        time.sleep(0.5)

    assert total(samples, "sessionizer_records_total") == 12
    assert total(samples, "sessionizer_events_total", type="session") == 5
    assert total(samples, "sessionizer_events_total", type="usage") == 5
    assert total(samples, "sessionizer_events_total", type="other") == 1
    assert total(samples, "sessionizer_events_rejected_total", reason="invalid_json") == 1
    assert total(samples, "sessionizer_sessions_opened_total") == 6
    assert total(samples, "sessionizer_sessions_closed_total") == 6
    assert total(samples, "sessionizer_sink_messages_total", kind="session") == 6
    assert total(samples, "sessionizer_sink_messages_total", kind="dead_letter") == 1
    # every idle close was emitted within a second and a half of its deadline
    assert total(samples, "sessionizer_close_latency_seconds_count") == 6
    assert total(samples, "sessionizer_close_latency_seconds_bucket", le="1.5") == 6
    assert total(samples, "sessionizer_batch_records_count") >= 1
    assert total(samples, "sessionizer_batch_records_sum") == 12
    assert total(samples, "sessionizer_redis_seconds_count", op="commit") >= 1
    assert total(samples, "sessionizer_redis_seconds_count", op="claim") == 4
    assert total(samples, "sessionizer_redis_seconds_count", op="load_all") == 4
    assert total(samples, "sessionizer_redis_seconds_count", op="load") == 0  # every state held
    assert total(samples, "sessionizer_assigned_partitions") == 4
    for p in range(4):
        assert total(samples, "sessionizer_partition_epoch", partition=str(p)) >= 1
        assert total(samples, "sessionizer_partition_state_held", partition=str(p)) == 1
        assert ("sessionizer_open_sessions", (("partition", str(p)),)) in samples
        lag = total(samples, "sessionizer_consumer_lag", topic=settings.events_topic, partition=str(p))
        assert lag == 0
    assert total(samples, "process_resident_memory_bytes") > 0

    # SESSIONIZER_LOG_FORMAT=json: every line of output is one JSON object
    lines = [line for line in worker.log_text().splitlines() if line.strip()]
    assert len(lines) > 10
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "message", "extra"} <= set(entry), line
    assert any(json.loads(line)["message"].startswith("assigned partitions") for line in lines)


def test_at_a_steady_input_rate_the_exported_lag_stays_near_zero(worker: SessionizerProcess) -> None:
    """What KEDA scales on (sessionizer_consumer_lag, from the applied offsets) is the
    backlog: at a steady rate the worker keeps up, so it stays near 0 rather than
    tracking the input rate; then the worker is ready and alive on its admin port."""
    settings = worker.settings
    assert settings.web_host == "127.0.0.1"  # the admin port is on loopback by default
    rate, seconds = 100, 12  # events per second
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks=1, linger_ms=5)
    lags: list[float] = []
    try:
        started = time.monotonic()
        sent = 0
        last_scrape = started
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                user = f"steady-{sent % 50}"
                event = {"type": "usage", "timestamp": int(time.time() * 1000), "user_id": user}
                producer.send(settings.events_topic, key=user.encode(), value=orjson.dumps(event))
                sent += 1
            producer.flush(10)
            now = time.monotonic()
            if now - started > 4 and now - last_scrape >= 0.5:  # past the first assignment
                last_scrape = now
                lags.append(total(scrape(settings), "sessionizer_consumer_lag"))
            time.sleep(0.02)
    finally:
        producer.close(5)
    lags.sort()
    median = lags[len(lags) // 2]
    print(f"exported lag at {rate} events/s: median {median:g}, max {lags[-1]:g}, samples {len(lags)}")
    assert len(lags) >= 8
    # the gauge is refreshed every 0.5 s and the worker applies a batch at least every
    # tick: well under one second of input is waiting (a lag that tracked the input
    # rate would hold about a second's worth, 100, or grow)
    assert median <= rate / 2, lags
    deadline = time.monotonic() + 20
    while total(scrape(settings), "sessionizer_consumer_lag") > 0:
        assert time.monotonic() < deadline, "the lag did not drain"
        time.sleep(0.5)
    status, body = admin(settings, "/readyz")
    assert (status, body["status"]) == (200, "ready"), body
    status, body = admin(settings, "/healthz")
    assert (status, body["ok"]) == (200, True), body
