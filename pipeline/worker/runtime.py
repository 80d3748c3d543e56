"""The worker runtime: the parts put together.

:class:`Runtime` owns one :class:`~pipeline.worker.processor.PartitionProcessor`
per assigned partition, and offsets and commits itself: the applied offset per
partition lives in Redis (written atomically with the state it covers), and
Kafka's committed offset follows it for lag monitoring. Each part reads on its own:

- :mod:`.assignment`: claiming assigned partitions, releasing revoked ones;
- :mod:`.scheduling`: one chain of steps per partition, batches and ticks;
- :mod:`.retries`: what a failed step does (backoff, re-claim, dead letter);
- :mod:`.commits`: the consumer group's offsets following Redis;
- :mod:`.gauges`: metrics, the worker registry entry, the health probes.

The faust wiring is :mod:`.app`; faust's and aiokafka's private API is used only in
:mod:`.internals`.
"""

from __future__ import annotations

from pipeline.security import check_redis
from pipeline.worker.assignment import Assignment
from pipeline.worker.commits import Commits
from pipeline.worker.gauges import Gauges
from pipeline.worker.retries import Retries
from pipeline.worker.scheduling import Scheduling


class Runtime(Assignment, Scheduling, Retries, Commits, Gauges):
    """The worker's state and what acts on it: one :class:`PartitionProcessor` per
    assigned partition."""

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
