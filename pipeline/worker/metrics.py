"""Prometheus metrics of the worker (``GET /metrics``, text format).

Each process keeps its own :class:`~prometheus_client.CollectorRegistry` (no
global state: tests build as many as they like). The worker's metrics are fed by
the runtime (:mod:`pipeline.worker.runtime`) from each batch's
:class:`~pipeline.worker.processor.BatchStats`, from a timed proxy around the
store and from a timer that refreshes the gauges; the gateway's by an aiohttp
middleware and a wrapper around its publish function. docs/operations.md ("Metrics") says
what each one means and what healthy looks like.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.core.session import KeyState
from pipeline.exceptions import FencedError
from pipeline.logs import SECONDS_BUCKETS, exposition, new_registry
from pipeline.store.base import Claim, Commit, SessionStore

if TYPE_CHECKING:
    from pipeline.worker.processor import BatchStats

__all__ = [
    "EVENT_TYPES",
    "TimedStore",
    "WorkerMetrics",
]

#: Event types counted under their own label; any other type counts as ``other``
#: (the type is free text: a label per value would grow without bound).
EVENT_TYPES = frozenset({"session", "sessionend", "heartbeat", "usage", "error", "log", "404"})

#: Engine counters (``BatchStats.counters``) -> the attribute of their metric; ``opened``
#: and ``closed_<reason>`` have theirs, ``rejected_*`` are in ``BatchStats.rejected``.
_ENGINE_COUNTERS = {
    "amended": "amended",
    "reopened": "reopened",
    "duplicate_events": "duplicates",
    "duplicate_events_closed": "duplicates",
    "clamped_events": "clamped",
}

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class WorkerMetrics:
    """A worker's metrics (all prefixed ``sessionizer_``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        # -- input -----------------------------------------------------------
        self.records = Counter(
            "sessionizer_records", "Input records read (events and repartition topics).", registry=r
        )
        self.events = Counter(
            "sessionizer_events",
            "Valid events applied, by event type (types outside the well-known ones count as 'other').",
            ["type"], registry=r,
        )
        self.rejected = Counter(
            "sessionizer_events_rejected", "Input sent to the dead-letter topic, by reason.",
            ["reason"], registry=r,
        )
        self.forwarded = Counter(
            "sessionizer_events_forwarded",
            "Events re-routed through the repartition topic (their key hashed elsewhere).", registry=r,
        )
        self.duplicates = Counter(
            "sessionizer_duplicate_events", "Events dropped as duplicates (an event id seen before).",
            registry=r,
        )
        self.arrivals_clamped = Counter(
            "sessionizer_clamped_arrivals",
            "Records whose Kafka timestamp (arrival time) was later than the worker's wall clock "
            "plus max_future_skew: clamped to that, so it cannot move the stream clock ahead.",
            registry=r,
        )
        self.refused_messages = Counter(
            "sessionizer_refused_messages",
            "Outgoing messages the broker refused (too large, or otherwise for good): replaced by "
            "a marker record and a processing_failed dead letter.", registry=r,
        )
        self.clamped = Counter(
            "sessionizer_clamped_events", "Events whose time was too far ahead of arrival (clamped).",
            registry=r,
        )
        # -- sessions --------------------------------------------------------
        self.opened = Counter("sessionizer_sessions_opened", "Sessions opened.", registry=r)
        self.closed = Counter(
            "sessionizer_sessions_closed",
            "Sessions closed, by reason (timeout, ended, max_duration).", ["reason"], registry=r,
        )
        self.amended = Counter(
            "sessionizer_sessions_amended", "Late events added to a recently closed session.", registry=r
        )
        self.reopened = Counter(
            "sessionizer_sessions_reopened", "Sessions closed by timeout and reopened by a late event.",
            registry=r,
        )
        self.session_records = Counter(
            "sessionizer_session_records",
            "Session records sent to the sessions topic (closes and re-sent amended sessions), "
            "by close reason.", ["reason"], registry=r,
        )
        self.open_sessions = Gauge(
            "sessionizer_open_sessions", "Open sessions of each owned partition (from Redis).",
            ["partition"], registry=r,
        )
        self.close_latency = Histogram(
            "sessionizer_close_latency_seconds",
            "Idle closes: from the session's deadline (last arrival + inactivity timeout) to "
            "the close record being committed and handed to the producer.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        # -- batches and the consumer -------------------------------------------
        self.batch_records = Histogram(
            "sessionizer_batch_records", "Records per partition batch.", buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "sessionizer_batch_duration_seconds",
            "Time to process one partition batch (parse, load, core, commit).",
            buckets=SECONDS_BUCKETS, registry=r,
        )
        self.lag = Gauge(
            "sessionizer_consumer_lag",
            "Records not applied yet per owned partition: high-water mark minus the next offset "
            "to apply.", ["topic", "partition"], registry=r,
        )
        self.state_held = Gauge(
            "sessionizer_partition_state_held",
            "1 while the worker holds every key state of the partition (its batches read nothing "
            "from Redis), 0 while they load as touched (more than half the key cache's share).",
            ["partition"], registry=r,
        )
        self.stream_delay = Gauge(
            "sessionizer_stream_clock_delay_seconds",
            "Wall time minus the partition's stream clock (grows while a backlog is replayed).",
            ["partition"], registry=r,
        )
        # -- Redis and Kafka round trips ------------------------------------------
        self.redis_seconds = Histogram(
            "sessionizer_redis_seconds", "Redis round trips of the store, by operation.",
            ["op"], buckets=SECONDS_BUCKETS, registry=r,
        )
        self.redis_errors = Counter(
            "sessionizer_redis_errors", "Store operations that failed, by operation.", ["op"], registry=r
        )
        self.sink_messages = Counter(
            "sessionizer_sink_messages",
            "Messages acknowledged by the broker, by kind (session, dead_letter, forward, update).",
            ["kind"], registry=r,
        )
        self.sink_seconds = Histogram(
            "sessionizer_sink_send_seconds",
            "From sending a group of messages to the broker's acknowledgement of all of them.",
            buckets=SECONDS_BUCKETS, registry=r,
        )
        # -- ownership -------------------------------------------------------------
        self.partitions = Gauge(
            "sessionizer_assigned_partitions", "Input partitions this worker owns.", registry=r
        )
        self.epoch = Gauge(
            "sessionizer_partition_epoch", "Fencing epoch of each owned partition.", ["partition"],
            registry=r,
        )
        self.claims = Counter(
            "sessionizer_partition_claims",
            "Partitions claimed (on assignment, or re-claimed after an error).", registry=r,
        )
        self.outbox_resent = Counter(
            "sessionizer_outbox_resent",
            "Outbox messages re-sent when a partition was claimed (a previous owner's unacknowledged sends).",
            registry=r,
        )
        self.partition_errors = Counter(
            "sessionizer_partition_errors",
            "Failed partition steps, by kind: transient (broker or Redis unreachable: retried), "
            "fenced (another worker owns the partition), reclaim (unexpected error: partition "
            "re-claimed, the batch re-run in parts), claim (claiming an assigned partition failed: "
            "retried), processing_failed (a record failed every attempt: dead-lettered).",
            ["kind"], registry=r,
        )
        self.heap_released = Counter(
            "sessionizer_heap_released_bytes",
            "Resident memory handed back to the system by trimming the C heap "
            "(SESSIONIZER_HEAP_TRIM_MIB).", registry=r,
        )
        for kind in ("transient", "fenced", "reclaim", "claim", "processing_failed"):
            self.partition_errors.labels(kind)
        for op in ("load", "commit", "claim", "outbox"):
            self.redis_seconds.labels(op)
            self.redis_errors.labels(op)

    def exposition(self) -> tuple[bytes, str]:
        return exposition(self.registry)

    # -- feeding ---------------------------------------------------------------------
    def observe_batch(self, stats: BatchStats, now_ms: int | None = None) -> None:
        """Count one batch's :class:`~pipeline.worker.processor.BatchStats`."""
        if stats.records:
            self.records.inc(stats.records)
            self.batch_records.observe(stats.records)
        for kind, n in stats.types.items():
            self.events.labels(kind if kind in EVENT_TYPES else "other").inc(n)
        for reason, n in stats.rejected.items():
            self.rejected.labels(str(reason)).inc(n)
        if stats.forwarded:
            self.forwarded.inc(stats.forwarded)
        if stats.arrivals_clamped:
            self.arrivals_clamped.inc(stats.arrivals_clamped)
        for reason, n in stats.closed.items():
            self.session_records.labels(reason).inc(n)
        for name, n in stats.counters.items():
            if not n:
                continue
            if name == "opened":
                self.opened.inc(n)
            elif name.startswith("closed_"):
                self.closed.labels(name.removeprefix("closed_")).inc(n)
            elif name in _ENGINE_COUNTERS:
                getattr(self, _ENGINE_COUNTERS[name]).inc(n)
        if stats.idle_deadlines_ms:
            now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
            for deadline_ms in stats.idle_deadlines_ms:
                self.close_latency.observe(max(0, now - deadline_ms) / 1000)

    def on_sent(self, messages: Sequence[Any], seconds: float) -> None:
        """The sink's hook: messages acknowledged, and how long the broker took."""
        self.sink_seconds.observe(seconds)
        kinds: dict[str, int] = {}
        for message in messages:
            kinds[message.kind] = kinds.get(message.kind, 0) + 1
        for kind, n in kinds.items():
            self.sink_messages.labels(_KIND_NAMES.get(kind, kind)).inc(n)

    def forget_partition(self, partition: int, topics: Iterable[str]) -> None:
        """Remove the per-partition series of a partition this worker no longer owns."""
        label = str(partition)
        for gauge in (self.open_sessions, self.epoch, self.stream_delay, self.state_held):
            try:
                gauge.remove(label)
            except KeyError:
                pass
        for topic in topics:
            try:
                self.lag.remove(topic, label)
            except KeyError:
                pass

    def timed(self, store: Any) -> TimedStore:
        """``store`` with its round trips timed into ``sessionizer_redis_seconds``."""
        return TimedStore(store, self)


_KIND_NAMES = {"s": "session", "d": "dead_letter", "f": "forward", "u": "update"}


class TimedStore:
    """A :class:`~pipeline.store.base.SessionStore` proxy timing each round trip."""

    def __init__(self, store: SessionStore, metrics: WorkerMetrics) -> None:
        self.store = store
        self._seconds = metrics.redis_seconds
        self._errors = metrics.redis_errors

    async def _timed(self, op: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        except FencedError:
            raise  # an answer, not a failure of Redis
        except Exception:
            self._errors.labels(op).inc()
            raise
        finally:
            self._seconds.labels(op).observe(time.perf_counter() - started)

    async def claim(self, partition: int) -> Claim:
        result: Claim = await self._timed("claim", self.store.claim(partition))
        return result

    async def has_due(self, partition: int, until_ms: int) -> bool:
        result: bool = await self._timed("has_due", self.store.has_due(partition, until_ms))
        return result

    async def load(
        self, partition: int, keys: Iterable[Any], due_until_ms: int | None, due_limit: int
    ) -> list[KeyState]:
        result: list[KeyState] = await self._timed(
            "load", self.store.load(partition, keys, due_until_ms, due_limit)
        )
        return result

    async def load_all(self, partition: int, limit: int) -> list[KeyState] | None:
        result: list[KeyState] | None = await self._timed("load_all", self.store.load_all(partition, limit))
        return result

    async def commit(self, partition: int, epoch: int, commit: Commit) -> bool:
        result: bool = await self._timed("commit", self.store.commit(partition, epoch, commit))
        return result

    async def outbox(self, partition: int) -> list[bytes]:
        result: list[bytes] = await self._timed("outbox", self.store.outbox(partition))
        return result

    async def revisions(self, refs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        result: dict[tuple[str, str], int] = await self._timed("revisions", self.store.revisions(refs))
        return result

    async def raise_revisions(self, marks: Mapping[tuple[str, str], int], now_ms: int) -> None:
        await self._timed("raise_revisions", self.store.raise_revisions(marks, now_ms))

    async def open_sessions(
        self, project: str | None = None, user_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return await self.store.open_sessions(project, user_id, limit)

    async def get_session(self, session_id: str, project: str | None = None) -> dict[str, Any] | None:
        return await self.store.get_session(session_id, project)

    async def close(self) -> None:
        await self.store.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)
