"""Metrics: what each batch, store round trip, sink send and gateway request adds up to;
and the text exposition."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core.rules import SessionRules
from pipeline.exceptions import FencedError, PublishError
from pipeline.gateway.app import create_app
from pipeline.gateway.metrics import GatewayMetrics
from pipeline.gateway.publisher import Record
from pipeline.gateway.settings import GatewaySettings
from pipeline.logs import CONTENT_TYPE
from pipeline.store.base import Commit
from pipeline.store.memory import MemoryStore
from pipeline.worker.metrics import WorkerMetrics
from pipeline.worker.outbox import DEAD_LETTER, SESSION, Outgoing
from pipeline.worker.processor import BatchStats, PartitionProcessor, Topics
from pipeline.worker.routing import Router

T0 = 1_764_237_600_000
TIMEOUT_MS = 60_000
RULES = SessionRules(inactivity_timeout_ms=TIMEOUT_MS, reopen_grace_ms=600_000)
TOPICS = Topics(events="events", repartition="repartition", dlq="events-dlq", sessions="sessions")


def value(metrics: Any, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else float(found)


# -- batches -----------------------------------------------------------------------


def test_a_batch_counts_events_by_type_rejections_sessions_and_its_size() -> None:
    metrics = WorkerMetrics()
    stats = BatchStats(
        records=7, events=6, rejected={"invalid_json": 1, "too_old": 2}, forwarded=1,
        closed={"ended": 1, "timeout": 2},
        counters={"opened": 3, "closed_ended": 1, "closed_timeout": 2, "amended": 1, "reopened": 1,
                  "duplicate_events": 2, "duplicate_events_closed": 1, "clamped_events": 1,
                  "rejected_end_without_session": 1},
        types={"usage": 3, "heartbeat": 2, "my-custom-type": 1, "other-custom": 4},
    )
    metrics.observe_batch(stats)
    assert value(metrics, "sessionizer_records_total") == 7
    assert value(metrics, "sessionizer_events_total", type="usage") == 3
    assert value(metrics, "sessionizer_events_total", type="heartbeat") == 2
    assert value(metrics, "sessionizer_events_total", type="other") == 5  # free text: one label
    assert value(metrics, "sessionizer_events_rejected_total", reason="too_old") == 2
    assert value(metrics, "sessionizer_events_forwarded_total") == 1
    assert value(metrics, "sessionizer_sessions_opened_total") == 3
    assert value(metrics, "sessionizer_sessions_closed_total", reason="timeout") == 2
    assert value(metrics, "sessionizer_sessions_closed_total", reason="ended") == 1
    assert value(metrics, "sessionizer_session_records_total", reason="timeout") == 2
    assert value(metrics, "sessionizer_sessions_amended_total") == 1
    assert value(metrics, "sessionizer_sessions_reopened_total") == 1
    assert value(metrics, "sessionizer_duplicate_events_total") == 3
    assert value(metrics, "sessionizer_clamped_events_total") == 1
    assert value(metrics, "sessionizer_batch_records_count") == 1
    assert value(metrics, "sessionizer_batch_records_sum") == 7


def test_a_tick_with_no_records_is_not_a_batch_size() -> None:
    metrics = WorkerMetrics()
    metrics.observe_batch(BatchStats(counters={"closed_timeout": 1}))
    assert value(metrics, "sessionizer_batch_records_count") == 0
    assert value(metrics, "sessionizer_sessions_closed_total", reason="timeout") == 1


def test_close_latency_is_emit_time_minus_the_idle_deadline() -> None:
    metrics = WorkerMetrics()
    metrics.observe_batch(BatchStats(idle_deadlines_ms=[T0, T0 + 400]), now_ms=T0 + 700)
    assert value(metrics, "sessionizer_close_latency_seconds_count") == 2
    assert value(metrics, "sessionizer_close_latency_seconds_sum") == pytest.approx(0.7 + 0.3)
    assert value(metrics, "sessionizer_close_latency_seconds_bucket", le="0.5") == 1


class Wall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


class ListSink:
    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    async def send(self, messages: Sequence[Outgoing]) -> None:
        self.sent.extend(messages)


class Rec:
    def __init__(self, offset: int, body: Any, arrival: int) -> None:
        self.topic, self.partition, self.offset = TOPICS.events, 0, offset
        self.key: bytes | None = None
        self.value = body if isinstance(body, bytes) else orjson.dumps(body)
        self.timestamp = arrival
        self.headers: list[tuple[str, bytes]] = []


def test_the_processor_reports_types_and_the_deadlines_of_idle_closes() -> None:
    """A session idle past its deadline closes on a tick; BatchStats carries the deadline
    (last arrival + inactivity timeout), so latency = emit time - deadline."""
    seen: list[BatchStats] = []

    async def scenario() -> None:
        store, wall = MemoryStore(), Wall(T0)
        claim = await store.claim(0)
        processor = PartitionProcessor(
            claim, rules=RULES, store=store, sink=ListSink(), topics=TOPICS, router=Router(1),
            wall=wall, on_batch=seen.append,
        )
        events = [
            {"type": "session", "timestamp": T0, "user_id": "alice"},
            {"type": "usage", "timestamp": T0 + 1000, "user_id": "alice"},
            {"type": "heartbeat", "timestamp": T0 + 2000, "user_id": "alice"},
            {"type": "checkout-v2", "timestamp": T0 + 2500, "user_id": "bob"},
        ]
        arrivals = [T0, T0 + 1000, T0 + 2000, T0 + 2500]
        stats = await processor.process([Rec(i, e, a) for i, (e, a) in enumerate(zip(events, arrivals, strict=True))])
        assert stats.types == {"session": 1, "usage": 1, "heartbeat": 1, "checkout-v2": 1}
        assert stats.idle_deadlines_ms == []
        wall.ms = T0 + 2500 + TIMEOUT_MS + 300  # both idle now; the timer notices 300 ms late
        tick = await processor.tick(caught_up=True)
        assert tick is not None
        assert sorted(tick.idle_deadlines_ms) == [T0 + 2000 + TIMEOUT_MS, T0 + 2500 + TIMEOUT_MS]

    asyncio.run(scenario())
    metrics = WorkerMetrics()
    for stats in seen:
        metrics.observe_batch(stats, now_ms=T0 + 2500 + TIMEOUT_MS + 300)
    assert value(metrics, "sessionizer_close_latency_seconds_count") == 2
    assert value(metrics, "sessionizer_close_latency_seconds_sum") == pytest.approx(0.8 + 0.3)
    assert value(metrics, "sessionizer_sessions_closed_total", reason="timeout") == 2
    assert value(metrics, "sessionizer_events_total", type="other") == 1


def test_a_gap_close_is_not_an_idle_close() -> None:
    """Rule 3 (an event after a gap closes the open session) is not a timer's lateness."""

    async def scenario() -> list[int]:
        store = MemoryStore()
        processor = PartitionProcessor(
            await store.claim(0), rules=RULES, store=store, sink=ListSink(), topics=TOPICS,
            router=Router(1), wall=Wall(T0),
        )
        first = {"type": "usage", "timestamp": T0, "user_id": "alice"}
        # event time far past the session's reach, arriving right away (a client clock jump)
        later = {"type": "usage", "timestamp": T0 + 5 * TIMEOUT_MS, "user_id": "alice"}
        await processor.process([Rec(0, first, T0)])
        stats = await processor.process([Rec(1, later, T0 + 10)])
        assert stats.counters.get("closed_timeout") == 1
        return stats.idle_deadlines_ms

    assert asyncio.run(scenario()) == []


