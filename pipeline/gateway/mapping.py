"""Request bodies in, SPEC events out: pure functions, no I/O.

Two input dialects:

- **Exceptionless** (``POST /api/v2/events``): the event model of the
  Exceptionless clients. :func:`from_exceptionless` maps one event:

  ==============================  ==========================================
  Exceptionless                   SPEC event
  ==============================  ==========================================
  ``type`` (default ``log``)      ``type``, unchanged (``session``, ``sessionend``, ...)
  ``date`` (default: received)    ``timestamp``, RFC 3339 UTC, ms precision
  ``reference_id`` on ``session``  ``session_id`` (the client's session id)
  ``data["@ref:session"]``        ``session_id`` on every other event
  ``data["@user"]["identity"]``   ``user_id``
  ``data["@user"]["name"]``       ``user_name``
  ``source``, ``message``         same; an ``error`` without them takes the
                                  exception type and message of ``data["@error"]``
                                  (or ``data["@simple_error"]``)
  ``value``                       ``value`` (numbers only)
  ``data``                        ``data``, whole
  ``reference_id`` (other types),  kept as top-level fields, which SPEC
  ``tags``, ``geo``, ``count``    section 2 keeps in ``data``
  ==============================  ==========================================

  The ``reference_id`` of an ``error`` is the error's own short id (10 hex
  characters), not a session id: only the ``session`` event's is.

- **SPEC** (``POST /v1/events``): :func:`from_spec` checks one event against
  SPEC section 2 and passes it through; unknown fields are kept.

Both stamp the event with the API key's ``project``; a SPEC event naming
another project is refused. An event without an ``id`` gets a deterministic
one (:func:`assign_ids`), so a batch the client retries after a failure gets
the same ids and the worker drops the copies it already holds.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.core.limits import (
    MAX_JSON_DEPTH,
    MAX_USER_NAME_CHARS,
    deeper_than_limit,
    parse_event_time_ms,
)
from pipeline.core.timefmt import TimestampError, format_ms
from pipeline.exceptions import BodyError, EventError

#: Session id format shared with Exceptionless: 8-100 of ``[A-Za-z0-9-]``.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9-]{8,100}")

MAX_TYPE_CHARS = 100
MAX_USER_ID_CHARS = 256
MAX_ID_CHARS = 100
MAX_PROJECT_CHARS = 100

#: Exceptionless fields carried over as top-level fields (kept in ``data`` by the worker).
_EXTRA_FIELDS = ("tags", "geo", "count")


def parse_body(body: bytes) -> list[Any]:
    """A JSON object or array of objects, as a list; :class:`BodyError` otherwise."""
    if not body.strip():
        raise BodyError("invalid_body", "the request body is empty; send a JSON object or array")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError("invalid_json", f"the request body is not valid JSON: {exc}") from None
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list):
        return parsed
    raise BodyError(
        "invalid_body",
        f"the request body must be a JSON object or array, not {type(parsed).__name__}",
    )


def is_session_id(value: object) -> bool:
    return isinstance(value, str) and SESSION_ID_RE.fullmatch(value) is not None


def parse_bool(text: str | None, *, name: str) -> bool:
    """A query-string boolean: ``true``/``false`` (any case), ``1``/``0``; absent is false."""
    if text is None or text == "":
        return False
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise EventError("invalid_event", f"{name}={text!r} is not a boolean; use true or false")


# -- Exceptionless ---------------------------------------------------------------


def from_exceptionless(raw: object, *, project: str, received_ms: int) -> dict[str, Any]:
    """Map one Exceptionless event to a SPEC event (without ``id``; see :func:`assign_ids`)."""
    raw = _check_object(raw)
    data = raw.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EventError("invalid_event", "data must be an object")

    event_type = raw.get("type") or "log"
    _check_text(event_type, "type", MAX_TYPE_CHARS)

    date = raw.get("date")
    if date is None or date == "":
        time_ms = received_ms
    else:
        try:
            time_ms = parse_event_time_ms(date, "date")
        except TimestampError as exc:
            raise EventError("invalid_event", f"date: {exc}") from None

    event: dict[str, Any] = {
        "type": event_type,
        "timestamp": format_ms(time_ms),
        "project": project,
    }

    user = data.get("@user")
    if user is not None:
        if not isinstance(user, dict):
            raise EventError("invalid_event", 'data["@user"] must be an object')
        identity = user.get("identity")
        if identity not in (None, ""):
            _check_text(identity, 'data["@user"].identity', MAX_USER_ID_CHARS)
            event["user_id"] = identity
        name = user.get("name")
        if name not in (None, ""):
            if not isinstance(name, str):
                raise EventError("invalid_event", 'data["@user"].name must be a string')
            if len(name) > MAX_USER_NAME_CHARS:
                raise EventError(
                    "invalid_event",
                    f'data["@user"].name is longer than {MAX_USER_NAME_CHARS} characters',
                )
            event["user_name"] = name

    reference_id = raw.get("reference_id")
    session_id: object = None
    if event_type == "session" and reference_id not in (None, ""):
        session_id = reference_id
    elif data.get("@ref:session") not in (None, ""):
        session_id = data["@ref:session"]
    if session_id is not None:
        if not is_session_id(session_id):
            raise EventError(
                "invalid_event", f"session id {session_id!r} is not 8-100 of [A-Za-z0-9-]"
            )
        event["session_id"] = session_id

    if "session_id" not in event and "user_id" not in event:
        raise EventError(
            "no_identity",
            'the event has neither data["@user"].identity nor a session id; '
            "call setUserIdentity() or useSessions(..., true) in the client",
        )

    for name in ("source", "message"):
        value = raw.get(name)
        if value not in (None, ""):
            if not isinstance(value, str):
                raise EventError("invalid_event", f"{name} must be a string")
            event[name] = value
    if event_type == "error":
        error = data.get("@error") or data.get("@simple_error")
        if isinstance(error, dict):
            if "source" not in event and isinstance(error.get("type"), str) and error["type"]:
                event["source"] = error["type"]
            if "message" not in event and isinstance(error.get("message"), str):
                event["message"] = error["message"]

    value = raw.get("value")
    if value is not None:
        event["value"] = _check_number(value, "value")

    if reference_id not in (None, "") and event.get("session_id") != reference_id:
        event["reference_id"] = reference_id
    for name in _EXTRA_FIELDS:
        extra = raw.get(name)
        if extra not in (None, "", [], {}):
            event[name] = extra
    event["data"] = data
    return event


# -- SPEC events -----------------------------------------------------------------


def from_spec(raw: object, *, project: str) -> dict[str, Any]:
    """Check one SPEC event (section 2) and stamp the key's project on it."""
    raw = _check_object(raw)
    event = dict(raw)
    _check_text(event.get("type"), "type", MAX_TYPE_CHARS)
    if "timestamp" not in event:
        raise EventError("invalid_event", "timestamp is required (RFC 3339 or epoch ms)")
    for name in ("timestamp", "sent_at"):
        if name in event:
            if isinstance(event[name], bool) or not isinstance(event[name], str | int):
                raise EventError(
                    "invalid_event", f"{name} must be an RFC 3339 string or integer epoch ms"
                )
            try:
                parse_event_time_ms(event[name], name)
            except TimestampError as exc:
                raise EventError("invalid_event", f"{name}: {exc}") from None
    if event.get("user_id") is not None:
        _check_text(event["user_id"], "user_id", MAX_USER_ID_CHARS)
    if event.get("session_id") is not None and not is_session_id(event["session_id"]):
        raise EventError(
            "invalid_event", f"session_id {event['session_id']!r} is not 8-100 of [A-Za-z0-9-]"
        )
    if event.get("user_id") is None and event.get("session_id") is None:
        raise EventError("no_identity", "the event needs a user_id or a session_id")
    if event.get("id") is not None:
        _check_text(event["id"], "id", MAX_ID_CHARS)
    claimed = event.get("project")
    if claimed is not None and claimed != project:
        raise EventError(
            "forbidden_project",
            f"project {claimed!r} does not belong to this API key (its project is {project!r})",
        )
    event["project"] = project
    for name in ("user_name", "source", "message"):
        if event.get(name) is not None and not isinstance(event[name], str):
            raise EventError("invalid_event", f"{name} must be a string")
    if event.get("user_name") is not None and len(event["user_name"]) > MAX_USER_NAME_CHARS:
        raise EventError(
            "invalid_event", f"user_name is longer than {MAX_USER_NAME_CHARS} characters"
        )
    if event.get("value") is not None:
        _check_number(event["value"], "value")
    if event.get("close") is not None and not isinstance(event["close"], bool):
        raise EventError("invalid_event", "close must be a boolean")
    if event.get("data") is not None and not isinstance(event["data"], dict):
        raise EventError("invalid_event", "data must be an object")
    return event


