"""Input records to events: JSON, size limits, identity, schema, clocks.

One Kafka record of the input topic carries one event (a JSON object) or a
batch (a JSON array of events). :meth:`EventParser.parse` turns it into a list of
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

One :class:`EventParser` parses the records of one partition (or one pass of the
checker): it holds the session rules, the compiled
:class:`~pipeline.core.event_schema.EventSchema` (one validation path: the schema's
quick check, else its compiled validator, which gives the verdict and the error
message) and the last ``sent_at`` it parsed (the events of one batch usually share
it). Nothing here is module state: each caller owns its parser.
"""

from __future__ import annotations

from typing import Any, Final

import fastjsonschema
import orjson

from pipeline.core.event import Event, RejectCode, Rejection
from pipeline.core.event_schema import EVENT_SCHEMA_FILE, SCHEMA_DIR_ENV, EventSchema, schema_dir
from pipeline.core.limits import (
    MAX_JSON_DEPTH,
    MAX_TIME_MS,
    MIN_TIME_MS,
    deeper_than_limit,
)
from pipeline.core.rules import SessionRules
from pipeline.core.timefmt import TimestampError, format_ms, parse_timestamp_ms

__all__ = [
    "BATCH_SIZE_FACTOR",
    "EVENT_SCHEMA_FILE",
    "KNOWN_FIELDS",
    "SCHEMA_DIR_ENV",
    "EventParser",
    "EventSchema",
    "schema_dir",
]

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
#: The fields :meth:`EventParser._event` reads once the event is valid, in its order.
_FIELDS: Final = (
    "type",
    "timestamp",
    "id",
    "project",
    "user_name",
    "source",
    "message",
    "value",
    "close",
    "sent_at",
    "data",
)

_JSON_WHITESPACE: Final = b" \t\n\r"


class EventParser:
    """Parses input records into events and rejections (see the module's docstring).

    ``rules`` gives the limits; ``schema`` defaults to :meth:`EventSchema.load`.
    One parser per partition (or per pass over records): it remembers the last
    ``sent_at`` it parsed.
    """

    __slots__ = ("_last_sent_at", "_quick", "_validate", "rules", "schema")

    def __init__(self, rules: SessionRules, schema: EventSchema | None = None) -> None:
        self.rules = rules
        self.schema = EventSchema.load() if schema is None else schema
        self._validate = self.schema.validate
        self._quick = self.schema.quick_check(_FIELDS)
        #: The last ``sent_at`` text parsed, and its value (see :meth:`_sent_at_ms`).
        self._last_sent_at: tuple[object, int] = (object(), 0)

    def parse(
        self,
        value: bytes | None,
        *,
        arrival_ms: int,
        partition: int,
        offset: int,
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
        limit = self.rules.max_event_bytes
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
            return [self._event(doc, None, value, arrival_ms, partition, offset)]
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
                    out.append(self._event(element, index, raw, arrival_ms, partition, offset))
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

    def _event(
        self,
        obj: dict[str, Any],
        index: int | None,
        raw: bytes,
        arrival_ms: int,
        partition: int,
        offset: int,
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

        # One validation path: the quick check derived from the schema gives the
        # fields only for objects the schema accepts; else the compiled validator decides.
        quick = self._quick
        fields = None if quick is None else quick(obj)
        if fields is None:
            try:
                self._validate(obj, name_prefix="event")
            except fastjsonschema.JsonSchemaValueException as exc:
                return Rejection(
                    RejectCode.INVALID_EVENT,
                    _where(index) + f"invalid event: {exc.message}",
                    partition,
                    offset,
                    index,
                    raw,
                )
            fields = tuple(map(get, _FIELDS))
        # Valid from here: a known field that is None is absent.
        etype, stamp, event_id, project, user_name, source, message, value, close, sent, data = (
            fields
        )

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
                sent_ms = sent if type(sent) is int else self._sent_at_ms(sent)
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
        if time_ms > arrival_ms + self.rules.max_future_skew_ms:
            time_ms = arrival_ms
            clamped = True
        elif time_ms < arrival_ms - self.rules.max_event_age_ms:
            return Rejection(
                RejectCode.TOO_OLD,
                _where(index)
                + f"event time {_show_ms(time_ms)} is {arrival_ms - time_ms} ms before its arrival "
                f"at {_show_ms(arrival_ms)}, more than max_event_age ({self.rules.max_event_age_ms} ms)"
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

        # positionally, in Event's field order (the quicker call; test_parse's
        # test_every_known_field_maps checks each field lands where it belongs)
        return Event(
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

    def _sent_at_ms(self, sent: object) -> int:
        """``parse_timestamp_ms`` remembering its last answer: the events of one batch
        usually share their ``sent_at``, so each batch parses it once."""
        last = self._last_sent_at
        if last[0] == sent:
            return last[1]
        sent_ms = parse_timestamp_ms(sent)
        self._last_sent_at = (sent, sent_ms)
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