# -- store and sink ----------------------------------------------------------------


def test_the_timed_store_times_each_round_trip_and_counts_failures() -> None:
    metrics = WorkerMetrics()

    async def scenario() -> None:
        store = metrics.timed(MemoryStore())
        claim = await store.claim(0)
        await store.load(0, (), None, 10)
        commit = Commit(states={}, due_ms={}, offsets={"events": 0}, clock_ms=T0)
        assert await store.commit(0, claim.epoch, commit)
        with pytest.raises(FencedError):
            await store.commit(0, claim.epoch - 1, Commit({}, {}, {"events": 1}, T0))
        assert await store.outbox(0) == []

    asyncio.run(scenario())
    for op, count in (("claim", 1), ("load", 1), ("commit", 2), ("outbox", 1)):
        assert value(metrics, "sessionizer_redis_seconds_count", op=op) == count
    assert value(metrics, "sessionizer_redis_errors_total", op="commit") == 0  # fenced: an answer


def test_sent_messages_count_by_kind() -> None:
    metrics = WorkerMetrics()
    messages = [Outgoing(SESSION, b"s1", b"{}", T0), Outgoing(SESSION, b"s2", b"{}", T0),
                Outgoing(DEAD_LETTER, None, b"{}", T0)]
    metrics.on_sent(messages, 0.004)
    assert value(metrics, "sessionizer_sink_messages_total", kind="session") == 2
    assert value(metrics, "sessionizer_sink_messages_total", kind="dead_letter") == 1
    assert value(metrics, "sessionizer_sink_send_seconds_count") == 1