# -- heartbeats ------------------------------------------------------------------


def heartbeat_event(
    *,
    project: str,
    received_ms: int,
    close: bool,
    session_id: str | None = None,
    user_id: str | None = None,
    user_name: str | None = None,
) -> dict[str, Any]:
    """The SPEC ``heartbeat`` for ``GET /api/v2/events/session/heartbeat``.

    It has no client clock: its event time is the time the gateway received it.
    """
    if session_id is None and user_id is None:
        raise ValueError("a heartbeat needs a session_id or a user_id")
    event: dict[str, Any] = {
        "type": "heartbeat",
        "timestamp": format_ms(received_ms),
        "project": project,
    }
    if session_id is not None:
        event["session_id"] = session_id
    if user_id is not None:
        event["user_id"] = user_id
    if user_name is not None:
        event["user_name"] = user_name
    if close:
        event["close"] = True
    return event


# -- ids and keys ----------------------------------------------------------------


def assign_ids(events: Iterable[dict[str, Any]], raws: Iterable[object], *, project: str) -> None:
    """Give every event without an ``id`` one derived from its input.

    The id hashes the project, the event as the client sent it and how many
    identical events came before it in the same request, so a retried request
    gets the same ids while two identical events in one request stay apart.
    """
    seen: dict[bytes, int] = {}
    for event, raw in zip(events, raws, strict=True):
        if event.get("id") is not None:
            continue
        canonical = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
        occurrence = seen.get(canonical, 0)
        seen[canonical] = occurrence + 1
        digest = hashlib.sha256()
        digest.update(project.encode())
        digest.update(b"\x00")
        digest.update(canonical)
        digest.update(b"\x00%d" % occurrence)
        event["id"] = "g" + digest.hexdigest()[:31]


