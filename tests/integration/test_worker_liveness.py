"""A real ``sessionizer worker`` on its loopback admin port: ready once caught up, and
its liveness fails while a partition with input waiting applies nothing (Redis
frozen), then recovers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer
from worker_admin import admin

from pipeline.config import Settings
from pipeline.devtools.process import SessionizerProcess
from pipeline.devtools.services import EmbeddedRedis, free_port


@pytest.fixture
def frozen_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=False) as server:
        yield server


def wait_for(check: Callable[[], bool], what: str, worker: SessionizerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}:\n{worker.log_text()[-3000:]}"
        time.sleep(0.5)


def test_liveness_fails_on_a_stuck_partition_and_recovers(
    frozen_redis: EmbeddedRedis, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(
        redis_url=frozen_redis.url, web_port=free_port(), liveness_stall=3,
        redis_socket_timeout=1, metrics_interval=0.5,
    )
    worker = SessionizerProcess("worker", settings, log_path=tmp_path / "worker.log").spawn()
    try:
        worker.wait_ready()
        wait_for(lambda: admin(settings, "/readyz")[0] == 200, "never ready", worker)
        assert admin(settings, "/healthz") == (200, {"ok": True, "partitions": [0, 1, 2, 3]})
        frozen_redis.pause()  # every Redis command now times out: nothing can be applied
        try:
            producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks=1)
            now_ms = int(time.time() * 1000)
            for i in range(20):
                event = {"type": "usage", "timestamp": now_ms, "user_id": f"stuck-{i}"}
                producer.send(settings.events_topic, key=f"stuck-{i}".encode(), value=orjson.dumps(event))
            producer.flush(30)
            producer.close(5)
            wait_for(lambda: admin(settings, "/healthz")[0] == 503, "liveness never failed", worker)
            status, body = admin(settings, "/healthz")
            assert status == 503
            assert body["ok"] is False and body["stalled"] and "applied nothing" in body["reason"]
        finally:
            frozen_redis.resume()
        wait_for(lambda: admin(settings, "/healthz")[0] == 200, "liveness never recovered", worker)
        wait_for(lambda: admin(settings, "/readyz")[0] == 200, "never ready again", worker)
    finally:
        worker.stop()
