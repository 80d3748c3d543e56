"""The worker's heap trimmer against this process's own C heap (glibc)."""

from __future__ import annotations

import pytest

from pipeline.worker.heap import HeapTrimmer, _rss

trimmer = HeapTrimmer(threshold=16 * 2**20)
pytestmark = pytest.mark.skipif(not trimmer.available, reason="the C library has no malloc_trim/mallinfo2")


def test_free_memory_between_live_chunks_goes_back_to_the_system() -> None:
    # long-lived chunks with freed 16 KiB ones between them: the heap cannot shrink
    # from its top, and the free pages stay resident until trimmed
    kept, freed = [], []
    for _ in range(4000):
        kept.append(bytearray(1000))
        freed.append(bytearray(16 * 1024))
    for chunk in freed:
        chunk[::4096] = b"x" * len(chunk[::4096])  # resident, whatever the allocator did
    del freed
    free = trimmer.free_bytes()
    assert free is not None and free >= 4000 * 16 * 1024 * 0.9
    before = _rss()
    released = trimmer.maybe_trim()
    assert released >= 40 * 2**20, released
    assert _rss() <= before - 40 * 2**20
    assert trimmer.trims >= 1 and trimmer.released >= released
    assert len(kept) == 4000


def test_below_the_threshold_nothing_is_trimmed() -> None:
    lazy = HeapTrimmer(threshold=2**62)
    assert lazy.maybe_trim() == 0
    assert lazy.trims == 0