def check_size(event: dict[str, Any], max_event_bytes: int) -> bytes:
    """The event as JSON; :class:`EventError` ``too_large`` over the worker's per-event limit."""
    value = orjson.dumps(event)
    if len(value) > max_event_bytes:
        raise EventError(
            "too_large",
            f"the event is {len(value)} bytes as JSON, over the limit of {max_event_bytes} "
            "(SESSIONIZER_MAX_EVENT_BYTES)",
        )
    return value


def routing_key(event: dict[str, Any]) -> bytes:
    """The Kafka record key: the session id when there is one, else the user id."""
    key = event.get("session_id")
    if key is None:
        key = event.get("user_id") or ""
    return str(key).encode()


# -- helpers ---------------------------------------------------------------------


def _check_object(raw: object) -> dict[str, Any]:
    """``raw`` if it is a JSON object nested at most :data:`MAX_JSON_DEPTH` levels deep."""
    if not isinstance(raw, dict):
        raise EventError(
            "invalid_event", f"an event must be a JSON object, not {_json_kind(raw)}"
        )
    if deeper_than_limit(raw):
        raise EventError(
            "invalid_event",
            f"the event is nested deeper than {MAX_JSON_DEPTH} levels (the event object is "
            "level 1); flatten its data",
        )
    return raw


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def _check_text(value: object, name: str, max_chars: int) -> None:
    if not isinstance(value, str) or not value:
        raise EventError("invalid_event", f"{name} must be a non-empty string")
    if len(value) > max_chars:
        raise EventError("invalid_event", f"{name} is longer than {max_chars} characters")


def _check_number(value: object, name: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError("invalid_event", f"{name} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise EventError("invalid_event", f"{name} must be a finite number")
    return value
