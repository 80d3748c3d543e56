"""The faust side of the worker: group membership, assignment, topics, web.

Faust stays the framework; its per-record stream machinery is bypassed. The
consumer's fetch loop (``_drain_messages``) hands each fetched batch to
:class:`Runtime`, which owns offsets and commits itself: the applied offset per
partition lives in Redis (written atomically with the state it covers), and
Kafka's committed offset follows it for lag monitoring.

The faust web server is the worker's admin port (``SESSIONIZER_WEB_HOST`` /
``_PORT``, loopback by default): ``GET /healthz`` (liveness: 503 when a partition
with input waiting has applied nothing for ``SESSIONIZER_LIVENESS_STALL``
seconds), ``GET /readyz`` (200 once partitions are assigned and caught up),
``GET /stats`` and ``GET /metrics`` (Prometheus, :mod:`pipeline.worker.metrics`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.config import Settings
from pipeline.exceptions import FencedError, StaleStateError
from pipeline.security import aiokafka_options, check_redis, faust_options
from pipeline.store.connection import redis_client
from pipeline.store.redis import RedisStore
from pipeline.worker.health import Health
from pipeline.worker.heap import TRIM_INTERVAL_S, HeapTrimmer
from pipeline.worker.metrics import WorkerMetrics
from pipeline.worker.processor import BatchStats, PartitionProcessor, Topics
from pipeline.worker.registry import WORKER_RETENTION_S, worker_entry, workers_key
from pipeline.worker.routing import Router
from pipeline.worker.sink import KafkaSink

log = logging.getLogger("pipeline.worker")

#: how recent the fetch response that says a partition is caught up must be (ms)
CAUGHT_UP_FRESH_MS = 1_500


def _last_fetch_ms(consumer: Any, tp: TP) -> float | None:
    """When the broker last answered a fetch for ``tp`` (epoch ms), None if never."""
    stamp = consumer._thread._ensure_consumer().last_poll_timestamp(tp)
    return None if stamp is None else float(stamp)


TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker or Redis is unreachable or timing out: retried
    with backoff, without end. Anything else a record makes happen is the record's
    (retried a bounded number of times, then dead-lettered)."""
    return isinstance(exc, TRANSIENT) or (isinstance(exc, KafkaError) and bool(exc.retriable))