def test_a_released_partition_leaves_no_series_behind() -> None:
    metrics = WorkerMetrics()
    for p in (0, 1):
        metrics.open_sessions.labels(str(p)).set(5)
        metrics.epoch.labels(str(p)).set(3)
        metrics.lag.labels("events", str(p)).set(10)
        metrics.state_held.labels(str(p)).set(1)
    metrics.forget_partition(1, ("events", "repartition"))
    text = metrics.exposition()[0].decode()
    assert 'sessionizer_open_sessions{partition="0"} 5.0' in text
    assert 'partition="1"' not in text
    metrics.forget_partition(7, ("events",))  # never owned: nothing to remove, no error


def test_the_exposition_is_prometheus_text_format() -> None:
    metrics = WorkerMetrics()
    metrics.observe_batch(BatchStats(records=3, types={"usage": 3}))
    body, content_type = metrics.exposition()
    assert content_type == CONTENT_TYPE
    assert content_type.startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    for name in ("sessionizer_events", "sessionizer_open_sessions", "sessionizer_consumer_lag",
                 "sessionizer_close_latency_seconds", "sessionizer_redis_seconds",
                 "sessionizer_batch_records", "process_cpu_seconds"):
        assert name in names
    # a registry per process: two workers in one test process do not collide
    assert WorkerMetrics().registry is not metrics.registry


# -- the gateway -------------------------------------------------------------------

KEY = "Kq7vM2pXr9LwB4nZ"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_gateway_counts_requests_by_endpoint_and_status_and_publishes() -> None:
    published: list[Record] = []
    failing = {"on": False}

    async def publish(records: Sequence[Record]) -> None:
        if failing["on"]:
            raise PublishError("broker down")
        published.extend(records)

    metrics = GatewayMetrics()

    async def scenario() -> str:
        app = create_app({KEY: "shop"}, metrics.instrument(publish),
                         settings=GatewaySettings(rate_limit=0))
        metrics.install(app)
        async with TestClient(TestServer(app)) as client:
            events = [{"type": "usage", "timestamp": T0, "user_id": "alice"},
                      {"type": "usage", "timestamp": T0 + 1, "user_id": "bob"}]
            response = await client.post("/v1/events", json=events, headers=AUTH)
            assert response.status == 202
            assert (await client.post("/v1/events", json=events)).status == 401
            assert (await client.get("/no/such/path")).status == 404
            failing["on"] = True
            assert (await client.post("/v1/events", json=events[:1], headers=AUTH)).status == 503
            response = await client.get("/metrics")
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE
            return await response.text()

    text = asyncio.run(scenario())
    assert len(published) == 2
    assert value(metrics, "sessionizer_gateway_requests_total", endpoint="/v1/events", method="POST", status="202") == 1
    assert value(metrics, "sessionizer_gateway_requests_total", endpoint="/v1/events", method="POST", status="401") == 1
    assert value(metrics, "sessionizer_gateway_requests_total", endpoint="/v1/events", method="POST", status="503") == 1
    assert value(metrics, "sessionizer_gateway_requests_total", endpoint="unmatched", method="GET", status="404") == 1
    assert value(metrics, "sessionizer_gateway_events_published_total") == 2
    assert value(metrics, "sessionizer_gateway_publish_failures_total") == 1
    assert value(metrics, "sessionizer_gateway_publish_duration_seconds_count") == 2
    assert value(metrics, "sessionizer_gateway_request_duration_seconds_count", endpoint="/v1/events") == 3
    assert value(metrics, "sessionizer_gateway_requests_in_flight") == 0
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "sessionizer_gateway_requests" in families
    (in_flight,) = families["sessionizer_gateway_requests_in_flight"].samples
    assert in_flight.value == 1  # the scrape itself
