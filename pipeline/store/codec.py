"""How a store keeps the core's :class:`~pipeline.core.session.Session` and
:class:`~pipeline.core.session.KeyState`: plain JSON-able data with short field names.

Two forms:

- the *state* (:func:`to_state` / :func:`key_state_from_state`): a dict per session,
  ``with_log=False`` leaving out the event list, the held ids and the data values (a
  store that keeps those as an append-only log, from ``Session.take_log``);
- the *head* as earlier versions of the Redis store wrote it for every key a batch
  touched: a key state whose sessions are arrays of their :data:`HEAD_FIELDS` values
  (it still reads them).

Both read back with :func:`key_state_from_state`, which takes either.

The Redis store now writes a third, smaller form for every key a batch touched: the
*row* head (:func:`row_head`, read back with :func:`key_state_from_row`), a JSON
array ``[open, [closed...], logs]`` whose sessions are :func:`session_row` arrays.
A row leaves out what the key it is filed under already says (the project, a user
key's user id), keeps times as offsets from the session's start and the flags as
one number: a head is rewritten with every batch that touches its key, so its size
is paid again and again.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.core.event import SessionKey
from pipeline.core.session import CLOSED, OPEN, KeyState, Session

#: the fields of a session's head (its state without events, ids and data), in the
#: order the heads of earlier versions list them
HEAD_FIELDS = ("sid", "p", "m", "s", "la", "ar", "u", "ut", "n", "nt", "hs", "st", "cr", "e", "ca",
               "r", "ec", "hc", "dc", "tc", "he", "tr", "q")


def session_state(s: Session, *, with_log: bool = True) -> dict[str, Any]:
    """A session as plain data. ``with_log=False`` leaves out ``events``, ``ids`` and
    ``data``."""
    state = {
        "sid": s.session_id, "p": s.project, "m": s.manual,
        "s": s.start_ms, "la": s.last_activity_ms, "ar": s.last_arrival_ms,
        "u": s.user_id, "ut": s.user_id_ms, "n": s.user_name, "nt": s.user_name_ms,
        "hs": s.has_start, "st": s.status, "cr": s.close_reason, "e": s.end_ms,
        "ca": s.closed_at_ms, "r": s.revision, "ec": s.event_count,
        "hc": s.heartbeat_count, "dc": s.duplicate_events, "tc": s.type_counts,
        "he": s.has_error, "d": s.data, "dt": s.data_ms, "ev": s.events,
        "tr": s.events_truncated, "ids": list(s.ids), "q": s.seq,
    }
    if not with_log:
        del state["ev"], state["ids"], state["d"], state["dt"]
    return state


def session_from_state(s: dict[str, Any] | list[Any]) -> Session:
    """A session from :func:`session_state`'s dict or a head's array of
    :data:`HEAD_FIELDS` values."""
    if isinstance(s, list):
        s = dict(zip(HEAD_FIELDS, s, strict=True))
    return Session(
        session_id=s["sid"], project=s["p"], manual=s["m"], start_ms=s["s"],
        last_activity_ms=s["la"], last_arrival_ms=s["ar"], user_id=s["u"], user_id_ms=s["ut"],
        user_name=s["n"], user_name_ms=s["nt"], has_start=s["hs"], status=s["st"],
        close_reason=s["cr"], end_ms=s["e"], closed_at_ms=s["ca"], revision=s["r"],
        event_count=s["ec"], heartbeat_count=s["hc"], duplicate_events=s["dc"],
        type_counts=s["tc"], has_error=s["he"], data=s.get("d", {}), data_ms=s.get("dt", {}),
        events=s.get("ev", []), events_truncated=s["tr"], ids=dict.fromkeys(s.get("ids", ())),
        seq=s["q"],
    )


def to_state(obj: KeyState | Session, *, with_log: bool = True) -> dict[str, Any]:
    """A key state (or one session) as plain data."""
    if isinstance(obj, Session):
        return session_state(obj, with_log=with_log)
    return {
        "k": list(obj.key),
        "o": session_state(obj.open, with_log=with_log) if obj.open is not None else None,
        "c": [session_state(c, with_log=with_log) for c in obj.closed],
    }


# the flags of a session row, one bit each
_MANUAL, _HAS_START, _HAS_ERROR, _TRUNCATED, _CLOSED = 1, 2, 4, 8, 16


def session_row(s: Session, key: SessionKey) -> list[Any]:
    """A session's head as a compact array (see the module doc), for the key it is
    filed under: ``0`` stands for the key's project and, under a user key, for its
    identity as the user id; times are offsets from ``start_ms`` (a time never set,
    0, as null)."""
    project, kind, ident = key
    start = s.start_ms
    user_ms, name_ms = s.user_id_ms, s.user_name_ms
    flags = (
        (_MANUAL if s.manual else 0) | (_HAS_START if s.has_start else 0)
        | (_HAS_ERROR if s.has_error else 0) | (_TRUNCATED if s.events_truncated else 0)
    )
    if s.status == CLOSED:
        flags |= _CLOSED
    elif s.status != OPEN:
        raise ValueError(f"a session's status is open or closed, not {s.status!r}")
    return [
        s.session_id, 0 if s.project == project else s.project, start,
        s.last_activity_ms - start, s.last_arrival_ms - start,
        0 if kind == "u" and s.user_id == ident else s.user_id,
        user_ms - start if user_ms else None, s.user_name, name_ms - start if name_ms else None,
        flags, s.close_reason, None if s.end_ms is None else s.end_ms - start,
        None if s.closed_at_ms is None else s.closed_at_ms - start,
        s.revision, s.event_count, s.heartbeat_count, s.duplicate_events, s.type_counts, s.seq,
    ]


def session_from_row(row: list[Any], key: SessionKey) -> Session:
    """The session of a :func:`session_row` filed under ``key`` (no events, ids or data:
    the store replays its log into it)."""
    (sid, project, start, activity, arrival, user, user_ms, name, name_ms, flags, reason,
     end, closed_at, revision, count, heartbeats, duplicates, types, seq) = row
    return Session(
        session_id=sid, project=key[0] if project == 0 else project, manual=bool(flags & _MANUAL),
        start_ms=start, last_activity_ms=start + activity, last_arrival_ms=start + arrival,
        user_id=key[2] if user == 0 else user, user_id_ms=0 if user_ms is None else start + user_ms,
        user_name=name, user_name_ms=0 if name_ms is None else start + name_ms,
        has_start=bool(flags & _HAS_START), status=CLOSED if flags & _CLOSED else OPEN,
        close_reason=reason, end_ms=None if end is None else start + end,
        closed_at_ms=None if closed_at is None else start + closed_at, revision=revision,
        event_count=count, heartbeat_count=heartbeats, duplicate_events=duplicates,
        type_counts=types, has_error=bool(flags & _HAS_ERROR),
        events_truncated=bool(flags & _TRUNCATED), seq=seq,
    )


def row_head(state: KeyState, logs: list[Any]) -> bytes:
    """A key's head as the Redis store writes it: ``[open, [closed...], logs]``, the
    sessions as :func:`session_row` arrays and ``logs`` (the store's own) in
    ``state.sessions()`` order."""
    key, opened = state.key, state.open
    return orjson.dumps([
        None if opened is None else session_row(opened, key),
        [session_row(c, key) for c in state.closed],
        logs,
    ])


def key_state_from_row(head: list[Any], key: SessionKey) -> KeyState:
    """The key state of a decoded :func:`row_head` filed under ``key``."""
    opened, closed, _ = head
    return KeyState(
        key=key,
        open=None if opened is None else session_from_row(opened, key),
        closed=[session_from_row(c, key) for c in closed],
    )


def key_state_from_head(head: Any, key: SessionKey) -> tuple[KeyState, list[Any] | None]:
    """A decoded head the Redis store holds under ``key``'s keyid (a row, or an object as
    earlier versions wrote it, with its key or without), and where its sessions' event
    logs are: ``[handle, chunks]`` each, or None for a head written before the logs were
    named (its sessions' logs are lists of their own)."""
    if isinstance(head, list):
        return key_state_from_row(head, key), head[2]
    return key_state_from_state(head, None if "k" in head else key), head.get("l")


def head_has_open(blob: bytes | str) -> bool:
    """Whether a head the Redis store holds (a row, or an object as earlier versions
    wrote it) has an open session."""
    head = orjson.loads(blob)
    return (head[0] if isinstance(head, list) else head.get("o")) is not None


def key_state_from_state(s: dict[str, Any], key: SessionKey | None = None) -> KeyState:
    """A key state from :func:`to_state`'s dict or a head as earlier versions wrote it
    (decoded); ``key`` for a head written without it."""
    project, kind, ident = key if key is not None else s["k"]
    return KeyState(
        key=(project, kind, ident),
        open=session_from_state(s["o"]) if s["o"] is not None else None,
        closed=[session_from_state(c) for c in s["c"]],
    )


def decode(blob: bytes | str) -> KeyState:
    """A key state from the JSON a store holds (either form)."""
    return key_state_from_state(orjson.loads(blob))


def encode(state: KeyState) -> bytes:
    """The whole key state (its log included) as JSON."""
    return orjson.dumps(to_state(state))


__all__ = [
    "HEAD_FIELDS",
    "decode",
    "encode",
    "head_has_open",
    "key_state_from_head",
    "key_state_from_row",
    "key_state_from_state",
    "row_head",
    "session_from_row",
    "session_from_state",
    "session_row",
    "session_state",
    "to_state",
]
