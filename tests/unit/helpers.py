"""Small builders for the core tests: events, rules and an engine driven by hand.

Times in tests are offsets in milliseconds from :data:`T0`, so a test reads
``ev(at=4 * MIN)`` rather than an epoch number. Arrival time defaults to the
event time (a client whose clock is right and a network with no delay).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.core.engine import Record, Sessionizer
from pipeline.core.event import Event, SessionKey
from pipeline.core.rules import SessionRules
from pipeline.core.session import KeyState, Session
from pipeline.core.timefmt import format_ms
from pipeline.store import codec

T0 = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z
SEC = 1000
MIN = 60 * SEC

TIMEOUT_MS = 5 * MIN
GRACE_MS = 15 * MIN
MAX_MS = 60 * MIN
CAP = 5

RULES = SessionRules(
    inactivity_timeout_ms=TIMEOUT_MS,
    max_session_duration_ms=MAX_MS,
    reopen_grace_ms=GRACE_MS,
    max_events_per_session=CAP,
)

USER = "u1"
PROJECT = "default"
USER_KEY: SessionKey = (PROJECT, "u", USER)


def ev(
    type: str = "usage",
    at: int = 0,
    *,
    arrival: int | None = None,
    user: str | None = USER,
    project: str = PROJECT,
    sid: str | None = None,
    **fields: Any,
) -> Event:
    """An event at ``T0 + at`` arriving at ``T0 + arrival`` (default: at its own time)."""
    time_ms = T0 + at
    arrival_ms = time_ms if arrival is None else T0 + arrival
    return Event(
        type=type,
        time_ms=time_ms,
        arrival_ms=arrival_ms,
        project=project,
        user_id=user,
        session_id=sid,
        **fields,
    )


def ts(at: int) -> str:
    """The record timestamp (RFC 3339 UTC, ms) of offset ``at``."""
    return format_ms(T0 + at)


def engine(rules: SessionRules = RULES) -> Sessionizer:
    return Sessionizer(rules)


def feed(eng: Sessionizer, events: Iterable[Event]) -> list[Record]:
    """Apply events in order; every record they emitted, in order."""
    records: list[Record] = []
    for event in events:
        records.extend(eng.apply(event).records)
    return records


def advance(eng: Sessionizer, at: int) -> list[Record]:
    """Move the stream clock to ``T0 + at``."""
    return eng.advance(T0 + at)


def state_of(eng: Sessionizer, key: SessionKey = USER_KEY) -> KeyState:
    return eng.states[key]


def open_session(eng: Sessionizer, key: SessionKey = USER_KEY) -> Session:
    session = eng.states[key].open
    assert session is not None, f"no open session for {key}"
    return session


def roundtrip(state: KeyState) -> KeyState:
    """A key state through the store's encoding (orjson), as Redis keeps it."""
    return codec.key_state_from_state(orjson.loads(orjson.dumps(codec.to_state(state))))


def canonical(records: Iterable[Record]) -> list[bytes]:
    """Records as sorted canonical JSON, for comparing sets of records."""
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


# -- the heads earlier versions of the Redis store wrote (the store still reads them) ---


def earlier_head_fields(s: Session) -> list[Any]:
    """A session's head as earlier versions wrote it: its values in
    :data:`codec.HEAD_FIELDS` order."""
    return [
        s.session_id, s.project, s.manual, s.start_ms, s.last_activity_ms,
        s.last_arrival_ms, s.user_id, s.user_id_ms, s.user_name,
        s.user_name_ms, s.has_start, s.status, s.close_reason, s.end_ms,
        s.closed_at_ms, s.revision, s.event_count, s.heartbeat_count,
        s.duplicate_events, s.type_counts, s.has_error, s.events_truncated,
        s.seq,
    ]


def earlier_head(state: KeyState, logs: list[Any] | None = None, *, with_key: bool = True) -> bytes:
    """A key's head as earlier versions wrote it: an object, its sessions as
    :func:`earlier_head_fields` arrays; with ``logs``, where each session's event log is
    (``"l"``, in ``state.sessions()`` order); ``with_key=False``, without its key
    (``"k"``: the version just before rows filed heads under their keyid only)."""
    opened = state.open
    head: dict[str, Any] = {
        "o": None if opened is None else earlier_head_fields(opened),
        "c": [earlier_head_fields(c) for c in state.closed],
    }
    if with_key:
        head["k"] = state.key
    if logs is not None:
        head["l"] = logs
    return orjson.dumps(head)
