"""A real ``sessionizer gateway`` process on the embedded broker: ``GET /metrics`` counts
its requests and the events it published; its JSON log is JSON lines."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from processes import Child
from prometheus_client.parser import text_string_to_metric_families

from pipeline.services import EmbeddedBroker, free_port

KEY = "metrics-key-1234567890"


class Gateway(Child):
    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        super().__init__("gateway", env, log_path)

    def request(self, path: str, body: Any = None, key: str | None = KEY) -> tuple[int, bytes, Any]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"gateway exited:\n{self.log()[-3000:]}"
            try:
                if self.request("/healthz", key=None)[0] == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"gateway not ready:\n{self.log()[-3000:]}"
            time.sleep(0.1)


@pytest.fixture
def gateway(
    broker: EmbeddedBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> Iterator[Gateway]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env.update({
        "SESSIONIZER_KAFKA_BOOTSTRAP": broker.bootstrap,
        "SESSIONIZER_EVENTS_TOPIC": topic_factory(partitions=2, stem="events"),
        "SESSIONIZER_API_KEYS": f"{KEY}:shop",
        "SESSIONIZER_GATEWAY_HOST": "127.0.0.1",
        "SESSIONIZER_GATEWAY_PORT": str(port),
        "SESSIONIZER_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    process = Gateway(env, port, tmp_path / "gateway.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_the_gateway_serves_its_metrics_and_logs_json(gateway: Gateway) -> None:
    now_ms = int(time.time() * 1000)
    events = [{"type": "usage", "timestamp": now_ms, "user_id": f"user-{i}"} for i in range(3)]
    assert gateway.request("/v1/events", events)[0] == 202
    assert gateway.request("/v1/events", events[:1], key="not-a-key-at-all")[0] == 401
    assert gateway.request("/api/v2/events/session/heartbeat?id=user-1")[0] == 200

    status, body, headers = gateway.request("/metrics", key=None)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    requests = "sessionizer_gateway_requests_total"
    assert value(requests, endpoint="/v1/events", method="POST", status="202") == 1
    assert value(requests, endpoint="/v1/events", method="POST", status="401") == 1
    assert value(requests, endpoint="/api/v2/events/session/heartbeat", method="GET", status="200") == 1
    assert value(requests, endpoint="/healthz", method="GET", status="200") >= 1
    assert value("sessionizer_gateway_events_published_total") == 4
    assert value("sessionizer_gateway_publish_duration_seconds_count") == 2
    assert value("sessionizer_gateway_publish_failures_total") == 0

    gateway.stop()
    lines = [line for line in gateway.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "message", "extra"} <= set(entry), line
    assert any("gateway listening on" in json.loads(line)["message"] for line in lines)
