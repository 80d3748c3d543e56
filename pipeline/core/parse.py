"""Input records to events: JSON, size limits, identity, schema, clocks.

One Kafka record of the input topic carries one event (a JSON object) or a
batch (a JSON array of events). :func:`parse_record` turns it into a list of
:class:`~pipeline.core.event.Event` and :class:`~pipeline.core.event.Rejection`,
one per event, in record order. The checks, in order, and the codes they give:

==========================================  ======================
record value null or empty                  ``invalid_json``
record over ``max_event_bytes``             ``too_large``
(a batch: over 1000 x ``max_event_bytes``;
measured before decoding)
not UTF-8 JSON                              ``invalid_json``
empty array, or top level not object/array  ``invalid_event``
batch element over ``max_event_bytes``      ``too_large``
(measured as ``len(orjson.dumps(element))``)
batch element not an object                 ``invalid_event``
nested deeper than 64 levels (the event     ``invalid_event``
object is level 1)
neither a non-empty ``user_id`` nor         ``no_identity``
a non-empty ``session_id``
schema (``pipeline/schemas/event.schema.json``) ``invalid_event``
timestamp / sent_at not RFC 3339 with an    ``invalid_event``
offset nor integer epoch ms, or outside
the years 1970-9999
event time older than ``max_event_age``     ``too_old``
==========================================  ======================

Event time is ``timestamp + (arrival_ms - sent_at)`` when ``sent_at`` is given,
else ``timestamp``; more than ``max_future_skew`` ahead of arrival it is
clamped to arrival (``Event.clamped``). The limits are inclusive: an event
exactly ``max_event_bytes`` long, exactly ``max_future_skew`` ahead or exactly
``max_event_age`` behind passes unchanged.

The event schema is read from ``event.schema.json`` in the package's ``schemas``
folder (package data, found with :mod:`importlib.resources`, so an installed wheel
has it), or from the folder named by ``SESSIONIZER_SCHEMA_DIR``, and compiled
once, on first use. When the schema read is the bundled one (its constraints, titles
and descriptions aside), an event first goes through a hand-written check of
that schema, which only ever passes events the schema accepts; anything else
(a failure, a ``null``, a float timestamp, ...) goes to the compiled validator,
which gives the verdict and the error message. A schema from elsewhere always
goes to the compiled validator.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import fastjsonschema
import orjson

from pipeline.core.event import Event, RejectCode, Rejection
from pipeline.core.limits import (
    MAX_JSON_DEPTH,
    MAX_TIME_MS,
    MAX_USER_NAME_CHARS,
    MIN_TIME_MS,
    deeper_than_limit,
)
from pipeline.core.rules import SessionRules
from pipeline.core.timefmt import TimestampError, format_ms, parse_timestamp_ms

__all__ = [
    "BATCH_SIZE_FACTOR",
    "EVENT_SCHEMA_FILE",
    "SCHEMA_DIR_ENV",
    "event_validator",
    "parse_record",
    "reset_event_validator",
    "schema_dir",
]

#: Environment variable naming the folder that holds the JSON schemas.
SCHEMA_DIR_ENV: Final = "SESSIONIZER_SCHEMA_DIR"
EVENT_SCHEMA_FILE: Final = "event.schema.json"
#: A batch record may be this many times ``max_event_bytes``.
BATCH_SIZE_FACTOR: Final = 1000

#: Top-level fields of SPEC section 2; every other top-level field goes into ``data``.
KNOWN_FIELDS: Final = frozenset(
    {
        "type",
        "timestamp",
        "user_id",
        "session_id",
        "id",
        "project",
        "user_name",
        "source",
        "message",
        "value",
        "close",
        "sent_at",
        "data",
    }
)
DEFAULT_PROJECT: Final = "default"

_JSON_WHITESPACE: Final = b" \t\n\r"

#: The constraints of the bundled ``event.schema.json`` (without ``anyOf``, titles and
#: descriptions), the ones :func:`_parse_event`'s hand-written check implements.
_BUNDLED_EVENT_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["type", "timestamp"],
    "properties": {
        "type": {"type": "string", "minLength": 1, "maxLength": 100},
        "timestamp": {"type": ["string", "integer"]},
        "user_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "session_id": {
            "type": "string",
            "minLength": 8,
            "maxLength": 100,
            "pattern": "^[A-Za-z0-9-]*$",
        },
        "id": {"type": "string", "minLength": 1, "maxLength": 100},
        "project": {"type": "string", "minLength": 1, "maxLength": 100, "default": "default"},
        "user_name": {"type": "string", "maxLength": 256},
        "source": {"type": "string"},
        "message": {"type": "string"},
        "value": {"type": "number"},
        "close": {"type": "boolean"},
        "sent_at": {"type": ["string", "integer"]},
        "data": {"type": "object"},
    },
    "additionalProperties": True,
}
_ANNOTATIONS: Final = ("title", "description")
#: ``^[A-Za-z0-9-]*$`` as the compiled validator applies it (``$`` as ``\Z``).
_SESSION_ID_CHARS: Final = re.compile(r"[A-Za-z0-9-]*")

Validator = Callable[..., Any]
_validator: Validator | None = None
#: Whether the compiled schema is the bundled one, so the hand-written check applies.
_bundled_schema = False
#: Tests set this to False to send every event through the compiled validator.
FAST_PATHS = True
#: The last ``sent_at`` text parsed, and its value (see :func:`_sent_at_ms`).
_last_sent_at: tuple[object, int] = (object(), 0)


def schema_dir() -> Path:
    """The folder holding the JSON schemas: ``$SESSIONIZER_SCHEMA_DIR``, else the
    package's own ``pipeline/schemas`` (package data)."""
    override = os.environ.get(SCHEMA_DIR_ENV)
    if override:
        return Path(override)
    return Path(str(importlib.resources.files("pipeline") / "schemas"))


