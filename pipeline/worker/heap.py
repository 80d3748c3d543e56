"""Giving the C heap's free memory back to the system (glibc).

The hot path allocates and frees a great deal per batch: orjson's results keep
a 4 KiB write buffer each, parsed events and commit payloads live as long as
their batch. glibc's allocator keeps what is freed inside its heap for reuse,
and only the free space at the heap's top is returned on its own; freed chunks
between long-lived ones (the cached key states) stay counted in the RSS. In a
worker holding 100,000 key states that was about 40 % of its RSS.

``malloc_trim(0)`` returns the free pages wherever they are in the heap. It
takes tens of milliseconds for hundreds of MiB, so :class:`HeapTrimmer` runs it
only when ``mallinfo2`` says the heap holds more free memory than a threshold,
and the worker calls it from a thread (ctypes releases the GIL): the event loop
goes on meanwhile. On a C library without these functions (musl, macOS) it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

#: free heap memory (bytes) above which :meth:`HeapTrimmer.maybe_trim` trims
DEFAULT_THRESHOLD = 64 * 2**20
#: how often (s) the worker looks at the heap's free memory
TRIM_INTERVAL_S = 10.0


class _MallInfo2(ctypes.Structure):
    # struct mallinfo2 (glibc >= 2.33): ten size_t fields
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost",
    )]


def _libc() -> Any | None:
    # find_library needs ldconfig, which slim images may lack: then glibc's usual name
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        trim, info = libc.malloc_trim, libc.mallinfo2
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    info.argtypes, info.restype = [], _MallInfo2
    return libc


class HeapTrimmer:
    """Trims the C heap when its free memory passes ``threshold`` bytes."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self._libc = _libc()
        self.trims = 0
        self.released = 0  # bytes of RSS handed back, in all

    @property
    def available(self) -> bool:
        return self._libc is not None

    def free_bytes(self) -> int | None:
        """Free memory held inside the heap (glibc's ``fordblks``), None where unknown."""
        if self._libc is None:
            return None
        return int(self._libc.mallinfo2().fordblks)

    def maybe_trim(self) -> int:
        """Trim when the free memory is over the threshold; the bytes of RSS released.

        The free memory stays counted as free after a trim (its pages are handed
        back, the chunks stay in the allocator's lists), so the caller decides how
        often to look: a trim that finds nothing to release costs a few ms."""
        free = self.free_bytes()
        if free is None or free < self.threshold:
            return 0
        assert self._libc is not None
        before = _rss()
        self._libc.malloc_trim(0)
        released = max(0, before - _rss())
        self.trims += 1
        self.released += released
        log.debug("heap: %d MiB free, RSS down by %d MiB", free >> 20, released >> 20)
        return released


def _rss() -> int:
    """This process's resident set size in bytes (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
