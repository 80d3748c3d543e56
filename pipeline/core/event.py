"""The event as the core sees it: parsed, validated, its clocks resolved."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: ``(project, kind, identity)``: kind ``"s"`` for a client session id
#: (a "manual" session), ``"u"`` for a user identity (an "auto" session).
SessionKey = tuple[str, str, str]

START = "session"
END = "sessionend"
HEARTBEAT = "heartbeat"
ERROR = "error"


class RejectCode(StrEnum):
    """Dead-letter codes of SPEC section 6."""

    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"
    NO_IDENTITY = "no_identity"
    TOO_LARGE = "too_large"
    TOO_OLD = "too_old"
    END_WITHOUT_SESSION = "end_without_session"
    #: the record made the worker fail unexpectedly, again and again (``detail``: the error)
    PROCESSING_FAILED = "processing_failed"


@dataclass(slots=True)
class Event:
    """One valid input event.

    ``time_ms`` is the event time (client clock, corrected by
    ``arrival_ms - sent_at`` and clamped to ``arrival_ms`` when too far ahead);
    ``arrival_ms`` is the Kafka record timestamp. ``partition``/``offset`` are
    the coordinates of the input record that carried it (a batch record carries
    several events at one offset; ``index``, their position in the batch, tells
    them apart; it is None for a record holding one event).
    """

    type: str
    time_ms: int
    arrival_ms: int
    project: str
    user_id: str | None = None
    session_id: str | None = None
    id: str | None = None
    user_name: str | None = None
    source: str | None = None
    message: str | None = None
    value: float | int | None = None
    close: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    partition: int = 0
    offset: int = 0
    index: int | None = None
    clamped: bool = False

    @property
    def manual(self) -> bool:
        return self.session_id is not None

    @property
    def key(self) -> SessionKey:
        if self.session_id is not None:
            return (self.project, "s", self.session_id)
        assert self.user_id is not None, "an event has a user_id or a session_id"
        return (self.project, "u", self.user_id)

    @property
    def routing_key(self) -> str:
        """The Kafka record key that routes this event to its session's partition."""
        return self.session_id if self.session_id is not None else (self.user_id or "")

    @property
    def ends_session(self) -> bool:
        return self.type == END or (self.type == HEARTBEAT and self.close)


@dataclass(slots=True)
class Rejection:
    """An input record, or one event of a batch record, that cannot be used."""

    code: RejectCode
    detail: str
    partition: int = 0
    offset: int = 0
    index: int | None = None
    raw: bytes | None = None
