"""``sessionizer produce``: publish synthetic traffic (:mod:`pipeline.devtools.traffic`) to Kafka.

Live, a record is sent when its turn comes in simulated time: the traffic
model's clock starts at the current wall time and runs ``speed`` times as fast,
and each record's Kafka timestamp is its arrival time on that clock, so at
``speed`` 1 it is the wall clock at the moment of sending. ``rate`` caps the
events per second (a token bucket); when no ``speed`` is given it is derived
from ``rate``: the time compression that makes ``users`` simulated users send
about ``rate`` events per second (never slower than real time). With time
compressed, record timestamps run ahead of the wall clock, and so does the
workers' stream clock. ``rate`` 0 and no ``speed``: as fast as possible, with
timestamps spaced as the users would send them.

:func:`publish_records` is the plain "send these records, wait for the acks"
used by tests and benchmarks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka import errors as kafka_errors
from kafka.admin import NewTopic
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.config import Settings, load_settings
from pipeline.devtools.traffic import BAD_KINDS, TrafficModel
from pipeline.exceptions import ConfigError
from pipeline.security import UNREACHABLE_ERRORS, broker_unavailable, kafka_python_options

__all__ = [
    "ensure_topic",
    "publish_records",
    "run_produce",
]

BOOTSTRAP_TIMEOUT_MS = 10_000


def _servers(bootstrap: str) -> list[str]:
    return [server.strip() for server in bootstrap.split(",") if server.strip()]


def _client_config(cls: type[Any], **config: Any) -> dict[str, Any]:
    """``config`` plus the bootstrap timeout, where this kafka-python has one."""
    if "bootstrap_timeout_ms" in getattr(cls, "DEFAULT_CONFIG", {}):
        config["bootstrap_timeout_ms"] = BOOTSTRAP_TIMEOUT_MS
    return config


def _producer(bootstrap: str, security: Mapping[str, Any] | None = None) -> KafkaProducer:
    """``security``: kafka-python's SASL/TLS options (:func:`~pipeline.security.kafka_python_options`)."""
    config = _client_config(
        KafkaProducer,
        **(security or {}),
        bootstrap_servers=_servers(bootstrap),
        client_id="sessionizer-produce",
        acks="all",
        linger_ms=5,
        batch_size=64 * 1024,
        compression_type=None,
        max_block_ms=30_000,
    )
    if "enable_idempotence" in KafkaProducer.DEFAULT_CONFIG:
        # the embedded broker refuses InitProducerId
        config["enable_idempotence"] = False
    try:
        return KafkaProducer(**config)
    except UNREACHABLE_ERRORS:
        raise broker_unavailable(bootstrap) from None


def ensure_topic(
    bootstrap: str, topic: str, partitions: int, replication: int,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Create ``topic`` when missing (a broker may auto-create it with one partition)."""
    try:
        admin = KafkaAdminClient(
            **_client_config(
                KafkaAdminClient,
                **(security or {}),
                bootstrap_servers=_servers(bootstrap),
                client_id="sessionizer-produce-admin",
            )
        )
    except UNREACHABLE_ERRORS:
        raise broker_unavailable(bootstrap) from None
    try:
        if topic not in admin.list_topics():
            admin.create_topics([NewTopic(topic, partitions, replication)])
    except kafka_errors.TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


class _Delivery:
    """Acks and failures, counted from the producer's callbacks."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.last_error = ""

    def on_ack(self, _metadata: object) -> None:
        self.acked += 1

    def on_error(self, exc: BaseException) -> None:
        self.failed += 1
        self.last_error = str(exc) or type(exc).__name__


def _send(
    producer: KafkaProducer,
    topic: str,
    delivery: _Delivery,
    key: bytes | None,
    value: bytes,
    timestamp_ms: int,
) -> None:
    future = producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms)
    future.add_callback(delivery.on_ack)
    future.add_errback(delivery.on_error)


def _finish(producer: KafkaProducer, delivery: _Delivery) -> None:
    """Wait for outstanding acks (a while), then close."""
    try:
        producer.flush(timeout=30)
    except kafka_errors.KafkaTimeoutError as exc:
        delivery.last_error = delivery.last_error or str(exc)
    finally:
        producer.close(timeout=5)


def _check_delivery(bootstrap: str, topic: str, delivery: _Delivery, sent: int) -> None:
    if delivery.failed or delivery.acked < sent:
        missing = sent - delivery.acked
        raise broker_unavailable(
            bootstrap,
            f"{missing} of {sent} records not delivered to topic {topic!r}: "
            f"{delivery.last_error or 'no acknowledgement'}",
        )


def publish_records(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes, int]]
) -> int:
    """Send ``(key, value, timestamp_ms)`` records in order and wait for every ack.

    Returns the number of records sent; raises :class:`BrokerUnavailable` when
    the broker cannot be reached or a record is not acknowledged.
    """
    producer = _producer(bootstrap)
    delivery = _Delivery()
    sent = 0
    try:
        for key, value, timestamp_ms in records:
            _send(producer, topic, delivery, key, value, timestamp_ms)
            sent += 1
    except kafka_errors.KafkaTimeoutError as exc:
        raise broker_unavailable(bootstrap, str(exc)) from None
    finally:
        _finish(producer, delivery)
    _check_delivery(bootstrap, topic, delivery, sent)
    return sent


