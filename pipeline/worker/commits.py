"""Commits: Kafka's committed offsets follow the applied ones.

The applied offset of each partition lives in Redis, written atomically with the
state it covers; that is what a claim resumes from. About once a second the
runtime commits the same offsets to the consumer group too, for lag monitoring
(``kafka-consumer-groups``, ``sessionizer status``); a failed commit is only
logged, the next one catches up.
"""

from __future__ import annotations

import logging

from faust.types import TP

from pipeline.worker.internals import commit_offsets
from pipeline.worker.state import RuntimeState

log = logging.getLogger("pipeline.worker")

#: seconds between two commits of the applied offsets to the consumer group
COMMIT_INTERVAL_S = 1.0


class Commits(RuntimeState):
    async def _commit_kafka(self) -> None:
        offsets = {}
        for partition, processor in self.processors.items():
            for topic in (self.topics.events, self.topics.repartition):
                resume = processor.resume_offset(topic)
                if resume is not None:
                    offsets[TP(topic, partition)] = resume
        if offsets:
            try:
                await commit_offsets(self.app.consumer, offsets)
            except Exception as exc:  # monitoring only: Redis holds the truth
                log.debug("kafka offset commit failed: %s", exc)
