"""``sessionizer status`` against the real broker and redis-server, with a real
``sessionizer worker`` process owning the partitions."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from kafka import KafkaProducer

from pipeline.cli import main
from pipeline.cli.status import collect_status
from pipeline.config import Settings
from pipeline.devtools.process import SessionizerProcess, settings_env

USERS = [f"status-user-{i}" for i in range(12)]
T0 = 1_795_000_000_000


@pytest.fixture
def worker(
    redis_client: Any, settings_factory: Callable[..., Settings], tmp_path: Path
) -> Iterator[SessionizerProcess]:
    """A worker on fresh topics and a fresh key prefix (``redis_client`` first: it empties
    Redis, which must not happen under a running worker)."""
    settings = settings_factory(
        redis_key_prefix=f"status-{uuid.uuid4().hex[:8]}",
        metrics_interval=0.5,
        inactivity_timeout=30,
        project_settings='{"shop": {"inactivity_timeout": 60, "reopen_grace": 0}}',
    )
    process = SessionizerProcess("worker", settings, log_path=tmp_path / "worker.log").spawn()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def publish(bootstrap: str, topic: str, users: list[str], at_ms: int) -> None:
    """One event per user, one record per produce request: the embedded broker reports a
    partition's end offset as its last batch's base offset + 1, so a batch of several
    records would show as one (a real Kafka counts records)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i, user in enumerate(users):
            event = {"type": "usage", "timestamp": at_ms + i, "user_id": user, "project": "shop"}
            producer.send(topic, key=user.encode(), value=orjson.dumps(event), timestamp_ms=at_ms + i)
            producer.flush(30)
    finally:
        producer.close(5)


def wait_for(settings: Settings, check: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = collect_status(settings, sample_s=0)
        if check(status):
            return status
        assert time.monotonic() < deadline, orjson.dumps(status, option=orjson.OPT_INDENT_2).decode()
        time.sleep(0.3)


def settled(status: dict[str, Any]) -> bool:
    rows = status["partitions"]
    return (
        status["totals"]["open_sessions"] == len(USERS)
        and all(r["events"]["committed"] == r["events"]["end"] for r in rows)
        and any(w["live"] for w in status["workers"])
    )


def test_status_shows_members_owners_offsets_open_sessions_and_rules(
    worker: SessionizerProcess, redis_client: Any
) -> None:
    settings = worker.settings
    now_ms = int(time.time() * 1000)
    publish(settings.kafka_bootstrap, settings.events_topic, USERS, now_ms)
    status = wait_for(settings, settled)

    # the group: one member, stable
    assert status["group"]["id"] == settings.consumer_group
    assert status["group"]["state"] == "Stable"
    assert len(status["group"]["members"]) == 1
    # the worker announced itself, with its pid and web address
    (entry,) = [w for w in status["workers"] if w["live"]]
    assert entry["pid"] == worker.proc.pid
    assert entry["partitions"] == [0, 1, 2, 3]
    assert entry["web"].startswith("http://")
    # every partition: owned by that worker, offsets, epoch, open sessions as in Redis
    rows = status["partitions"]
    assert [r["partition"] for r in rows] == [0, 1, 2, 3]
    prefix = settings.redis_key_prefix
    for r in rows:
        assert r["owner"] == entry["id"]
        assert r["epoch"] is not None and r["epoch"] >= 1
        assert r["epoch"] == entry["epochs"][str(r["partition"])]
        events = r["events"]
        assert events["lag"] == 0
        if events["end"]:
            assert events["applied"] == events["end"] - 1
            assert r["stream_clock_ms"] >= now_ms
        assert r["open_sessions"] == redis_client.hlen(f"{prefix}:{{p{r['partition']}}}:open")
    assert sum(1 for r in rows if r["events"]["end"]) >= 2  # the users spread over partitions
    assert status["totals"] == {"open_sessions": len(USERS), "lag": 0, "owned": 4}
    assert status["topics"]["events"] == {"name": settings.events_topic, "partitions": 4}
    # the rules in effect, per project too
    rules = status["rules"]
    assert rules["inactivity_timeout_s"] == 30
    assert rules["projects"]["shop"] == {
        "inactivity_timeout_s": 60, "max_session_duration_s": 86400, "reopen_grace_s": 0,
    }
    assert status["rates"] is None  # sample_s=0


def test_status_rates_come_from_two_samples_of_the_end_offsets(worker: SessionizerProcess) -> None:
    settings = worker.settings
    stop = threading.Event()

    def traffic() -> None:
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks=1, linger_ms=0)
        try:
            while not stop.is_set():
                event = {"type": "sessionend" if time.time() % 1 < 0.5 else "session",
                         "timestamp": int(time.time() * 1000), "user_id": "rate-user"}
                producer.send(settings.events_topic, key=b"rate-user", value=orjson.dumps(event))
                producer.flush(10)
                producer.send(settings.events_topic, key=b"rate-user", value=b"{not json")
                producer.flush(10)
                time.sleep(0.05)
        finally:
            producer.close(5)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        status = collect_status(settings, sample_s=1.5)
    finally:
        stop.set()
        thread.join(15)
    rates = status["rates"]
    assert 1.4 <= rates["interval_s"] <= 5
    assert rates["events_per_s"] > 5
    assert rates["dead_letters_per_s"] > 1
    assert rates["sessions_per_s"] > 0


def test_the_status_command_prints_tables_or_json(worker: SessionizerProcess) -> None:
    settings = worker.settings
    publish(settings.kafka_bootstrap, settings.events_topic, USERS, int(time.time() * 1000))
    wait_for(settings, settled)
    env = {k: v for k, v in settings_env(settings).items() if k.startswith("SESSIONIZER_")}
    runner = CliRunner()
    with _clean_environment():
        result = runner.invoke(main, ["status", "--json", "--sample", "0.2"], env=env)
    assert result.exit_code == 0, result.output
    document = orjson.loads(result.output)
    assert document["totals"]["open_sessions"] == len(USERS)
    assert document["rates"]["interval_s"] >= 0.2
    with _clean_environment():
        result = runner.invoke(main, ["status", "--sample", "0"], env={**env, "COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("Partitions", "Workers", "Consumer group members", "Session rules", "shop",
                 f"{len(USERS)} open sessions", str(worker.proc.pid)):
        assert text in result.output


def test_status_without_a_broker_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.devtools.services import free_port

    with _clean_environment():
        result = CliRunner().invoke(
            main, ["status"], env={"SESSIONIZER_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"},
        )
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("sessionizer: error: cannot reach Kafka at 127.0.0.1:")
    assert "SESSIONIZER_KAFKA_BOOTSTRAP" in line


@contextlib.contextmanager
def _clean_environment() -> Iterator[None]:
    """No SESSIONIZER_* of the test runner's own environment leaks into a command."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("SESSIONIZER_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)
