"""Input limits of SPEC v1.1 section 2 that hold whatever the settings say.

Nesting depth and the range of a timestamp are fixed by the contract; the size of
an event is a setting (``max_event_bytes``, :class:`~pipeline.core.rules.SessionRules`).
The worker's parser (:mod:`pipeline.core.parse`) and the gateway
(:mod:`pipeline.gateway.mapping`) apply the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pipeline.core.timefmt import TimestampError, parse_timestamp_ms

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_TIME_MS",
    "MAX_USER_NAME_CHARS",
    "MIN_TIME_MS",
    "check_time_range",
    "deeper_than_limit",
    "parse_event_time_ms",
]

#: An event object is level 1, an object or array inside it level 2, and so on:
#: an event nested deeper than this is ``invalid_event``. orjson cannot even write
#: JSON deeper than 254 levels, so the limit keeps every event writable.
MAX_JSON_DEPTH: Final = 64
#: 1970-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the years an event's
#: ``timestamp`` and ``sent_at`` may name.
MIN_TIME_MS: Final = 0
MAX_TIME_MS: Final = 253_402_300_799_999
MAX_USER_NAME_CHARS: Final = 256

_OPENERS: Final = (b"{", b"[")


def deeper_than_limit(value: object, raw: bytes | None = None, *, level: int = 1) -> bool:
    """Whether the decoded JSON ``value`` (a container at ``level``) nests deeper than
    :data:`MAX_JSON_DEPTH`.

    ``raw``, the JSON text ``value`` was decoded from or encodes to, makes the usual
    answer cheap: a text with no more ``{`` and ``[`` than the levels left cannot nest
    deeper, whatever its strings hold. Only a text with more of them is walked.
    """
    if raw is not None and raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH - level + 1:
        return False
    return _walk(value, level)


def _walk(value: object, level: int) -> bool:
    if level > MAX_JSON_DEPTH:
        return True
    children: Iterable[object]
    if type(value) is dict:
        children = value.values()
    elif type(value) is list:
        children = value
    else:
        return False
    for child in children:
        if (type(child) is dict or type(child) is list) and _walk(child, level + 1):
            return True
    return False


def check_time_range(ms: int, name: str = "timestamp") -> int:
    """``ms`` when it lies in the years 1970-9999, else :class:`TimestampError`."""
    if MIN_TIME_MS <= ms <= MAX_TIME_MS:
        return ms
    raise TimestampError(
        f"{name} {ms} ms since the epoch is outside the years 1970-9999 "
        f"({MIN_TIME_MS} to {MAX_TIME_MS} ms); send the time the event happened"
    )


def parse_event_time_ms(value: object, name: str = "timestamp") -> int:
    """An event's ``timestamp`` or ``sent_at`` (RFC 3339 with an offset or integer
    epoch ms) in epoch ms, within the years 1970-9999; :class:`TimestampError` else."""
    ms = parse_timestamp_ms(value)
    if MIN_TIME_MS <= ms <= MAX_TIME_MS:
        return ms
    raise TimestampError(
        f"{name} {value!r} is outside the years 1970-9999; send the time the event "
        "happened (RFC 3339 with an offset, or epoch ms from 0 to "
        f"{MAX_TIME_MS})"
    )