class Runtime:
    """The worker's state: one :class:`PartitionProcessor` per assigned partition."""

    def __init__(self, app: faust.App, settings: Settings, partitions: int | None = None) -> None:
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

    async def start(self) -> None:
        if not self.started:
            await check_redis(self.store.client, self.settings)
            await self.sink.start()
            self.started = True

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self._settle()
        await self.sink.stop()
        await self.store.close()

    # -- assignment ---------------------------------------------------------------
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

    # -- batches -------------------------------------------------------------------
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
            if now - self._last_commit >= 1.0:
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
                    fetched_ms = _last_fetch_ms(consumer, tp)
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

    async def _guarded(self, partition: int, func: Any, arg: Any) -> None:
        """Run one partition's step; retry transient failures; never lose a batch."""
        delay = 0.1
        while partition in self.processors:
            try:
                await func(arg)
                return
            except StaleStateError as exc:
                # Redis lost writes (restarted from an AOF missing its last second), or
                # a commit whose reply was lost did apply: what this worker holds is
                # ahead of Redis. Start over from what Redis holds.
                log.warning("%s; rebuilding from the input log", exc)
                self.metrics.partition_errors.labels("reclaim").inc()
                await self._rebuild(partition)
                return
            except FencedError as exc:
                log.warning("%s", exc)
                self.metrics.partition_errors.labels("fenced").inc()
                self._drop(partition)
                self.metrics.partitions.set(len(self.processors))
                return
            except Exception as exc:
                if is_infrastructure(exc):
                    self.metrics.partition_errors.labels("transient").inc()
                    log.warning("partition %d: transient failure (%s); retrying in %.1fs",
                                partition, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                # anything unexpected: state in Redis is consistent (the outbox holds
                # what was not acknowledged), so re-claim the partition, which resends
                # the outbox; a batch then runs again in parts, to find the record that
                # made it fail (a poison record) and dead-letter it alone
                log.exception("partition %d: %s; re-claiming it", partition, exc)
                self.metrics.partition_errors.labels("reclaim").inc()
                await asyncio.sleep(delay)
                await self._rebuild(partition)
                if func == self._process:
                    await self._isolate(partition, arg)
                return

    async def _lost_ownership(self, partition: int, exc: Exception) -> None:
        """What :meth:`_guarded` does on a fenced write or a store behind this worker."""
        log.warning("%s", exc)
        if isinstance(exc, StaleStateError):
            self.metrics.partition_errors.labels("reclaim").inc()
            await self._rebuild(partition)  # the replay runs the rest of the batch again
        else:
            self.metrics.partition_errors.labels("fenced").inc()
            self._drop(partition)
            self.metrics.partitions.set(len(self.processors))

    async def _isolate(self, partition: int, records: list[Any]) -> None:
        """Run a batch that failed again in halves, then record by record, in order: the
        parts that go through commit as usual (each exactly once: a part applied already
        is skipped by its offsets), and a record that fails alone, on each of
        ``record_max_attempts`` tries, is dead-lettered as ``processing_failed`` and the
        partition goes on past it. Broker or Redis faults meanwhile are retried."""
        attempts = self.settings.record_max_attempts
        stack = [records]
        while stack:
            chunk = stack.pop()
            tries = 0
            delay = 0.1
            while True:
                processor = self.processors.get(partition)
                if processor is None:
                    return  # released or fenced: the next owner replays what is left
                try:
                    await self._process(chunk)
                    break
                except (StaleStateError, FencedError) as exc:
                    await self._lost_ownership(partition, exc)
                    return
                except Exception as exc:
                    if is_infrastructure(exc):
                        log.warning("partition %d: transient failure (%s); retrying in %.1fs",
                                    partition, exc, delay)
                        self.metrics.partition_errors.labels("transient").inc()
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    await self._rebuild(partition)  # back to what Redis holds
                    if len(chunk) > 1:
                        middle = len(chunk) // 2
                        stack.extend((chunk[middle:], chunk[:middle]))  # the first half first
                        break
                    tries += 1
                    if tries < attempts:
                        log.warning("partition %d: record %s@%d failed (%s: %s); try %d of %d",
                                    partition, chunk[0].topic, chunk[0].offset,
                                    exc.__class__.__name__, exc, tries + 1, attempts)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    await self._dead_letter_failed(partition, chunk[0], exc, tries)
                    break

    async def _dead_letter_failed(self, partition: int, record: Any, exc: BaseException,
                                  tries: int) -> None:
        detail = (f"processing the record failed {tries} times: "
                  f"{exc.__class__.__name__}: {exc}")[:1000]
        log.error("partition %d: record %s@%d dead-lettered as processing_failed (%s)",
                  partition, record.topic, record.offset, detail)
        self.metrics.partition_errors.labels("processing_failed").inc()
        delay = 0.1
        while True:
            processor = self.processors.get(partition)
            if processor is None:
                return
            try:
                await processor.reject(record, detail)
                return
            except (StaleStateError, FencedError) as exc:
                await self._lost_ownership(partition, exc)
                return
            except Exception as failed:
                log.warning("partition %d: dead-lettering %s@%d failed (%s); retrying in %.1fs",
                            partition, record.topic, record.offset, failed, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if not is_infrastructure(failed):
                    await self._rebuild(partition)

    async def _rebuild(self, partition: int) -> None:
        """Claim ``partition`` again from what Redis holds (a new epoch, the outbox
        resent, the input replayed after the applied offsets), retrying with backoff
        while it stays assigned to this worker: a partition is never left without a
        processor while its records are fetched (they would be skipped)."""
        self._drop(partition)
        delay = 0.1
        while partition in self._assigned:
            try:
                await self._take(partition)
                return
            except Exception as exc:
                log.warning("partition %d: claiming it again failed (%s); retrying in %.1fs",
                            partition, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _commit_kafka(self) -> None:
        offsets = {}
        for partition, processor in self.processors.items():
            for topic in (self.topics.events, self.topics.repartition):
                resume = processor.resume_offset(topic)
                if resume is not None:
                    offsets[TP(topic, partition)] = resume
        if offsets:
            try:
                await self.app.consumer._commit(offsets)  # type: ignore[attr-defined]
            except Exception as exc:  # monitoring only: Redis holds the truth
                log.debug("kafka offset commit failed: %s", exc)

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

    # -- health ----------------------------------------------------------------------
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

    # -- gauges ----------------------------------------------------------------------
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


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, fetching with a wait of at most one tick.

    faust asks for ``fetch_max_wait_ms=1500``. A broker that holds a fetch for that
    long even when records come in meanwhile (the embedded Tansu does) makes every
    record reach the worker up to 1.5 s late, and the stream clock (arrival + wall
    time since the read) lag wall time by as much, so idle sessions closed up to a
    second late; and every call into the consumer thread (the offset look-ups when
    partitions are assigned) queued behind a held fetch. The worker wakes once per
    ``tick_interval`` anyway, so a fetch need not wait longer than that.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        tick = self.app.sessionizer.tick_interval  # type: ignore[attr-defined]
        # read by AIOKafkaConsumer.start() when it builds its fetcher
        consumer._fetch_max_wait_ms = max(10, min(1500, int(tick * 1000)))
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """Hands every fetched batch to the runtime in one call (no per-record task)."""

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        runtime: Runtime = self.app.sessionizer  # type: ignore[attr-defined]
        stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        try:
            while not (stopped() or fetcher_stopped()):
                records, _ = await self._wait_next_records(runtime.tick_interval)
                if self.should_stop:
                    break
                await runtime.handle(records or {})
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            raise


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class SessionizerApp(faust.App):
    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


def free_port(host: str) -> int:
    """A port the OS says is free now (faust refuses port 0)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _advertised(host: str) -> str:
    """The host name others reach this worker's web server by."""
    import socket

    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


def build_app(settings: Settings, partitions: int | None = None) -> SessionizerApp:
    """The worker's faust app; ``partitions``: the events topic's partition count as the
    preflight found it (the router's until the broker's metadata says otherwise)."""
    web_port = settings.web_port or free_port(settings.web_host)
    app = SessionizerApp(
        settings.consumer_group,
        **faust_options(settings),
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=web_port,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=max(0.5, settings.kafka_session_timeout / 6),
        broker_max_poll_records=settings.batch_max_records,
        consumer_max_fetch_size=settings.fetch_partition_bytes,
        broker_commit_interval=3600.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        producer_acks=-1,
        store="memory://",
    )
    runtime = Runtime(app, settings, partitions)
    app.sessionizer = runtime  # type: ignore[attr-defined]
    runtime.web_url = f"http://{_advertised(settings.web_host)}:{web_port}"
    for name in (settings.events_topic, settings.repartition_topic):
        app.topics.add(app.topic(name, key_serializer="raw", value_serializer="raw"))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: set[TP], **_: Any) -> None:
        await runtime.on_assigned(assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        await runtime.on_revoked(revoked)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        stuck = runtime.stalled()
        if stuck:
            return web.json(
                {"ok": False, "partitions": sorted(runtime.processors), "stalled": stuck,
                 "reason": f"partitions {stuck} have input waiting and applied nothing for "
                           f"{settings.liveness_stall:g} s"},
                status=503,
            )
        return web.json({"ok": True, "partitions": sorted(runtime.processors)})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ready, reason = runtime.readiness()
        return web.json(
            {"status": "ready" if ready else "not_ready", "reason": reason,
             "partitions": sorted(runtime.processors)},
            status=200 if ready else 503,
        )

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        return web.json({"partitions": sorted(runtime.processors), "totals": dict(runtime.totals)})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        body, content_type = runtime.metrics.exposition()
        return web.bytes(body, headers={"Content-Type": content_type})

    @app.timer(settings.metrics_interval, name="sessionizer-gauges")  # type: ignore[untyped-decorator]
    async def _gauges() -> None:
        try:
            await runtime.refresh_gauges()
        except Exception:  # monitoring only: never take the worker down for it
            log.exception("refreshing the gauges failed")

    if settings.heap_trim_mib:
        trimmer = HeapTrimmer(settings.heap_trim_mib * 2**20)

        @app.timer(TRIM_INTERVAL_S, name="sessionizer-heap-trim")  # type: ignore[untyped-decorator]
        async def _trim_heap() -> None:
            # in a thread: the trim releases the GIL, and the batches go on meanwhile
            released = await asyncio.get_running_loop().run_in_executor(None, trimmer.maybe_trim)
            if released:
                runtime.metrics.heap_released.inc(released)

    return app