def event_validator() -> Validator:
    """The compiled event schema (without its identity ``anyOf``), compiled on first use."""
    global _validator, _bundled_schema
    if _validator is None:
        path = schema_dir() / EVENT_SCHEMA_FILE
        try:
            definition = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"event schema not found at {path}; set {SCHEMA_DIR_ENV} to the folder "
                f"that holds {EVENT_SCHEMA_FILE}, or unset it to use the one installed "
                "with the package"
            ) from None
        # The schema's ``anyOf`` (user_id or session_id) is checked before the
        # schema, with its own code (``no_identity``): no need to check it twice.
        definition.pop("anyOf", None)
        bundled = _is_bundled_schema(definition)
        _validator = fastjsonschema.compile(definition, use_default=False)
        _bundled_schema = bundled
    return _validator


def reset_event_validator() -> None:
    """Forget the compiled schema, so the next parse reads it again (tests, reloads)."""
    global _validator, _bundled_schema
    _bundled_schema = False
    _validator = None


def _is_bundled_schema(definition: object) -> bool:
    """Whether ``definition`` (without ``anyOf``) constrains exactly what the bundled
    schema does: equal to it once titles and descriptions are left out, compared as
    canonical JSON (so ``1`` is not ``true`` nor ``1.0``)."""
    if type(definition) is not dict:
        return False
    stripped = {k: v for k, v in definition.items() if k not in _ANNOTATIONS}
    properties = stripped.get("properties")
    if type(properties) is dict:
        stripped["properties"] = {
            name: (
                {k: v for k, v in schema.items() if k not in _ANNOTATIONS}
                if type(schema) is dict
                else schema
            )
            for name, schema in properties.items()
        }
    try:
        return orjson.dumps(stripped, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            _BUNDLED_EVENT_SCHEMA, option=orjson.OPT_SORT_KEYS
        )
    except TypeError:
        return False


