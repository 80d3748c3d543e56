"""The exporter process: closed sessions from the ``sessions`` topic into a table.

Each polled batch (deduplicated: highest revision per session) is written with the
next offsets of its partitions in one database transaction; on every assignment the
consumer seeks to the offsets the table holds. So a crash at any point loses nothing
(the offsets never run ahead of the rows) and doubles nothing (a row is keyed by
(``project``, ``session_id``) and replaced only by a higher revision). The offsets
are also committed to the consumer group, for lag monitoring only.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

from pipeline.config import Settings, load_settings
from pipeline.export.consumer import SessionConsumer
from pipeline.export.sql import open_table

DEFAULT_URL = "sqlite:///sessions.db"


@dataclass(slots=True)
class Progress:
    """What the exporter did so far, and its progress line."""

    started: float = field(default_factory=time.monotonic)
    read: int = 0
    sessions: int = 0
    rows: int = 0
    batches: int = 0
    busy_s: float = 0.0  # time spent writing batches
    first_at: float | None = None  # when the first batch came (the group joined)
    last_at: float | None = None  # when the last batch was written

    def rate(self) -> float:
        """Sessions per second from the first batch read to the last one written."""
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.sessions / max(1e-3, self.last_at - self.first_at)

    def line(self, partitions: list[int]) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        return (f"exported {self.sessions:,} sessions ({self.rows:,} rows written, {self.read:,} "
                f"records read) in {elapsed:,.1f} s, {self.rate():,.0f} sessions/s from the first "
                f"batch to the last, {self.busy_s:,.2f} s writing; partitions {partitions}")


def run_export(
    url: str = DEFAULT_URL,
    *,
    table: str = "sessions",
    from_beginning: bool = False,
    group_id: str = "sessionizer-export",
    settings: Settings | None = None,
    progress_s: float = 5.0,
    batch_size: int = 2_000,
    out: TextIO | None = None,
) -> Progress:
    """Export until SIGINT or SIGTERM; the batch in hand is written before stopping."""
    settings = settings if settings is not None else load_settings()
    out = out if out is not None else sys.stderr
    target = open_table(url, table)
    consumer = SessionConsumer(
        settings, group_id=group_id, from_beginning=from_beginning, resume=target.positions,
        client_id="sessionizer-export", max_records=batch_size,
    )
    progress = Progress()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        consumer.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    where = url.split("@")[-1]
    out.write(f"exporting {settings.sessions_topic} @ {settings.kafka_bootstrap} to {where} "
              f"table {table} (group {group_id}; Ctrl-C to stop)\n")
    out.flush()
    last = time.monotonic()
    shown: tuple[int, list[int]] | None = None  # (records read, partitions) of the last line
    try:
        while not consumer.stopping:
            # poll directly (not consumer.batches()): an idle exporter reports too, so a
            # rebalance that hands it partitions shows even when nothing is left to read
            batch = consumer.poll()
            if batch is not None:
                began = time.monotonic()
                if progress.first_at is None:
                    progress.first_at = began
                progress.rows += target.apply(batch.sessions, batch.topic, batch.positions)
                progress.last_at = time.monotonic()
                progress.busy_s += progress.last_at - began
                progress.read += batch.read
                progress.sessions += len(batch.sessions)
                progress.batches += 1
                consumer.commit(batch)  # for lag monitoring: the table's offsets are the truth
            if progress_s and time.monotonic() - last >= progress_s:
                last = time.monotonic()
                partitions = consumer.assignment()
                if shown != (progress.read, partitions):  # idle and unchanged: say nothing
                    shown = (progress.read, partitions)
                    out.write(progress.line(partitions) + "\n")
                    out.flush()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        consumer.close()
        target.close()
        out.write("stopped: " + progress.line([]) + "\n")
        out.flush()
    return progress
