"""The adversarial suite's cluster: ``sessionizer worker`` processes and a
``sessionizer gateway`` on the session's broker and redis-server."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from pipeline.config import Settings
from pipeline.devtools.checker import consumer_lag, redis_leftovers
from pipeline.devtools.process import SessionizerProcess, get_json

API_KEY = "adversarial-key-0123456789"
PROJECT = "shop"
#: Every message on an output topic stays under this (the broker's default limit).
ONE_MIB = 1 << 20

#: Short sessions, so that the drain takes seconds: a user's session closes 4 s after
#: its last event; record timestamps at most 1 s ahead of the reading worker's clock.
WORKER_SETTINGS: dict[str, Any] = {
    "topic_partitions": 4,
    "inactivity_timeout": 4.0,
    "reopen_grace": 2.0,
    "max_future_skew": 1.0,
    "max_events_per_session": 1_000_000,
    "updates_interval": 1.0,
    "log_level": "info",
}


class Process(SessionizerProcess):
    """``sessionizer <command>`` in a process of its own, its output in a log file."""

    def assigned(self) -> list[int] | None:
        """The partitions the worker has claimed, from its ``/healthz`` (None before it
        answers)."""
        if self.health_url is None or not self.running:
            return None
        try:
            status, body = get_json(self.health_url)
        except OSError:
            return None
        if status != 200 or not isinstance(body, dict) or not self.is_ready():
            return None
        return sorted(int(p) for p in body.get("partitions") or ())

    def log(self) -> str:
        return self.log_text()


@dataclass
class Cluster:
    settings: Settings
    env: dict[str, str]
    root: Path
    workers: list[Process] = field(default_factory=list)
    gateway: Process | None = None
    gateway_url: str = ""
    admin_url: str = ""

    def start_workers(self, count: int = 2, timeout_s: float = 90.0) -> None:
        for n in range(count):
            worker = Process("worker", env=self.env, log_path=self.root / f"worker-{n + 1}.log")
            worker.spawn()
            self.workers.append(worker)
        deadline = time.monotonic() + timeout_s
        while True:
            owned = [w.assigned() for w in self.workers]
            if all(owned) and sorted(p for o in owned if o for p in o) == list(
                range(self.settings.topic_partitions)
            ):
                return
            for w in self.workers:
                assert w.running, f"a worker exited while starting:\n{w.log()[-3000:]}"
            assert time.monotonic() < deadline, "workers did not share the partitions: " + "\n".join(
                w.log()[-2000:] for w in self.workers
            )
            time.sleep(0.2)

    def start_gateway(self, timeout_s: float = 30.0) -> None:
        env = dict(self.env, SESSIONIZER_GATEWAY_HOST="127.0.0.1", SESSIONIZER_GATEWAY_PORT="0",
                   SESSIONIZER_GATEWAY_ADMIN_PORT="0", SESSIONIZER_API_KEYS=f"{API_KEY}:{PROJECT}")
        self.gateway = Process("gateway", env=env, log_path=self.root / "gateway.log")
        self.gateway.start(timeout_s)
        self.gateway_url = self.gateway.url("/", "gateway_port").rstrip("/")
        self.admin_url = self.gateway.url("/", "gateway_admin_port").rstrip("/")

    def post(self, path: str, body: bytes | None) -> tuple[int, Any]:
        """POST ``body`` (raw bytes; None: a GET) to the gateway; ``(status, JSON answer)``."""
        request = urllib.request.Request(
            self.gateway_url + path, data=body,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, orjson.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read() or b"null")

    def get_text(self, path: str) -> tuple[int, str]:
        """GET ``path`` on the gateway's admin port (``/healthz``, ``/metrics``)."""
        with urllib.request.urlopen(self.admin_url + path, timeout=30) as response:
            return response.status, response.read().decode()

    def publish(self, records: Iterable[tuple[bytes | None, bytes | None, int, int]]) -> list[Any]:
        """``(key, value, timestamp_ms, partition)`` records, in order; their metadata."""
        producer = KafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, acks="all", linger_ms=5,
            max_in_flight_requests_per_connection=1, max_request_size=8 << 20,
        )
        try:
            futures = [producer.send(self.settings.events_topic, key=k, value=v, timestamp_ms=t,
                                     partition=p) for k, v, t, p in records]
            producer.flush(60)
            return [f.get(timeout=60) for f in futures]
        finally:
            producer.close(timeout=5)

    def drain(self, timeout_s: float = 90.0) -> tuple[int | None, dict[str, int]]:
        """Wait until the consumer lag is 0 and Redis holds no open session nor outbox
        message, three probes in a row; the last lag and Redis leftovers seen."""
        s = self.settings
        deadline = time.monotonic() + timeout_s
        good, lag, left = 0, None, {}
        while time.monotonic() < deadline:
            lag = sum(consumer_lag(s.kafka_bootstrap, s.consumer_group,
                                   [s.events_topic, s.repartition_topic]).values())
            left = redis_leftovers(s.redis_url, s.redis_key_prefix)
            good = good + 1 if lag == 0 and not any(left.values()) else 0
            if good >= 3:
                break
            time.sleep(1.0)
        return lag, left

    def logs(self) -> str:
        parts = [f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in self.workers]
        if self.gateway is not None:
            parts.append(f"--- gateway.log\n{self.gateway.log()[-2000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for p in [*self.workers, *([self.gateway] if self.gateway else [])]:
            p.stop()
