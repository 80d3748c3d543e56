"""Scheduling: one chain of steps per partition, and the ticks.

Each fetched batch becomes one step per partition (:meth:`Scheduling.handle`); a
partition's steps run one after the other, different partitions' side by side, so
a partition's next batch is parsed and applied while its last commit is in
flight. Once per ``tick_interval`` every partition gets a tick step (idle
closes), told whether the partition is caught up on the broker's recent word.
Each step runs under :meth:`pipeline.worker.retries.Retries._guarded`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from faust.types import TP

from pipeline.worker.commits import COMMIT_INTERVAL_S
from pipeline.worker.internals import last_fetch_ms
from pipeline.worker.state import RuntimeState

log = logging.getLogger("pipeline.worker")

#: how recent the fetch response that says a partition is caught up must be (ms)
CAUGHT_UP_FRESH_MS = 1_500


class Scheduling(RuntimeState):
    async def handle(self, records: Mapping[Any, list[Any]]) -> None:
        """Start one step per partition for a fetched batch, and return once the steps
        started by the call before have ended: each partition's next batch is parsed
        and applied while its last commit is in flight, and the fetch goes on meanwhile."""
        by_partition: dict[int, list[tuple[TP, list[Any]]]] = defaultdict(list)
        async with self.lock:
            previous = [step for step in self._steps.values() if not step.done()]
            for tp, batch in sorted(records.items(), key=lambda item: (item[0].partition, item[0].topic != self.topics.events)):
                if batch and tp.partition in self.processors:
                    by_partition[tp.partition].append((TP(tp.topic, tp.partition), batch))
            for partition, batches in by_partition.items():
                self._chain(partition, self._batch_step(partition, batches))
            if previous:
                await asyncio.wait(previous)
            now = time.monotonic()
            if now - self._last_tick >= self.tick_interval:
                self._last_tick = now
                await self._tick()
            if now - self._last_commit >= COMMIT_INTERVAL_S:
                self._last_commit = now
                await self._commit_kafka()

    def _chain(self, partition: int, step: Any) -> None:
        """Run the coroutine ``step`` after the partition's steps before it."""
        before = self._steps.get(partition)

        async def after() -> None:
            if before is not None and not before.done():
                await asyncio.wait([before])
            await step

        self._steps[partition] = asyncio.ensure_future(after())

    async def _settle(self, partitions: set[int] | None = None) -> None:
        """Wait for the steps in flight (of ``partitions``; default: all)."""
        steps = [s for p, s in self._steps.items() if partitions is None or p in partitions]
        if steps:
            await asyncio.wait(steps)
        for partition in list(self._steps):
            if self._steps[partition].done():
                del self._steps[partition]

    async def _batch_step(self, partition: int, batches: list[tuple[TP, list[Any]]]) -> None:
        records: list[Any] = []
        for tp, batch in batches:
            expect = self._expect.pop(tp, None)
            if expect is not None and batch[0].offset > expect:
                # fetched from a position past the one we resume at: read again from there
                log.info("%s: fetched from %d, resuming at %d", tp, batch[0].offset, expect)
                await self.app.consumer.seek_wait({tp: expect})
                continue
            records.extend(batch)
        if records:
            await self._guarded(partition, self._process, records)

    async def _process(self, records: list[Any]) -> None:
        """One partition's batch (all ``records`` are of one partition), timed; by the
        processor that owns the partition when the step runs (a rebuild replaces it)."""
        processor = self.processors.get(records[0].partition)
        if processor is None:
            return
        started = time.perf_counter()
        await processor.process(records)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _tick_one(self, partition: int, caught_up: bool) -> None:
        processor = self.processors.get(partition)
        if processor is not None:
            await processor.tick(caught_up)

    async def _tick(self) -> None:
        consumer = self.app.consumer
        now = time.time()
        for partition, processor in self.processors.items():
            caught_up = True
            heard_ms: float | None = now * 1000
            for topic in (self.topics.events, self.topics.repartition):
                tp = TP(topic, partition)
                high: int | None
                fetched_ms: float | None
                try:
                    high = consumer.highwater(tp)
                    fetched_ms = last_fetch_ms(consumer, tp)
                except Exception:
                    high = fetched_ms = None
                resume = processor.resume_offset(topic) or 0
                if high is None or high > resume:
                    caught_up = False
                heard_ms = None if fetched_ms is None or heard_ms is None else min(heard_ms, fetched_ms)
            # caught up only on the broker's recent word: a highwater from before a broker
            # outage, or from before this process was stopped, says nothing about what
            # came meanwhile. The stream clock must not run on wall time past records it
            # has not seen (they would find their sessions closed), and once the broker
            # answers again the silence does not count either: records held up by it (in
            # the broker, or in producers that could not reach it) may come right after
            # an answer that did not have them yet.
            if heard_ms is None or now * 1000 - heard_ms > CAUGHT_UP_FRESH_MS:
                caught_up = False
            if heard_ms is not None:
                # the last answer seen before this one (or the last record read, whichever
                # is later: the processor may be new, or no tick ran since its last read)
                before = max(self._heard.get(partition, 0.0), processor.last_read * 1000)
                if heard_ms - before > CAUGHT_UP_FRESH_MS:
                    processor.hold_clock((heard_ms - before) / 1000)
                self._heard[partition] = heard_ms
            self._chain(partition, self._guarded(partition, functools.partial(self._tick_one, partition), caught_up))
