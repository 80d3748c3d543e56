"""Dashboard numbers and the sessions/users time series, from session records. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.timefmt import format_ms
from pipeline.report.data import Record, error_count, start_ms

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
MAX_BUCKETS = 60
_STEPS_MS = (
    MINUTE_MS, 2 * MINUTE_MS, 5 * MINUTE_MS, 10 * MINUTE_MS, 15 * MINUTE_MS, 30 * MINUTE_MS,
    HOUR_MS, 2 * HOUR_MS, 3 * HOUR_MS, 6 * HOUR_MS, 12 * HOUR_MS, DAY_MS, 2 * DAY_MS, 7 * DAY_MS,
)


def bucket_ms(range_ms: int) -> int:
    """The smallest round bucket size that splits ``range_ms`` into at most 60 buckets."""
    for step in _STEPS_MS:
        if -(-range_ms // step) <= MAX_BUCKETS:
            return step
    return -(-range_ms // (MAX_BUCKETS * DAY_MS)) * DAY_MS


def compute(records: Iterable[Record], since_ms: int, until_ms: int) -> dict[str, Any]:
    """Numbers over the sessions that started in ``[since_ms, until_ms]`` (the caller's
    selection) and per bucket of ``bucket_ms`` (aligned to UTC multiples of it)."""
    step = bucket_ms(until_ms - since_ms)
    first = since_ms - since_ms % step
    count = (until_ms - first) // step + 1
    per_bucket: list[tuple[int, set[str]]] = [(0, set()) for _ in range(count)]
    sessions = online = with_errors = errors = 0
    users: set[str] = set()
    closed_durations: list[int] = []
    for record in records:
        sessions += 1
        user = record.get("user_id")
        if user is not None:
            users.add(user)
        if record["status"] == "open":
            online += 1
        else:
            closed_durations.append(int(record["duration_ms"]))
        if record.get("has_error"):
            with_errors += 1
        errors += error_count(record)
        index = (start_ms(record) - first) // step
        if 0 <= index < count:
            n, bucket_users = per_bucket[index]
            if user is not None:
                bucket_users.add(user)
            per_bucket[index] = (n + 1, bucket_users)
    hours = (until_ms - since_ms) / HOUR_MS
    return {
        "since": format_ms(since_ms),
        "until": format_ms(until_ms),
        "sessions": sessions,
        "online": online,
        "closed": len(closed_durations),
        "sessions_per_hour": round(sessions / hours, 4),
        "users": len(users),
        "avg_duration_ms": (
            round(sum(closed_durations) / len(closed_durations)) if closed_durations else None
        ),
        "with_errors": with_errors,
        "errors": errors,
        "bucket_ms": step,
        "series": [
            {"start": format_ms(first + i * step), "sessions": n, "users": len(bucket_users)}
            for i, (n, bucket_users) in enumerate(per_bucket)
        ],
    }