class _TokenBucket:
    """``rate`` events per second with bursts of up to a quarter second's worth."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate / 4)
        self.tokens = self.burst
        self.at = now

    def reserve(self, events: int, now: float) -> float:
        """Take ``events`` tokens; the seconds to wait before using them."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate) - events
        self.at = now
        return max(0.0, -self.tokens / self.rate)


class _Progress:
    """The live display: what has been sent, how fast, of which kinds."""

    def __init__(self, model: TrafficModel, target: str, paced: bool) -> None:
        self.model = model
        self.target = target
        self.paced = paced
        self.started = time.monotonic()
        self.records = 0
        self.events = 0
        self.samples: deque[tuple[float, int]] = deque(maxlen=40)
        self.delivery = _Delivery()

    def rate(self) -> float:
        now, events = time.monotonic(), self.events
        self.samples.append((now, events))
        then, before = self.samples[0]
        if now - then < 0.5:
            elapsed = now - self.started
            return events / elapsed if elapsed > 0 else 0.0
        return (events - before) / (now - then)

    def render(self) -> Group:
        stats = self.model.stats
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        clock = "as fast as possible" if not self.paced else f"time x{self.model.speed:.3g}"
        grid.add_row(
            "target", f"{self.target}   ({clock}, {time.monotonic() - self.started:.0f} s)"
        )
        grid.add_row(
            "sent",
            f"{self.events:,} events in {self.records:,} records "
            f"({stats.batch_records:,} batches)   [cyan]{self.rate():,.0f} events/s[/]",
        )
        types = " · ".join(f"{name} {count:,}" for name, count in stats.by_type.most_common())
        grid.add_row("by type", types or "-")
        grid.add_row(
            "sessions",
            f"{stats.sessions_started:,} started, {stats.sessions_ended:,} ended by the client "
            f"({stats.sessions_manual:,} with a client session id)",
        )
        grid.add_row(
            "quirks", f"{stats.duplicates:,} duplicates · {stats.out_of_order:,} out of order"
        )
        bad = " · ".join(f"{kind} {stats.bad[kind]:,}" for kind in BAD_KINDS if stats.bad[kind])
        grid.add_row(
            "bad records", f"[yellow]{stats.bad_records:,}[/]" + (f"  ({bad})" if bad else "")
        )
        failed = self.delivery.failed
        grid.add_row(
            "delivery",
            f"{self.delivery.acked:,} acknowledged"
            + (f" · [red]{failed:,} failed: {self.delivery.last_error}[/]" if failed else ""),
        )
        return Group(Text("sessionizer produce", style="bold"), grid)


def _derive_speed(model: TrafficModel, rate: float) -> float:
    return max(1.0, rate / model.nominal_rate()) if rate > 0 else 1.0


def run_produce(
    users: int,
    rate: float,
    duration: float,
    seed: int,
    bad_ratio: float,
    quiet: bool,
    settings: Settings | None = None,
    *,
    speed: float | None = None,
) -> None:
    """Publish simulated traffic to the events topic for ``duration`` s (0: until Ctrl-C)."""
    settings = settings if settings is not None else load_settings()
    bootstrap, topic = settings.kafka_bootstrap, settings.events_topic
    if rate < 0 or duration < 0 or (speed is not None and speed <= 0):
        raise ConfigError("produce: --rate and --duration must be >= 0, and speed > 0")
    try:
        model = TrafficModel(
            users,
            seed,
            int(time.time() * 1000),
            bad_ratio,
            max_event_bytes=settings.max_event_bytes,
        )
    except ValueError as exc:
        raise ConfigError(f"produce: {exc}") from None
    paced = speed is not None or rate > 0
    model.speed = speed if speed is not None else _derive_speed(model, rate)

    security = kafka_python_options(settings)  # a bad SASL/TLS combination fails here, in one line
    ensure_topic(bootstrap, topic, settings.topic_partitions, settings.topic_replication, security)
    producer = _producer(bootstrap, security)
    progress = _Progress(model, f"{topic} @ {bootstrap}", paced)
    live = None if quiet else Live(get_renderable=progress.render, refresh_per_second=4)
    try:
        if live is not None:
            live.start()
        try:
            _pace(model, producer, topic, progress, rate, duration, paced)
        except KeyboardInterrupt:
            pass
        except kafka_errors.KafkaTimeoutError as exc:
            raise broker_unavailable(bootstrap, str(exc)) from None
        finally:
            _finish(producer, progress.delivery)
        _check_delivery(bootstrap, topic, progress.delivery, progress.records)
    finally:
        if live is not None:
            live.refresh()
            live.stop()


def _pace(
    model: TrafficModel,
    producer: KafkaProducer,
    topic: str,
    progress: _Progress,
    rate: float,
    duration: float,
    paced: bool,
) -> None:
    started = progress.started
    deadline = started + duration if duration else None
    bucket = _TokenBucket(rate, started) if rate > 0 else None
    stats = model.stats
    for key, value, timestamp_ms in model:
        events = stats.events_sent - progress.events
        now = time.monotonic()
        due = started + model.wall_offset_s(timestamp_ms) if paced else now
        if bucket is not None:
            due = max(due, now + bucket.reserve(events, now))
        if deadline is not None and due >= deadline:
            time.sleep(max(0.0, deadline - now))
            return
        if due > now:
            time.sleep(due - now)
        _send(producer, topic, progress.delivery, key, value, timestamp_ms)
        progress.records += 1
        progress.events += events
