"""Every use of faust's and aiokafka's private API, in one place.

The rest of the worker calls this module's small functions and classes; nothing
else in ``pipeline/`` reaches past the public API of either library. Each use
below names what it touches, why, and what breaks without it. All were checked
against faust-streaming 0.15.3 (with mode-streaming 0.7.1) and aiokafka 0.14.0,
the versions ``pyproject.toml`` pins; ``tests/unit/test_internals.py`` inspects
the installed classes and fails, naming the attribute and the version, when one
of them is gone or its signature changed. Upgrading either library means: bump
the pin, run that test, re-read each use below against the new source.

1. :func:`last_fetch_ms`: ``faust Consumer._thread`` (the consumer thread) and
   ``AIOKafkaConsumerThread._ensure_consumer()`` reach the underlying
   ``aiokafka.AIOKafkaConsumer`` to call its public ``last_poll_timestamp(tp)``.
   The tick calls a partition caught up only on a fetch answer from the broker
   younger than ``CAUGHT_UP_FRESH_MS``; faust exposes no such time.
2. :func:`commit_offsets`: ``faust Consumer._commit(offsets)`` commits explicit
   offsets to the group. faust's public ``commit()`` commits what its own
   per-record acking tracked, which the worker bypasses (Redis holds the applied
   offsets; Kafka's committed offset follows them for lag monitoring only).
3. :class:`BatchConsumerThread` overrides
   ``AIOKafkaConsumerThread._create_worker_consumer(transport)`` and sets the
   built ``AIOKafkaConsumer._fetch_max_wait_ms`` (read by its ``start()`` when
   it builds the fetcher): faust hard-codes a 1500 ms fetch wait, which made a
   broker that holds fetches (Tansu) deliver every record up to 1.5 s late.
4. :class:`BatchConsumer` overrides ``faust Consumer._new_consumer_thread()`` (to
   use 3.) and ``Consumer._drain_messages(fetcher)``, the fetch loop, to hand each
   fetched batch to the runtime in one call instead of faust's per-record stream
   tasks; the loop reads ``Service._stopped`` of the consumer and of the fetcher
   (mode), calls ``Consumer._wait_next_records(timeout)`` and catches
   ``consumer_stopped_errors`` as faust's own loop does.
5. :class:`SessionizerApp` overrides ``faust.App._new_transport()`` to put 4. in
   place of faust's aiokafka transport consumer.
6. :class:`SessionizerApp` overrides ``faust.App._create_directories()``, which
   faust calls when the app first starts (``App.on_first_start``), to create nothing: faust makes
   ``<app id>-data/v1/tables`` in the working directory for its table stores, and
   the worker keeps no table (its state is in Redis, ``store="memory://"``), so every
   worker start left an empty directory tree wherever it was started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

#: the versions every use above was checked against (pinned in pyproject.toml)
CHECKED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}

#: the fetch wait a consumer is built with, bounds in ms (faust's own is the upper one)
FETCH_WAIT_MIN_MS, FETCH_WAIT_MAX_MS = 10, 1500


class BatchHandler(Protocol):
    """What the fetch loop hands batches to (:class:`pipeline.worker.runtime.Runtime`)."""

    tick_interval: float

    async def handle(self, records: Mapping[Any, list[Any]]) -> None: ...


def last_fetch_ms(consumer: Any, tp: TP) -> float | None:
    """When the broker last answered a fetch for ``tp`` (epoch ms), None if never.
    ``consumer``: the faust app's consumer. Use 1."""
    stamp = consumer._thread._ensure_consumer().last_poll_timestamp(tp)
    return None if stamp is None else float(stamp)


async def commit_offsets(consumer: Any, offsets: Mapping[TP, int]) -> bool:
    """Commit ``offsets`` (the next offset to read per partition) to the consumer
    group. ``consumer``: the faust app's consumer. Use 2."""
    return bool(await consumer._commit(offsets))


def fetch_wait_ms(tick_interval_s: float) -> int:
    """The fetch wait for a worker that wakes every ``tick_interval_s``: one tick,
    within [FETCH_WAIT_MIN_MS, FETCH_WAIT_MAX_MS]."""
    return max(FETCH_WAIT_MIN_MS, min(FETCH_WAIT_MAX_MS, int(tick_interval_s * 1000)))


def set_fetch_max_wait(consumer: Any, wait_ms: int) -> None:
    """Make an ``aiokafka.AIOKafkaConsumer`` not started yet fetch with ``wait_ms``. Use 3."""
    consumer._fetch_max_wait_ms = wait_ms


def _handler(app: Any) -> BatchHandler:
    handler: BatchHandler = app.sessionizer
    return handler


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, fetching with a wait of at most one tick (use 3).

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
        set_fetch_max_wait(consumer, fetch_wait_ms(_handler(self.app).tick_interval))
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """Hands every fetched batch to the runtime in one call, no per-record task (use 4)."""

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        runtime = _handler(self.app)
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
    """The worker's faust app: its transport's consumer is :class:`BatchConsumer` (use 5),
    and it makes no data directory (use 6)."""

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    def _create_directories(self) -> None:
        """Nothing on disk: the worker keeps no faust table (use 6)."""
