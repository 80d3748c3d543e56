"""``bench.hotpath --instructions`` counts the processing window, the same every run.

The count is what makes two versions of the hot path comparable on a host whose
speed moves between runs, so it must repeat, and it must cover the processors'
work and not the start-up around it (imports, the workload, Redis's start), which
would swamp it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
    reason="valgrind is not installed (Debian's package valgrind)",
)


def count(events: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "--instructions", "--events", str(events),
         "--users", str(events // 20), "--partitions", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"bench.hotpath failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    found = re.search(r"instructions in the processing window: ([\d,]+) \(([\d,]+) per event\)",
                      proc.stdout)
    assert found is not None, proc.stdout
    return int(found.group(1).replace(",", ""))


@pytest.mark.timeout(300)
def test_instruction_counts_repeat_and_cover_only_the_processing() -> None:
    first, again, double = count(3000), count(3000), count(6000)
    # the same run counts the same, give or take how Redis's replies interleave
    assert abs(first - again) <= first * 0.01, (first, again)
    # twice the events, about twice the count: nothing fixed (start-up) is in it
    assert 1.6 * first <= double <= 2.4 * first, (first, double)
