"""Epoch milliseconds as the RFC 3339 UTC timestamps of SPEC events."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def format_ms(ms: int) -> str:
    """``2026-11-27T10:00:00.040Z``: epoch milliseconds, UTC, millisecond precision."""
    seconds, millis = divmod(ms, 1000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"