def parse_record(
    value: bytes | None,
    *,
    arrival_ms: int,
    partition: int,
    offset: int,
    rules: SessionRules,
) -> list[Event | Rejection]:
    """Parse one input record into its events and rejections, in record order.

    ``arrival_ms`` is the record's Kafka timestamp. A single-event record yields
    exactly one item, its ``index`` None; a batch yields one item per element,
    ``index`` being the position.
    Never raises for bad input: every problem is a :class:`Rejection` whose
    ``raw`` is the record value (single record) or ``orjson.dumps(element)``.
    """
    if not value:
        return [
            Rejection(
                RejectCode.INVALID_JSON,
                "the record has no value (null or empty); send one JSON event object "
                "or a JSON array of them",
                partition,
                offset,
                None,
                value,
            )
        ]
    limit = rules.max_event_bytes
    size = len(value)
    if size > limit:
        if value.lstrip(_JSON_WHITESPACE)[:1] != b"[":
            return [
                Rejection(
                    RejectCode.TOO_LARGE,
                    f"the record is {size} bytes, over the limit of {limit} bytes per event "
                    "(max_event_bytes); move bulky data elsewhere or raise the limit",
                    partition,
                    offset,
                    None,
                    value,
                )
            ]
        if size > limit * BATCH_SIZE_FACTOR:
            return [
                Rejection(
                    RejectCode.TOO_LARGE,
                    f"the batch record is {size} bytes, over the limit of "
                    f"{limit * BATCH_SIZE_FACTOR} bytes per batch ({BATCH_SIZE_FACTOR} x "
                    "max_event_bytes); send smaller batches",
                    partition,
                    offset,
                    None,
                    value,
                )
            ]
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [
            Rejection(
                RejectCode.INVALID_JSON,
                f"the record is not valid UTF-8 JSON: {exc}",
                partition,
                offset,
                None,
                value,
            )
        ]
    if type(doc) is dict:
        # no more ``{`` and ``[`` than levels allowed: cannot nest deeper (inlined
        # :func:`deeper_than_limit`, which walks the event only when there are more)
        if value.count(b"{") + value.count(b"[") > MAX_JSON_DEPTH and deeper_than_limit(doc):
            return [_too_deep(None, partition, offset, value)]
        return [_parse_event(doc, None, value, arrival_ms, partition, offset, rules)]
    if type(doc) is list:
        if not doc:
            return [
                Rejection(
                    RejectCode.INVALID_EVENT,
                    "the record is an empty JSON array; a batch must hold at least one event",
                    partition,
                    offset,
                    None,
                    value,
                )
            ]
        out: list[Event | Rejection] = []
        # No element nests deeper than the whole record minus its array.
        shallow = value.count(b"{") + value.count(b"[") <= MAX_JSON_DEPTH + 1
        for index, element in enumerate(doc):
            try:
                raw = orjson.dumps(element)
            except orjson.JSONEncodeError:
                # orjson writes at most 254 levels: the element is far too deep. Its
                # dead letter carries the record, which holds the element as sent.
                out.append(_too_deep(index, partition, offset, value))
                continue
            if len(raw) > limit:
                out.append(
                    Rejection(
                        RejectCode.TOO_LARGE,
                        f"batch element {index} is {len(raw)} bytes, over the limit of "
                        f"{limit} bytes per event (max_event_bytes); move bulky data "
                        "elsewhere or raise the limit",
                        partition,
                        offset,
                        index,
                        raw,
                    )
                )
            elif type(element) is not dict:
                out.append(
                    Rejection(
                        RejectCode.INVALID_EVENT,
                        f"batch element {index} is a JSON {_json_kind(element)}, "
                        "not an event object",
                        partition,
                        offset,
                        index,
                        raw,
                    )
                )
            elif not shallow and deeper_than_limit(element, raw):
                out.append(_too_deep(index, partition, offset, raw))
            else:
                out.append(_parse_event(element, index, raw, arrival_ms, partition, offset, rules))
        return out
    return [
        Rejection(
            RejectCode.INVALID_EVENT,
            f"the record is a JSON {_json_kind(doc)}; send one event object "
            "or a JSON array of them",
            partition,
            offset,
            None,
            value,
        )
    ]


