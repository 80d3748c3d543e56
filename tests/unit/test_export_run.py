"""The exporter's progress line names the partitions it holds, also when it is idle:
a group that joins fast reads its backlog inside the first interval, and a take-over
may bring nothing new to read."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.export import run
from pipeline.export.consumer import SessionBatch


class ScriptedConsumer:
    """Stands in for SessionConsumer: each poll takes the next step of a script
    (a batch or None, and the assignment from then on); stops after the last."""

    script: list[tuple[SessionBatch | None, list[int]]] = []

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.steps = list(self.script)
        self.held: list[int] = []
        self.stopping = False
        self.committed: list[SessionBatch] = []

    def poll(self, timeout_ms: int = 500) -> SessionBatch | None:
        time.sleep(0.03)
        batch, self.held = self.steps.pop(0)
        if not self.steps:
            self.stopping = True
        return batch

    def assignment(self) -> list[int]:
        return list(self.held)

    def commit(self, batch: SessionBatch) -> bool:
        self.committed.append(batch)
        return True

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        pass


def held(text: str) -> list[str]:
    return re.findall(r"^exported .*partitions (\[[\d, ]*\])$", text, re.M)


def test_partitions_are_reported_after_idle_polls_and_a_take_over(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    backlog = SessionBatch("sessions", [], {0: 5, 1: 7}, read=12)
    ScriptedConsumer.script = (
        [(backlog, [0, 1])]  # the whole backlog in the first poll, then nothing
        + [(None, [0, 1])] * 6
        + [(None, [0, 1, 2, 3])] * 6  # the other exporter stopped: a take-over, nothing to read
        + [(None, [0, 1, 2, 3])] * 6  # idle and unchanged: no more lines
    )
    monkeypatch.setattr(run, "SessionConsumer", ScriptedConsumer)
    out = io.StringIO()
    progress = run.run_export(f"sqlite:///{tmp_path / 's.db'}", settings=Settings(),
                              progress_s=0.1, out=out)

    lines = held(out.getvalue())
    assert lines == ["[0, 1]", "[0, 1, 2, 3]"], out.getvalue()
    assert progress.read == 12 and progress.batches == 1
    assert out.getvalue().splitlines()[-1].startswith("stopped: exported 0 sessions")
