"""Assignment: claiming the partitions faust assigns, releasing the revoked ones.

A claim (:meth:`pipeline.store.redis.RedisStore.claim`) fences the partition's
previous owner, seeks the consumer to the applied offsets Redis holds, warms the
key states and resends the outbox. A claim that fails is retried in the
background with backoff while the partition stays assigned; the routing follows
the events topic's partition count as the broker reports it.
"""

from __future__ import annotations

import asyncio
import logging

from faust.types import TP

from pipeline.worker.processor import PartitionProcessor
from pipeline.worker.routing import Router
from pipeline.worker.state import RuntimeState

log = logging.getLogger("pipeline.worker")


class Assignment(RuntimeState):
    def _partitions_of(self, tps: set[TP]) -> set[int]:
        ours = (self.topics.events, self.topics.repartition)
        return {tp.partition for tp in tps if tp.topic in ours}

    async def on_assigned(self, assigned: set[TP]) -> None:
        """Claim the assigned partitions. Never raises (faust would crash the worker): a
        partition whose claim fails is claimed again in the background, with backoff,
        while it stays assigned (its records are not read meanwhile: the claim seeks)."""
        wanted = self._partitions_of(assigned)
        self._assigned = set(wanted)
        try:
            await self._follow_partition_count()
            await self.start()
        except Exception as exc:
            log.warning("partitions %s: not claimed yet (%s: %s); retrying", sorted(wanted),
                        exc.__class__.__name__, exc)
            self.metrics.partition_errors.labels("claim").inc()
            for partition in sorted(wanted):
                self._claim_later(partition)
            return
        async with self.lock:
            await self._settle()
            for partition in list(self.processors):
                if partition not in wanted:
                    self._drop(partition)
            for partition in sorted(wanted - set(self.processors)):
                try:
                    await self._take(partition)
                except Exception as exc:
                    log.warning("partition %d: claiming it failed (%s: %s); retrying", partition,
                                exc.__class__.__name__, exc)
                    self.metrics.partition_errors.labels("claim").inc()
                    self._claim_later(partition)
            for processor in self.processors.values():  # the budget is per worker
                processor.cache_keys = self._cache_keys_each()
        self.metrics.partitions.set(len(self.processors))
        log.info("assigned partitions %s", sorted(self.processors))

    async def _follow_partition_count(self) -> None:
        """Route by the events topic's partition count as the broker's metadata says it
        (never the setting's default when the topic exists); when it grew, grow the
        repartition topic with it before anything is forwarded there."""
        consumer = self.app.consumer
        count = consumer.topic_partitions(self.topics.events) or self.partition_count
        if count is None:  # no metadata yet, and no preflight (tests building the app)
            count = self.settings.topic_partitions
        if self.router is not None and self.router.partitions == count:
            return
        repartition = consumer.topic_partitions(self.topics.repartition)
        if repartition is not None and repartition < count:
            if self.grow_repartition is None:
                raise RuntimeError(
                    f"{self.topics.repartition} has {repartition} partitions, "
                    f"{self.topics.events} {count}; add partitions to the repartition topic"
                )
            log.warning("%s grew to %d partitions: growing %s from %d", self.topics.events,
                        count, self.topics.repartition, repartition)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.grow_repartition, count)
            except Exception as exc:
                raise RuntimeError(
                    f"cannot add partitions to {self.topics.repartition} ({exc.__class__.__name__}: "
                    f"{exc}); give it {count} partitions, as {self.topics.events} has"
                ) from exc
        if self.router is not None:
            log.info("%s has %d partitions (was %d): routing by the new count",
                     self.topics.events, count, self.router.partitions)
        self.partition_count = count
        self.router = Router(count)
        for processor in self.processors.values():
            processor.router = self.router

    def _claim_later(self, partition: int) -> None:
        task = asyncio.ensure_future(self._claim_retry(partition))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _claim_retry(self, partition: int) -> None:
        delay = 0.5
        while partition in self._assigned and partition not in self.processors:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                async with self.lock:
                    if partition not in self._assigned or partition in self.processors:
                        return
                    await self._follow_partition_count()
                    await self.start()
                    await self._take(partition)
                    self.processors[partition].cache_keys = self._cache_keys_each()
                self.metrics.partitions.set(len(self.processors))
                log.info("assigned partitions %s", sorted(self.processors))
            except Exception as exc:
                log.warning("partition %d: claiming it failed again (%s: %s); retrying in %.1fs",
                            partition, exc.__class__.__name__, exc, delay)

    def _cache_keys_each(self) -> int:
        """Each partition's share of the key states this worker keeps in memory."""
        return max(1_000, self.settings.state_cache_keys // max(1, len(self._assigned)))

    async def _take(self, partition: int) -> None:
        assert self.router is not None
        store = self.metrics.timed(self.store)
        claim = await store.claim(partition)
        processor = PartitionProcessor(
            claim, rules=self.settings.rules, store=store, sink=self.sink,
            topics=self.topics, router=self.router, on_batch=self._on_batch,
            project_rules=self.settings.project_rules,
            updates_interval_s=self.settings.updates_interval or None,
            overlap_sends=True,
            cache_keys=self._cache_keys_each(),
            max_record_bytes=self.settings.max_record_bytes,
        )
        consumer = self.app.consumer
        positions = {}
        for topic in (self.topics.events, self.topics.repartition):
            tp = TP(topic, partition)
            resume = processor.resume_offset(topic)
            if resume is None:
                earliest = await consumer.earliest_offsets(tp)
                resume = earliest.get(tp) or 0
            positions[tp] = resume
        # in the consumer's thread: a seek from this one races the fetcher there
        # (aiokafka's fetched_records and seek_to both delete the partition's buffer)
        await consumer.seek_wait(positions)
        self._expect.update(positions)
        warmed = await processor.warm()
        resent = await processor.recover_outbox()
        self.processors[partition] = processor
        self.metrics.claims.inc()
        self.metrics.outbox_resent.inc(resent)
        self.metrics.epoch.labels(str(partition)).set(claim.epoch)
        self.metrics.state_held.labels(str(partition)).set(int(processor.complete))
        log.info("partition %d: epoch %d, resuming at %s; %s", partition, claim.epoch, claim.offsets,
                 f"{warmed} key states loaded" if processor.complete
                 else "more key states than half its cache share: they load as touched")

    async def on_revoked(self, revoked: set[TP]) -> None:
        async with self.lock:
            self._assigned -= self._partitions_of(revoked)
            await self._settle(self._partitions_of(revoked))
            for partition in self._partitions_of(revoked):
                self._drop(partition)
            self.metrics.partitions.set(len(self.processors))

    def _drop(self, partition: int) -> None:
        if self.processors.pop(partition, None) is not None:
            self.store.release(partition)
            for topic in (self.topics.events, self.topics.repartition):
                self._expect.pop(TP(topic, partition), None)
            self.metrics.forget_partition(partition, (self.topics.events, self.topics.repartition))
            self._heard.pop(partition, None)
            log.info("partition %d: released", partition)
