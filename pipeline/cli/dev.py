"""``sessionizer dev``: the whole pipeline on this machine, with a live view.

Starts an embedded broker (Tansu by default, or Apache Kafka with ``--broker kafka``)
and a redis-server on free loopback ports,
creates the topics, runs one worker and the synthetic producer as child
processes, and shows sessions closing live until Ctrl-C; then stops all of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import orjson
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.cli.display import format_duration
from pipeline.config import load_settings
from pipeline.credentials import generate_key
from pipeline.devtools.apache_kafka import EmbeddedKafka, kafka_unavailable_reason
from pipeline.devtools.services import EmbeddedBroker, EmbeddedRedis, free_port
from pipeline.exceptions import ConfigError


def _sessionizer() -> list[str]:
    return [sys.executable, "-m", "pipeline.cli"]


class _View:
    def __init__(self, broker: str, redis_url: str, web_port: int, logdir: Path, report: str = "") -> None:
        self.broker, self.redis_url, self.web_port, self.logdir = broker, redis_url, web_port, logdir
        self.report = report
        self.started = time.monotonic()
        self.reasons: Counter[str] = Counter()
        self.closed = 0
        self.revisions = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=10)
        self.closed_times: deque[float] = deque()
        self.open_sessions = 0
        self.worker_totals: dict[str, int] = {}

    def on_session(self, record: dict[str, Any]) -> None:
        self.closed += 1
        if record.get("revision", 1) > 1:
            self.revisions += 1
        self.reasons[record.get("close_reason", "?")] += 1
        self.recent.appendleft(record)
        self.closed_times.append(time.monotonic())

    def rate(self) -> float:
        now = time.monotonic()
        while self.closed_times and self.closed_times[0] < now - 10:
            self.closed_times.popleft()
        return len(self.closed_times) / min(10.0, max(1.0, now - self.started))

    def render(self) -> Group:
        head = Text.assemble(
            ("sessionizer dev", "bold"), f"  broker {self.broker}  redis {self.redis_url}  "
            f"worker http://127.0.0.1:{self.web_port}/stats  logs {self.logdir}  (Ctrl-C stops)",
            f"\n{self.report}" if self.report else "",
        )
        summary = Table.grid(padding=(0, 3))
        totals = self.worker_totals
        summary.add_row(
            f"[bold]{self.open_sessions}[/] open sessions",
            f"[bold]{self.rate():.1f}[/] closed/s",
            f"[bold]{self.closed}[/] closed ({self.revisions} amended)",
            f"[bold]{totals.get('events', 0)}[/] events in",
            f"[bold]{sum(v for k, v in totals.items() if k.startswith('rejected:'))}[/] dead letters",
        )
        summary.add_row(*[f"{reason}: {n}" for reason, n in sorted(self.reasons.items())] or ["-"])
        latest = Table(title="latest closed sessions", expand=True)
        for column in ("end", "project", "user", "session", "duration", "reason", "events", "errors", "rev"):
            latest.add_column(column)
        colors = {"ended": "green", "timeout": "yellow", "max_duration": "magenta"}
        for r in self.recent:
            reason = r.get("close_reason", "?")
            latest.add_row(
                r["end"][11:19], r["project"], r["user_name"] or r["user_id"] or "-", r["session_id"][:12],
                format_duration(r["duration_ms"]), f"[{colors.get(reason, 'white')}]{reason}[/]",
                str(r["event_count"]), "yes" if r["has_error"] else "", str(r["revision"]),
            )
        return Group(head, summary, latest)


def _poll_open(redis_client: Any, prefix: str) -> int:
    total = 0
    for partition in redis_client.smembers(f"{prefix}:shards"):
        total += redis_client.hlen(f"{prefix}:{{p{int(partition)}}}:open")
    return int(total)


def _poll_worker(port: int) -> dict[str, int]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=0.5) as reply:
            return dict(orjson.loads(reply.read()).get("totals", {}))
    except (OSError, ValueError):
        return {}


def run_dev(users: int, rate: float, inactivity_timeout: float, partitions: int,
            broker_kind: str = "tansu") -> None:
    from kafka import KafkaConsumer

    from pipeline.store.connection import redis_client_sync

    if broker_kind == "kafka":
        reason = kafka_unavailable_reason()
        if reason:
            raise ConfigError(f"--broker kafka: {reason}; or run without it (Tansu needs nothing)")
    logdir = Path(tempfile.mkdtemp(prefix="sessionizer-dev-"))
    (logdir / "broker").mkdir()
    (logdir / "redis").mkdir()
    broker: EmbeddedBroker | EmbeddedKafka = (
        EmbeddedKafka(workdir=logdir / "broker", announce=True) if broker_kind == "kafka"
        else EmbeddedBroker(workdir=logdir / "broker"))
    store = EmbeddedRedis(workdir=logdir / "redis")
    children: list[subprocess.Popen[bytes]] = []
    with broker, store:
        web_port, gateway_port, admin_port = free_port(), free_port(), free_port()
        # strong credentials made for this run (weak ones are refused), printed below
        api_key, report_token = generate_key(), generate_key()
        env = dict(
            os.environ,
            SESSIONIZER_API_KEYS=f"{api_key}:demo",
            SESSIONIZER_REPORT_TOKEN=report_token,
            SESSIONIZER_GATEWAY_HOST="127.0.0.1",
            SESSIONIZER_GATEWAY_PORT=str(gateway_port),
            SESSIONIZER_GATEWAY_ADMIN_PORT=str(admin_port),
            SESSIONIZER_KAFKA_BOOTSTRAP=broker.bootstrap,
            SESSIONIZER_REDIS_URL=store.url,
            SESSIONIZER_INACTIVITY_TIMEOUT=str(inactivity_timeout),
            SESSIONIZER_TOPIC_PARTITIONS=str(partitions),
            SESSIONIZER_KAFKA_SESSION_TIMEOUT="6",
            SESSIONIZER_WEB_PORT=str(web_port),
        )
        broker.create_topics({"events": partitions, "sessions": partitions, "events-dlq": partitions,
                              "sessionizer-repartition": partitions})
        try:
            with open(logdir / "worker.log", "wb") as worker_log:
                children.append(subprocess.Popen([*_sessionizer(), "worker"], env=env,
                                                 stdout=worker_log, stderr=subprocess.STDOUT))
            with open(logdir / "gateway.log", "wb") as gateway_log:
                children.append(subprocess.Popen([*_sessionizer(), "gateway"], env=env,
                                                 stdout=gateway_log, stderr=subprocess.STDOUT))
            report = (
                f"report http://127.0.0.1:{gateway_port}/sessions  token {report_token}  "
                f"(API key of project demo: {api_key})"
            )
            print(report, flush=True)
            with open(logdir / "produce.log", "wb") as produce_log:
                children.append(subprocess.Popen(
                    [*_sessionizer(), "produce", "--users", str(users), "--rate", str(rate),
                     "--duration", "0", "--quiet"],
                    env=env, stdout=produce_log, stderr=subprocess.STDOUT))
            view = _View(broker.bootstrap, store.url, web_port, logdir, report)
            consumer = KafkaConsumer("sessions", bootstrap_servers=broker.bootstrap,
                                     auto_offset_reset="earliest", group_id=None)
            client = redis_client_sync(load_settings(redis_url=store.url, redis_cluster="false"))
            last_poll = 0.0
            with Live(get_renderable=view.render, refresh_per_second=4, screen=False):
                while True:
                    for worker in children:
                        if worker.poll() is not None:
                            raise SystemExit(f"a child process exited ({worker.args!r}); see {logdir}")
                    for batch in consumer.poll(timeout_ms=250).values():
                        for message in batch:
                            view.on_session(orjson.loads(message.value))
                    if time.monotonic() - last_poll > 1.0:
                        last_poll = time.monotonic()
                        view.open_sessions = _poll_open(client, "sz")
                        view.worker_totals = _poll_worker(web_port)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
    print(f"stopped; logs in {logdir}")
