"""Retries: what a step does when it fails.

Broker or Redis unreachable (:func:`is_infrastructure`): retried with backoff,
without end. A store behind this worker (:class:`StaleStateError`): the partition
is claimed again and its input replayed. Fenced (:class:`FencedError`): the
partition is dropped, its new owner goes on. Anything else: the partition is
claimed again, and the batch that failed runs again in halves, then record by
record; a record that fails alone ``record_max_attempts`` times is dead-lettered
as ``processing_failed``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError
from redis.exceptions import ClusterError, ReadOnlyError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.exceptions import FencedError, StaleStateError
from pipeline.worker.state import RuntimeState

log = logging.getLogger("pipeline.worker")

#: Redis Cluster's answers while it fails over (the cluster down, a slot moving or not
#: yet covered, a write reaching a master just made a replica) are Redis faults too
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError,
             ClusterError, TryAgainError, SlotNotCoveredError, ReadOnlyError)


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker or Redis is unreachable or timing out: retried
    with backoff, without end. Anything else a record makes happen is the record's
    (retried a bounded number of times, then dead-lettered)."""
    return isinstance(exc, TRANSIENT) or (isinstance(exc, KafkaError) and bool(exc.retriable))


class Retries(RuntimeState):
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
