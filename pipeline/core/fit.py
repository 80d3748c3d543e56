"""Outgoing records that always fit the broker's message limit (SPEC sections 4 and 6).

:func:`encode_session` encodes a session record in at most ``max_bytes``: over it,
the event list is cut first (from its end, ``events_truncated``), then the largest
``data`` values are replaced by ``null``, and the record says ``"truncated": true``.
A record that cannot be encoded at all (a value orjson refuses, such as data nested
deeper than it goes) is treated the same way: the values it refuses become ``null``.

:func:`cut_bytes` cuts a dead letter's value (or key) to a number of bytes without
splitting a UTF-8 character.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["DEFAULT_MAX_RECORD_BYTES", "cut_bytes", "encode_session"]

#: SPEC section 4: under the broker's default message size (1 MiB) with room for headers
DEFAULT_MAX_RECORD_BYTES = 1_000_000

#: the fields a session record keeps whatever its size (SPEC section 4, without the lists)
_HEAD = (
    "session_id", "project", "user_id", "user_name", "status", "start", "end", "duration_ms",
    "close_reason", "revision", "event_count", "heartbeat_count", "duplicate_events",
    "has_error",
)


def _size(value: Any) -> int | None:
    try:
        return len(orjson.dumps(value))
    except (TypeError, ValueError):
        return None


def encode_session(record: dict[str, Any], max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> bytes:
    """``record`` as JSON of at most ``max_bytes`` (see the module's docstring)."""
    try:
        blob = orjson.dumps(record)
    except (TypeError, ValueError):
        blob = None
    if blob is not None and len(blob) <= max_bytes:
        return blob
    trimmed = dict(record)
    trimmed["truncated"] = True
    data: dict[str, Any] = {}
    data_sizes: dict[str, int] = {}
    for name, value in dict(record.get("data") or {}).items():
        size = _size(value)
        data[str(name)] = value if size is not None else None
        data_sizes[str(name)] = size if size is not None else 4
    trimmed["data"] = data
    events: list[Any] = []
    event_sizes: list[int] = []
    for event in record.get("events") or ():
        size = _size(event)
        if size is not None:
            events.append(event)
            event_sizes.append(size + 1)
    if len(events) < len(record.get("events") or ()):
        trimmed["events_truncated"] = True
    trimmed["events"] = events
    for name in ("type_counts",):
        if _size(trimmed.get(name)) is None:
            trimmed[name] = {}
    blob = _dumps(trimmed)
    # the event list first, from its end
    while blob is not None and len(blob) > max_bytes and events:
        excess = len(blob) - max_bytes
        while events and excess > 0:
            events.pop()
            excess -= event_sizes.pop()
        trimmed["events_truncated"] = True
        blob = _dumps(trimmed)
    # then the largest data values
    while blob is not None and len(blob) > max_bytes and any(size > 4 for size in data_sizes.values()):
        excess = len(blob) - max_bytes
        for name in sorted(data_sizes, key=data_sizes.__getitem__, reverse=True):
            if excess <= 0 or data_sizes[name] <= 4:
                break
            data[name] = None
            excess -= data_sizes[name] - 4
            data_sizes[name] = 4
        blob = _dumps(trimmed)
    if blob is None or len(blob) > max_bytes:
        # only the head fields are left to send, each cut to what fits
        head: dict[str, Any] = {"truncated": True, "events_truncated": True, "data": {}, "events": []}
        share = max(16, max_bytes // (2 * len(_HEAD)))
        for name in _HEAD:
            if name in record:
                value = record[name]
                if isinstance(value, str) and len(value.encode()) > share:
                    value = cut_bytes(value.encode(), share)[0].decode()
                head[name] = value if _size(value) is not None else None
        blob = orjson.dumps(head)
    return blob


def _dumps(record: dict[str, Any]) -> bytes | None:
    try:
        return orjson.dumps(record)
    except (TypeError, ValueError):
        return None


def cut_bytes(raw: bytes, limit: int) -> tuple[bytes, bool]:
    """``raw`` cut to at most ``limit`` bytes, not inside a UTF-8 character when it
    is UTF-8 text; and whether it was cut."""
    if len(raw) <= limit:
        return raw, False
    cut = raw[:limit]
    try:
        cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= limit - 3 and exc.reason == "unexpected end of data":
            cut = cut[: exc.start]
    return cut, True
