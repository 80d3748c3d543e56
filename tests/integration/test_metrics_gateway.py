"""A real ``sessionizer gateway`` process on the embedded broker, with default settings
but its addresses: ``GET /metrics`` on the admin port counts its requests and the
events it published; its JSON log is JSON lines; the public port answers 401 without
a credential, 403 across projects, 429 past the failed-authentication limit, and
serves no admin endpoint; weak keys are refused at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.devtools.process import SessionizerProcess
from pipeline.devtools.services import EmbeddedBroker, free_port

KEY = "metrics-key-1234567890"
BLOG_KEY = "blog-Tm4Pc9Yj6Ds1Gf"


class Gateway(SessionizerProcess):
    def __init__(self, env: dict[str, str], port: int, admin_port: int, log_path: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        super().__init__("gateway", env=env, log_path=log_path, timeout_s=30)

    def request(
        self, path: str, body: Any = None, key: str | None = KEY, *, admin: bool = False
    ) -> tuple[int, bytes, Any]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else orjson.dumps(body)
        base = self.admin if admin else self.base
        request = urllib.request.Request(base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers


@pytest.fixture
def gateway(
    broker: EmbeddedBroker, topic_factory: Callable[..., str], tmp_path: Path
) -> Iterator[Gateway]:
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    # otherwise the defaults: the report's and the limits' included
    env.update({
        "SESSIONIZER_KAFKA_BOOTSTRAP": broker.bootstrap,
        "SESSIONIZER_EVENTS_TOPIC": topic_factory(partitions=2, stem="events"),
        "SESSIONIZER_API_KEYS": f"{KEY}:shop,{BLOG_KEY}:blog",
        "SESSIONIZER_GATEWAY_HOST": "127.0.0.1",
        "SESSIONIZER_GATEWAY_PORT": str(port),
        "SESSIONIZER_GATEWAY_ADMIN_PORT": str(admin_port),
        "SESSIONIZER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # not read by these tests
        "SESSIONIZER_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    process = Gateway(env, port, admin_port, tmp_path / "gateway.log")
    try:
        process.start()
        yield process
    finally:
        process.stop()


def test_the_gateway_serves_its_metrics_and_logs_json(gateway: Gateway) -> None:
    now_ms = int(time.time() * 1000)
    events = [{"type": "usage", "timestamp": now_ms, "user_id": f"user-{i}"} for i in range(3)]
    assert gateway.request("/v1/events", events)[0] == 202
    assert gateway.request("/v1/events", events[:1], key="not-a-key-at-all")[0] == 401
    assert gateway.request("/api/v2/events/session/heartbeat?id=user-1")[0] == 200

    assert gateway.request("/metrics", key=None)[0] == 404  # not on the public port
    status, body, headers = gateway.request("/metrics", key=None, admin=True)
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
    assert value(requests, endpoint="unmatched", method="GET", status="404") == 1  # public /metrics
    assert value("sessionizer_gateway_events_published_total") == 4
    assert value("sessionizer_gateway_publish_duration_seconds_count") == 2
    assert value("sessionizer_gateway_publish_failures_total") == 0

    gateway.stop()
    lines = [line for line in gateway.log_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "message", "extra"} <= set(entry), line
    assert any("gateway listening on" in json.loads(line)["message"] for line in lines)


def test_with_default_settings_the_gateway_guards_its_surfaces(gateway: Gateway) -> None:
    """401 without a credential, 403 across projects, no admin endpoint on the public
    port, and 429 for a client past the failed-authentication limit."""
    for path in ("/healthz", "/readyz", "/metrics", "/stats"):
        assert gateway.request(path, key=None)[0] == 404, path
        assert gateway.request(path, key=KEY)[0] == 404, path
    assert gateway.request("/readyz", key=None, admin=True)[0] == 200
    assert gateway.request("/api/sessions", key=None, admin=True)[0] == 404
    assert gateway.request("/v1/events", [], key=None)[0] == 401
    status, body, _ = gateway.request("/api/sessions", key=None)
    assert (status, orjson.loads(body)["error"]) == (401, "unauthorized")
    for path in ("/api/sessions?project=blog", "/api/sessions/stats?project=blog",
                 "/api/sessions/abcdefgh12?project=blog"):
        status, body, _ = gateway.request(path)
        assert (status, orjson.loads(body)["error"]) == (403, "forbidden_project"), path
    # eight more failures (two above: ingestion and report share the count) reach the
    # default limit of ten a minute
    for _ in range(8):
        assert gateway.request("/v1/events", [], key="guess-Wq3Er5Ty7Ui9Op")[0] == 401
    status, body, headers = gateway.request("/v1/events", [], key=KEY)
    assert status == 429
    assert orjson.loads(body)["limit"] == "auth_failures"
    assert int(headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ("demo-key-change-me:demo", "contains the placeholder"),
        ("replace-me-key:replace-me-project", "is 14 characters long"),
        ("abc1234567:shop", "is 10 characters long"),
    ],
)
def test_the_gateway_refuses_weak_keys_at_start(keys: str, says: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env["SESSIONIZER_API_KEYS"] = keys
    env["SESSIONIZER_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"  # refused before connecting
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "gateway"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "SESSIONIZER_API_KEYS" in lines[0] and says in lines[0]
    assert keys.split(":")[0] not in lines[0]


def test_the_gateway_refuses_a_weak_report_token_at_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env["SESSIONIZER_API_KEYS"] = f"{KEY}:shop"
    env["SESSIONIZER_REPORT_TOKEN"] = "change-me"
    env["SESSIONIZER_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "gateway"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessionizer: error: SESSIONIZER_REPORT_TOKEN:"), lines
