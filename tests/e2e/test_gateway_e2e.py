"""Whole processes: ``sessionizer gateway``, the real Exceptionless Node client, the Python
client, and (when the ``worker_process`` fixture exists) a ``sessionizer worker``.

The real client is ``@exceptionless/node`` 3.2.x, installed with npm into
``tests/e2e/exceptionless_client/node_modules`` once per test session and driven
unmodified by ``session.mjs`` there. Without npm or node these tests skip.

Two kinds of test:

- **events**: what the gateway publishes to the events topic (runs with the
  broker fixture alone);
- **sessions**: the closed session the worker emits to the sessions topic. They
  use a ``worker_process`` fixture: a running ``sessionizer worker`` whose
  ``.settings`` (:class:`pipeline.config.Settings`) name the broker and the
  topics it uses. Until that fixture exists they skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.client import SessionClient
from pipeline.devtools.process import SessionizerProcess, answers
from pipeline.devtools.services import free_port

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = Path(__file__).resolve().parent / "exceptionless_client"
KEY = "e2e-key-1234567890"
PROJECT = "shop"
USER_ID = "alice@example.com"
USER_NAME = "Alice"


# -- the real Exceptionless client -------------------------------------------------------


@pytest.fixture(scope="session")
def node_client() -> Path:
    """``session.mjs`` with ``@exceptionless/node`` installed beside it (npm, once)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are needed to install and run @exceptionless/node")
    if not (CLIENT_DIR / "node_modules" / "@exceptionless" / "node" / "package.json").exists():
        command = "ci" if (CLIENT_DIR / "package-lock.json").exists() else "install"
        try:
            done = subprocess.run(
                [npm, command, "--no-audit", "--no-fund"],
                cwd=CLIENT_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install of @exceptionless/node took over 300 s")
        if done.returncode != 0:
            pytest.skip(f"npm {command} of @exceptionless/node failed: {done.stderr[-600:]}")
    return CLIENT_DIR / "session.mjs"


def run_node_session(
    script: Path, gateway_url: str, workdir: Path, order: str = "batch-first"
) -> str:
    """Run one session with the real client; returns its session id."""
    env = {
        **os.environ,
        "EXCEPTIONLESS_SERVER_URL": gateway_url,
        "EXCEPTIONLESS_API_KEY": KEY,
        "SESSION_USER_ID": USER_ID,
        "SESSION_USER_NAME": USER_NAME,
        "SESSION_ORDER": order,
    }
    # cwd: the client keeps its settings in ./.exceptionless
    done = subprocess.run(
        ["node", str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"node exited {done.returncode}: {done.stderr[-2000:]}"
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert result["refused"] == []
    return str(result["session_id"])


# -- the gateway process -----------------------------------------------------------------


class GatewayProcess(SessionizerProcess):
    """``sessionizer gateway``; ready once its ``/readyz`` answers 200 (the broker answers)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("gateway", env=env, log_path=log_path, timeout_s=30,
                         ready=lambda p: answers(f"{self.admin_url}/readyz"))
        self.url = f"http://127.0.0.1:{self.ports['gateway_port']}"
        #: /healthz, /readyz, /metrics: not on the public url
        self.admin_url = f"http://127.0.0.1:{self.ports['gateway_admin_port']}"

    def log(self) -> str:
        return self.log_text()[-4000:]


def start_gateway(
    bootstrap: str, events_topic: str, log_path: Path, **extra_env: str
) -> GatewayProcess:
    """``sessionizer gateway`` on free ports, ready; ``extra_env``: more variables."""
    env = {
        "SESSIONIZER_KAFKA_BOOTSTRAP": bootstrap,
        "SESSIONIZER_EVENTS_TOPIC": events_topic,
        "SESSIONIZER_API_KEYS": f"{KEY}:{PROJECT}",
        "SESSIONIZER_GATEWAY_HOST": "127.0.0.1",
        **extra_env,
    }
    return GatewayProcess(env, log_path).start()


def stop_gateway(gateway: GatewayProcess) -> int | None:
    return gateway.stop()


@pytest.fixture
def events_topic(topic_factory: Any) -> str:
    return str(topic_factory(partitions=4, stem="events"))


@pytest.fixture
def gateway(broker: Any, events_topic: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    running = start_gateway(broker.bootstrap, events_topic, tmp_path / "gateway.log")
    try:
        yield running
    finally:
        assert stop_gateway(running) == 0, running.log()


# -- reading topics ------------------------------------------------------------------------


def read_topic(
    bootstrap: str,
    topic: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 20.0,
    settle: float = 1.0,
) -> list[tuple[bytes, dict[str, Any]]]:
    """``(key, value)`` of every record, by partition and offset, once ``done(values)``
    holds (then ``settle`` seconds more, to catch extra records) or at ``timeout``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if settle_until is None and done([orjson.loads(r.value) for r in records]):
                settle_until = time.monotonic() + settle
        records.sort(key=lambda r: (r.partition, r.offset))
        return [(r.key, orjson.loads(r.value)) for r in records]
    finally:
        consumer.close()


def at_least(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda values: len(values) >= count


# -- events: the real client through the gateway ------------------------------------------------


def check_exceptionless_events(
    records: list[tuple[bytes, dict[str, Any]]], session_id: str
) -> None:
    """Every event of the session: same key, session id, user; types as sent."""
    assert {key for key, _ in records} == {session_id.encode()}
    for _, event in records:
        assert event["session_id"] == session_id
        assert event["project"] == PROJECT
        assert event["id"]
        if event["type"] != "heartbeat" or "user_id" in event:
            # a heartbeat carries the user once the gateway has seen the session's events
            assert (event["user_id"], event["user_name"]) == (USER_ID, USER_NAME)
    events = [event for _, event in records]
    error = next(e for e in events if e["type"] == "error")
    assert error["data"]["@error"]["type"] == "TypeError"
    assert error["data"]["@error"]["message"] == "price is not a number"
    assert error["data"]["@error"]["stack_trace"]
    usage = next(e for e in events if e["type"] == "usage")
    assert usage["source"] == "checkout"
    log = next(e for e in events if e["type"] == "log")
    assert (log["source"], log["message"]) == ("cart", "added 2 items")
    assert all("@environment" in e["data"] for e in events if e["type"] != "heartbeat")
    # one end only: the client repeats the close when the process exits
    assert [e.get("close", False) for e in events if e["type"] == "heartbeat"] == [False, True]


def test_real_client_session_events(
    node_client: Path, broker: Any, events_topic: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    session_id = run_node_session(node_client, gateway.url, tmp_path)
    records = read_topic(broker.bootstrap, events_topic, at_least(6))
    assert [e["type"] for _, e in records] == [
        "session",
        "usage",
        "log",
        "error",
        "heartbeat",
        "heartbeat",
    ]
    check_exceptionless_events(records, session_id)
    assert records[0][1]["data"]["@user"] == {"identity": USER_ID, "name": USER_NAME}


def test_real_client_heartbeat_before_the_batch(
    node_client: Path, broker: Any, events_topic: str, gateway: GatewayProcess, tmp_path: Path
) -> None:
    session_id = run_node_session(node_client, gateway.url, tmp_path, order="heartbeat-first")
    records = read_topic(broker.bootstrap, events_topic, at_least(6))
    assert [e["type"] for _, e in records] == [
        "heartbeat",
        "session",
        "usage",
        "log",
        "error",
        "heartbeat",
    ]
    check_exceptionless_events(records, session_id)


def test_gateway_command_reports_an_unreachable_broker(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SESSIONIZER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "SESSIONIZER_API_KEYS": f"{KEY}:{PROJECT}",
        "SESSIONIZER_GATEWAY_PORT": str(free_port()),
        "SESSIONIZER_GATEWAY_ADMIN_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "gateway"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sessionizer: error: cannot reach the Kafka broker")
    assert "SESSIONIZER_KAFKA_BOOTSTRAP" in lines[0]


def test_gateway_command_needs_api_keys(tmp_path: Path) -> None:
    env = {**os.environ, "SESSIONIZER_API_KEYS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "gateway"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "SESSIONIZER_API_KEYS" in done.stderr and "Traceback" not in done.stderr


# -- sessions: the closed session from the worker -------------------------------------------------


@pytest.fixture
def worker(request: pytest.FixtureRequest, broker_kind: str) -> Any:
    try:
        return request.getfixturevalue("worker_process")
    except pytest.FixtureLookupError:
        pytest.skip(
            "needs the worker_process fixture (a running `sessionizer worker` with .settings); "
            "not defined yet"
        )


@pytest.fixture
def worker_gateway(worker: Any, tmp_path: Path) -> Iterator[GatewayProcess]:
    settings = worker.settings
    running = start_gateway(settings.kafka_bootstrap, settings.events_topic, tmp_path / "gw.log")
    try:
        yield running
    finally:
        assert stop_gateway(running) == 0, running.log()


def closed_session(settings: Any, session_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The latest revision of the session on the sessions topic."""

    def found(values: list[dict[str, Any]]) -> bool:
        return any(v.get("session_id") == session_id for v in values)

    records = read_topic(
        settings.kafka_bootstrap, settings.sessions_topic, found, timeout=timeout, settle=2.0
    )
    mine = [v for _, v in records if v.get("session_id") == session_id]
    assert mine, f"no session {session_id} on {settings.sessions_topic} within {timeout:g} s"
    return max(mine, key=lambda v: int(v.get("revision", 1)))


def activity_types(session: dict[str, Any]) -> list[str]:
    return [e["type"] for e in session["events"] if e["type"] not in ("heartbeat", "sessionend")]


@pytest.mark.parametrize("order", ["batch-first", "heartbeat-first"])
def test_real_client_closed_session(
    node_client: Path, worker: Any, worker_gateway: GatewayProcess, tmp_path: Path, order: str
) -> None:
    session_id = run_node_session(node_client, worker_gateway.url, tmp_path, order=order)
    session = closed_session(worker.settings, session_id)
    assert session["status"] == "closed"
    assert session["close_reason"] == "ended"
    assert (session["project"], session["user_id"], session["user_name"]) == (
        PROJECT,
        USER_ID,
        USER_NAME,
    )
    assert activity_types(session) == ["session", "usage", "log", "error"]
    assert session["event_count"] == 4
    assert session["heartbeat_count"] >= 1
    assert session["has_error"] is True
    assert session["type_counts"]["error"] == 1
    assert session["data"]["@user"] == {"identity": USER_ID, "name": USER_NAME}


def python_client_session(client: SessionClient) -> str:
    with client:
        client.set_user_identity(USER_ID, USER_NAME)
        session_id = client.start_session()
        client.submit_event("usage", source="checkout")
        client.submit_event("log", source="cart", message="added 2 items")
        try:
            raise TypeError("price is not a number")
        except TypeError as exc:
            client.submit_exception(exc)
        client.heartbeat()
        client.end_session()
    return session_id


def check_python_session(session: dict[str, Any]) -> None:
    assert session["status"] == "closed"
    assert session["close_reason"] == "ended"
    assert (session["project"], session["user_id"], session["user_name"]) == (
        PROJECT,
        USER_ID,
        USER_NAME,
    )
    assert activity_types(session) == ["session", "usage", "log", "error"]
    assert session["heartbeat_count"] >= 1
    assert session["has_error"] is True


def test_python_client_over_http_closed_session(
    worker: Any, worker_gateway: GatewayProcess
) -> None:
    client = SessionClient.for_gateway(worker_gateway.url, KEY, heartbeat_interval=None)
    session_id = python_client_session(client)
    check_python_session(closed_session(worker.settings, session_id))


def test_python_client_over_kafka_closed_session(worker: Any) -> None:
    settings = worker.settings
    client = SessionClient.for_kafka(
        settings.kafka_bootstrap,
        topic=settings.events_topic,
        project=PROJECT,
        heartbeat_interval=None,
    )
    session_id = python_client_session(client)
    check_python_session(closed_session(settings, session_id))
