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
neither a non-empty ``user_id`` nor         ``no_identity``
a non-empty ``session_id``
schema (``schemas/event.schema.json``)      ``invalid_event``
timestamp / sent_at not RFC 3339 with an    ``invalid_event``
offset nor integer epoch ms
event time older than ``max_event_age``     ``too_old``
==========================================  ======================

Event time is ``timestamp + (arrival_ms - sent_at)`` when ``sent_at`` is given,
else ``timestamp``; more than ``max_future_skew`` ahead of arrival it is
clamped to arrival (``Event.clamped``). The limits are inclusive: an event
exactly ``max_event_bytes`` long, exactly ``max_future_skew`` ahead or exactly
``max_event_age`` behind passes unchanged.

The event schema is read from ``schemas/event.schema.json`` at the repository
root (or from the folder named by ``SESSIONIZER_SCHEMA_DIR``) and compiled once,
on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import fastjsonschema
import orjson

from pipeline.core.event import Event, RejectCode, Rejection
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

Validator = Callable[..., Any]
_validator: Validator | None = None
#: The last ``sent_at`` text parsed, and its value (see :func:`_sent_at_ms`).
_last_sent_at: tuple[object, int] = (object(), 0)


def schema_dir() -> Path:
    """The folder holding the JSON schemas: ``$SESSIONIZER_SCHEMA_DIR`` or ``<repo>/schemas``."""
    override = os.environ.get(SCHEMA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "schemas"


def event_validator() -> Validator:
    """The compiled event schema (without its identity ``anyOf``), compiled on first use."""
    global _validator
    if _validator is None:
        path = schema_dir() / EVENT_SCHEMA_FILE
        try:
            definition = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"event schema not found at {path}; set {SCHEMA_DIR_ENV} to the folder "
                f"that holds {EVENT_SCHEMA_FILE}"
            ) from None
        # The schema's ``anyOf`` (user_id or session_id) is checked before the
        # schema, with its own code (``no_identity``): no need to check it twice.
        definition.pop("anyOf", None)
        _validator = fastjsonschema.compile(definition, use_default=False)
    return _validator


def reset_event_validator() -> None:
    """Forget the compiled schema, so the next parse reads it again (tests, reloads)."""
    global _validator
    _validator = None


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
    exactly one item (its ``Rejection.index`` is ``None``, its ``Event.index``
    0); a batch yields one item per element, ``index`` being the position.
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
        for index, element in enumerate(doc):
            raw = orjson.dumps(element)
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
    user_id = obj.get("user_id")
    session_id = obj.get("session_id")
    if (user_id is None or user_id == "") and (session_id is None or session_id == ""):
        return Rejection(
            RejectCode.NO_IDENTITY,
            _where(index) + "event has neither user_id nor session_id; set one of them",
            partition,
            offset,
            index,
            raw,
        )

    validate = _validator if _validator is not None else event_validator()
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

    stamp = obj["timestamp"]
    try:
        time_ms = stamp if type(stamp) is int else parse_timestamp_ms(stamp)
    except TimestampError as exc:
        return Rejection(
            RejectCode.INVALID_EVENT,
            _where(index) + f"invalid event: timestamp: {exc}",
            partition,
            offset,
            index,
            raw,
        )
    sent = obj.get("sent_at")
    if sent is not None:
        try:
            sent_ms = sent if type(sent) is int else _sent_at_ms(sent)
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

    data: dict[str, Any] | None = obj.get("data")
    if data is None:
        data = {}
    if not KNOWN_FIELDS.issuperset(obj):
        for name, field_value in obj.items():
            if name not in KNOWN_FIELDS:
                data.setdefault(name, field_value)

    return Event(
        type=obj["type"],
        time_ms=time_ms,
        arrival_ms=arrival_ms,
        project=obj.get("project", DEFAULT_PROJECT),
        user_id=user_id,
        session_id=session_id,
        id=obj.get("id"),
        user_name=obj.get("user_name"),
        source=obj.get("source"),
        message=obj.get("message"),
        value=obj.get("value"),
        close=obj.get("close", False),
        data=data,
        partition=partition,
        offset=offset,
        index=0 if index is None else index,
        clamped=clamped,
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
    """``ms`` as RFC 3339 when it is a representable date, else as a number."""
    try:
        return format_ms(ms)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms since the epoch"