def _parse_event(
    obj: dict[str, Any],
    index: int | None,
    raw: bytes,
    arrival_ms: int,
    partition: int,
    offset: int,
    rules: SessionRules,
) -> Event | Rejection:
    """One event object (decoded, within size) to an event or a rejection."""
    get = obj.get
    user_id = get("user_id")
    session_id = get("session_id")
    if (user_id is None or user_id == "") and (session_id is None or session_id == ""):
        return Rejection(
            RejectCode.NO_IDENTITY,
            _where(index) + "event has neither user_id nor session_id; set one of them",
            partition,
            offset,
            index,
            raw,
        )

    # Loading the schema also tells whether it is the bundled one (``_bundled_schema``).
    validate = _validator if _validator is not None else event_validator()
    etype = get("type")
    stamp = get("timestamp")
    event_id = get("id")
    project = get("project")
    user_name = get("user_name")
    source = get("source")
    message = get("message")
    value = get("value")
    close = get("close")
    sent = get("sent_at")
    data: dict[str, Any] | None = get("data")
    # The bundled schema, by hand: true only for events it accepts (exact types, as
    # orjson gives them; a field given as null is not absent). Anything else goes to
    # the compiled validator, whose verdict and message count.
    if not (
        _bundled_schema
        and FAST_PATHS
        and type(etype) is str
        and 1 <= len(etype) <= 100
        and (type(stamp) is int or type(stamp) is str)
        and (
            ("user_id" not in obj)
            if user_id is None
            else (type(user_id) is str and 1 <= len(user_id) <= 256)
        )
        and (
            ("session_id" not in obj)
            if session_id is None
            else (
                type(session_id) is str
                and 8 <= len(session_id) <= 100
                and _SESSION_ID_CHARS.fullmatch(session_id) is not None
            )
        )
        and (
            ("id" not in obj)
            if event_id is None
            else (type(event_id) is str and 1 <= len(event_id) <= 100)
        )
        and (
            ("project" not in obj)
            if project is None
            else (type(project) is str and 1 <= len(project) <= 100)
        )
        and (
            ("user_name" not in obj)
            if user_name is None
            else (type(user_name) is str and len(user_name) <= MAX_USER_NAME_CHARS)
        )
        and (("source" not in obj) if source is None else type(source) is str)
        and (("message" not in obj) if message is None else type(message) is str)
        and (
            ("value" not in obj) if value is None else (type(value) is int or type(value) is float)
        )
        and (("close" not in obj) if close is None else type(close) is bool)
        and (("sent_at" not in obj) if sent is None else (type(sent) is int or type(sent) is str))
        and (("data" not in obj) if data is None else type(data) is dict)
    ):
        try:
            validate(obj, name_prefix="event")
        except fastjsonschema.JsonSchemaValueException as exc:
            return Rejection(
                RejectCode.INVALID_EVENT,
                _where(index) + f"invalid event: {exc.message}",
                partition,
                offset,
                index,
                raw,
            )
    # Valid from here: a known field that is None is absent.

    try:
        time_ms = stamp if type(stamp) is int else parse_timestamp_ms(stamp)
        if not MIN_TIME_MS <= time_ms <= MAX_TIME_MS:
            raise _out_of_range(stamp)
    except TimestampError as exc:
        return Rejection(
            RejectCode.INVALID_EVENT,
            _where(index) + f"invalid event: timestamp: {exc}",
            partition,
            offset,
            index,
            raw,
        )
    if sent is not None:
        try:
            sent_ms = sent if type(sent) is int else _sent_at_ms(sent)
            if not MIN_TIME_MS <= sent_ms <= MAX_TIME_MS:
                raise _out_of_range(sent)
        except TimestampError as exc:
            return Rejection(
                RejectCode.INVALID_EVENT,
                _where(index) + f"invalid event: sent_at: {exc}",
                partition,
                offset,
                index,
                raw,
            )
        time_ms += arrival_ms - sent_ms

    clamped = False
    if time_ms > arrival_ms + rules.max_future_skew_ms:
        time_ms = arrival_ms
        clamped = True
    elif time_ms < arrival_ms - rules.max_event_age_ms:
        return Rejection(
            RejectCode.TOO_OLD,
            _where(index)
            + f"event time {_show_ms(time_ms)} is {arrival_ms - time_ms} ms before its arrival "
            f"at {_show_ms(arrival_ms)}, more than max_event_age ({rules.max_event_age_ms} ms)"
            + ("; check the client clock and sent_at" if sent is not None else ""),
            partition,
            offset,
            index,
            raw,
        )

    if data is None:
        data = {}
    if not KNOWN_FIELDS.issuperset(obj):
        for name, field_value in obj.items():
            if name not in KNOWN_FIELDS:
                data.setdefault(name, field_value)

    return _new_event(
        etype,
        time_ms,
        arrival_ms,
        DEFAULT_PROJECT if project is None else project,
        user_id,
        session_id,
        event_id,
        user_name,
        source,
        message,
        value,
        False if close is None else close,
        data,
        partition,
        offset,
        index,
        clamped,
    )


#: :class:`Event`'s fields in the order :func:`_parse_event` passes them.
_EVENT_FIELDS: Final = (
    "type",
    "time_ms",
    "arrival_ms",
    "project",
    "user_id",
    "session_id",
    "id",
    "user_name",
    "source",
    "message",
    "value",
    "close",
    "data",
    "partition",
    "offset",
    "index",
    "clamped",
)


def _event_by_name(*args: Any) -> Event:
    return Event(**dict(zip(_EVENT_FIELDS, args, strict=True)))


#: ``Event`` itself when its fields come in that order (positional arguments are the
#: quicker call), else a constructor that passes them by name.
_new_event: Callable[..., Event] = (
    Event if Event.__match_args__ == _EVENT_FIELDS else _event_by_name
)

def _sent_at_ms(sent: object) -> int:
    """``parse_timestamp_ms`` remembering its last answer: the events of one batch
    usually share their ``sent_at``, so each batch parses it once."""
    global _last_sent_at
    last = _last_sent_at
    if last[0] == sent:
        return last[1]
    sent_ms = parse_timestamp_ms(sent)
    _last_sent_at = (sent, sent_ms)
    return sent_ms


def _out_of_range(value: object) -> TimestampError:
    return TimestampError(
        f"{value!r} is outside the years 1970-9999; send the time the event happened "
        f"(RFC 3339 with an offset, or epoch ms from {MIN_TIME_MS} to {MAX_TIME_MS})"
    )


def _too_deep(index: int | None, partition: int, offset: int, raw: bytes) -> Rejection:
    return Rejection(
        RejectCode.INVALID_EVENT,
        _where(index)
        + f"invalid event: JSON nested deeper than {MAX_JSON_DEPTH} levels (the event object "
        "is level 1); flatten the data",
        partition,
        offset,
        index,
        raw,
    )


def _where(index: int | None) -> str:
    return "" if index is None else f"batch element {index}: "


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def _show_ms(ms: int) -> str:
    """``ms`` as RFC 3339 (an expanded year outside the years 1-9999)."""
    return format_ms(ms)
