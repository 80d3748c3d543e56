"""The worker runtime's state, shared by the parts that act on it.

:class:`RuntimeState` holds what the assignment (:mod:`.assignment`), the
scheduling of steps (:mod:`.scheduling`), the retries (:mod:`.retries`), the
Kafka commits (:mod:`.commits`) and the gauges (:mod:`.gauges`) read and write;
:class:`pipeline.worker.runtime.Runtime` puts them together. The methods declared
here without a body are the ones each part calls on another.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from faust.types import TP

from pipeline.config import Settings
from pipeline.security import aiokafka_options
from pipeline.store.connection import redis_client
from pipeline.store.redis import RedisStore
from pipeline.worker.health import Health
from pipeline.worker.metrics import WorkerMetrics
from pipeline.worker.processor import BatchStats, PartitionProcessor, Topics
from pipeline.worker.routing import Router
from pipeline.worker.sink import KafkaSink


class RuntimeState:
    """The worker's state: one :class:`PartitionProcessor` per assigned partition.
    ``app``: the faust app (its consumer is asked for offsets, seeks and commits)."""

    def __init__(self, app: Any, settings: Settings, partitions: int | None = None) -> None:
        self.app = app
        self.settings = settings
        #: the events topic's partition count as the broker last reported it (the preflight
        #: reads it before the app starts; every assignment reads it again)
        self.partition_count = partitions
        self.topics = Topics(
            events=settings.events_topic,
            repartition=settings.repartition_topic,
            dlq=settings.dlq_topic,
            sessions=settings.sessions_topic,
            updates=settings.updates_topic,
        )
        self.metrics = WorkerMetrics()
        self.store = RedisStore(
            redis_client(settings), settings.redis_key_prefix,
            history_retention_ms=round(settings.history_retention * 1000),
            revision_retention_ms=round(settings.revision_retention * 1000),
            history_max=settings.history_max_sessions,
        )
        self.sink = KafkaSink(
            settings.kafka_bootstrap, self.topics, settings.kafka_idempotence,
            max_value_bytes=settings.max_event_bytes, max_record_bytes=settings.max_record_bytes,
            **aiokafka_options(settings),
        )
        self.sink.on_sent.append(self.metrics.on_sent)
        self.sink.on_refused.append(self.metrics.refused_messages.inc)
        self.processors: dict[int, PartitionProcessor] = {}
        self._assigned: set[int] = set()  # partitions of this worker's current assignment
        self._heard: dict[int, float] = {}  # partition -> when the broker last answered for it (ms)
        self.router: Router | None = None
        self.lock = asyncio.Lock()
        # partition -> its latest step (a batch or a tick); a partition's steps run one
        # after the other, different partitions' side by side
        self._steps: dict[int, asyncio.Future[None]] = {}
        self.started = False
        self.tick_interval = settings.tick_interval
        self._last_tick = 0.0
        self._last_commit = 0.0
        self._expect: dict[TP, int] = {}  # first offset due after a claim (gap check)
        self.totals: defaultdict[str, int] = defaultdict(int)
        self.on_batch_hooks: list[Any] = []
        self.web_url = ""  # set by build_app; announced for `sessionizer status`
        self._last_prune = 0.0
        self._background: set[asyncio.Task[None]] = set()  # claims retried after a failure
        #: grows the repartition topic to a partition count (``pipeline.worker.run``)
        self.grow_repartition: Any = None
        self.health = Health(settings.liveness_stall, settings.batch_max_records)

    # -- what one part calls on another ------------------------------------------------
    async def start(self) -> None:
        raise NotImplementedError

    async def _take(self, partition: int) -> None:
        raise NotImplementedError

    def _drop(self, partition: int) -> None:
        raise NotImplementedError

    async def _settle(self, partitions: set[int] | None = None) -> None:
        raise NotImplementedError

    async def _process(self, records: list[Any]) -> None:
        raise NotImplementedError

    async def _guarded(self, partition: int, func: Any, arg: Any) -> None:
        raise NotImplementedError

    async def _rebuild(self, partition: int) -> None:
        raise NotImplementedError

    async def _commit_kafka(self) -> None:
        raise NotImplementedError

    def _on_batch(self, stats: BatchStats) -> None:
        raise NotImplementedError

    def positions(self) -> dict[int, list[tuple[int, int | None]]]:
        raise NotImplementedError

    def stalled(self) -> list[int]:
        raise NotImplementedError
