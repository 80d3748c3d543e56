"""Gauges and health: batch totals, lag, stream delay, open sessions, the worker
registry entry, and the probes (``/healthz``, ``/readyz``) that :mod:`.health` judges.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from faust.types import TP

from pipeline.worker.processor import BatchStats
from pipeline.worker.registry import WORKER_RETENTION_S, worker_entry, workers_key
from pipeline.worker.state import RuntimeState

log = logging.getLogger("pipeline.worker")


class Gauges(RuntimeState):
    def _on_batch(self, stats: BatchStats) -> None:
        totals = self.totals
        totals["records"] += stats.records
        totals["events"] += stats.events
        totals["forwarded"] += stats.forwarded
        for code, n in stats.rejected.items():
            totals[f"rejected:{code}"] += n
        for reason, n in stats.closed.items():
            totals[f"closed:{reason}"] += n
        self.metrics.observe_batch(stats)
        for hook in self.on_batch_hooks:
            hook(stats)

    def positions(self) -> dict[int, list[tuple[int, int | None]]]:
        """Per owned partition: (applied offset, high-water mark) of each input topic."""
        found: dict[int, list[tuple[int, int | None]]] = {}
        for partition, processor in list(self.processors.items()):
            found[partition] = []
            for topic in (self.topics.events, self.topics.repartition):
                try:
                    high = self.app.consumer.highwater(TP(topic, partition))
                except Exception:
                    high = None
                found[partition].append((processor.resume_offset(topic) or 0, high))
        return found

    def stalled(self) -> list[int]:
        """Partitions stuck with input waiting (``/healthz`` fails): :mod:`.health`."""
        return self.health.stalled(self.positions(), time.monotonic())

    def readiness(self) -> tuple[bool, str]:
        """Assigned and caught up (``/readyz``): :mod:`.health`."""
        return self.health.readiness(self.positions())

    @staticmethod
    async def _prune_workers(client: Any, workers: str, now_ms: int) -> None:
        """Forget workers not heard of for WORKER_RETENTION_S (stopped or crashed)."""
        import orjson

        stale = []
        for field, value in (await client.hgetall(workers)).items():
            try:
                seen_ms = int(orjson.loads(value)["seen_ms"])
            except (ValueError, KeyError, TypeError):
                seen_ms = 0
            if now_ms - seen_ms > WORKER_RETENTION_S * 1000:
                stale.append(field)
        if stale:
            await client.hdel(workers, *stale)
    async def refresh_gauges(self) -> None:
        """Open sessions (HLEN of each owned partition's open hash, one round trip),
        consumer lag and stream-clock delay of each owned partition; and this worker's
        entry in the workers hash that ``sessionizer status`` reads."""
        metrics, processors = self.metrics, dict(self.processors)
        now_ms = time.time_ns() // 1_000_000
        self.stalled()  # progress sampled between the probes too
        consumer = self.app.consumer
        for partition, processor in processors.items():
            label = str(partition)
            for topic in (self.topics.events, self.topics.repartition):
                try:
                    high = consumer.highwater(TP(topic, partition))
                except Exception:
                    high = None
                if high is not None:
                    resume = processor.resume_offset(topic) or 0
                    metrics.lag.labels(topic, label).set(max(0, high - resume))
            if processor.clock_ms > 0:
                metrics.stream_delay.labels(label).set(max(0, now_ms - processor.clock_ms) / 1000)
            metrics.state_held.labels(label).set(int(processor.complete))
        client, keys = getattr(self.store, "client", None), getattr(self.store, "keys", None)
        if client is None or keys is None:
            return
        workers = workers_key(self.settings.redis_key_prefix)
        try:
            pipe = client.pipeline(transaction=False)
            for partition in processors:
                pipe.hlen(keys.open(partition))
            worker_id, entry = worker_entry(
                sorted(processors), {p: processors[p].epoch for p in processors}, self.web_url,
                self.settings.metrics_interval, now_ms,
            )
            pipe.hset(workers, worker_id, entry)
            counts = (await pipe.execute())[: len(processors)]
            if time.monotonic() - self._last_prune >= 60:
                self._last_prune = time.monotonic()
                await self._prune_workers(client, workers, now_ms)
        except Exception as exc:  # monitoring only; the next refresh tries again
            log.debug("open-session gauge not refreshed: %s", exc)
            return
        for partition, count in zip(processors, counts, strict=True):
            if partition in self.processors:
                metrics.open_sessions.labels(str(partition)).set(int(count))
