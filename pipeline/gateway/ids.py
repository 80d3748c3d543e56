"""What the gateway remembers about ids, to resolve heartbeats.

``GET /api/v2/events/session/heartbeat?id=...`` carries one opaque id: the
Exceptionless docs say it is "the session id or the user identity". The
gateway decides which, in this order:

1. an id this gateway has seen as a **session id** of the project (on a
   ``session`` event's ``reference_id`` or a ``data["@ref:session"]``) is a
   session id;
2. an id it has seen as a **user identity** of the project
   (``data["@user"].identity``) is a user identity;
3. an id of the session-id format, 8-100 of ``[A-Za-z0-9-]``, is a session id;
4. anything else (an e-mail address, say) is a user identity.

Rule 3 is what makes the real client work: with session-id management on,
``@exceptionless/node`` generates a 32-hex session id and heartbeats with it,
and the heartbeat can arrive before the batch that holds the session start,
when the gateway has not seen the id yet. Rule 2 keeps an identity that
happens to look like a session id (``alice1234``) with its user's events, once
any of them has passed this gateway. A heartbeat resolved to a session id
also carries the user id and name last seen with that session.

**Ended sessions.** The real client ends a session with
``heartbeat?close=true`` and sends that close a second time when the process
exits; its heartbeat timer also keeps running with the old id after the end.
Those heartbeats must not open a new, empty session, so a heartbeat for an id
this gateway has seen ended (by ``close=true`` or a ``sessionend``) is
answered 200 and not published. A later ``session`` start, or any other event
for that id with a client time after the end, clears the mark.

The memory is this process's, bounded (least recently used ids are dropped
first) and lost on restart; the rules above only lean on it for the cases
rule 3 cannot settle. With several gateway replicas, a repeated close can
reach the worker.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pipeline.core.timefmt import TimestampError, parse_timestamp_ms
from pipeline.exceptions import EventError
from pipeline.gateway.mapping import MAX_USER_ID_CHARS, is_session_id

K = TypeVar("K")
V = TypeVar("V")

#: ``(project, kind, id)``; kind ``"s"`` for a session id, ``"u"`` for a user identity.
IdKey = tuple[str, str, str]


class _Lru(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class HeartbeatTarget:
    """Whom a heartbeat is for: a session (``session_id``) or a user (``user_id`` only)."""

    session_id: str | None
    user_id: str | None
    user_name: str | None

    @property
    def key(self) -> tuple[str, str]:
        if self.session_id is not None:
            return ("s", self.session_id)
        assert self.user_id is not None
        return ("u", self.user_id)


class IdMemory:
    """Session ids, identities and ended sessions seen, per project, bounded."""

    def __init__(self, capacity: int = 100_000) -> None:
        # (project, session id) -> (user id, user name)
        self._sessions: _Lru[tuple[str, str], tuple[str | None, str | None]] = _Lru(capacity)
        # (project, identity) -> (user name,)
        self._identities: _Lru[tuple[str, str], tuple[str | None]] = _Lru(capacity)
        # (project, kind, id) -> when the gateway saw it end (epoch ms, gateway clock)
        self._ended: _Lru[IdKey, int] = _Lru(capacity)

    def resolve_heartbeat(self, project: str, raw_id: str) -> HeartbeatTarget:
        """Apply the rules of the module docstring; :class:`EventError` for an unusable id."""
        if not raw_id:
            raise EventError("invalid_event", "id is required: the session id or the user identity")
        known_session = self._sessions.get((project, raw_id))
        if known_session is not None:
            return HeartbeatTarget(raw_id, known_session[0], known_session[1])
        known_user = self._identities.get((project, raw_id))
        if known_user is not None:
            return HeartbeatTarget(None, raw_id, known_user[0])
        if is_session_id(raw_id):
            return HeartbeatTarget(raw_id, None, None)
        if len(raw_id) > MAX_USER_ID_CHARS:
            raise EventError("invalid_event", f"id is longer than {MAX_USER_ID_CHARS} characters")
        return HeartbeatTarget(None, raw_id, None)

    def has_ended(self, project: str, target: HeartbeatTarget) -> bool:
        return (project, *target.key) in self._ended

    def mark_ended(self, project: str, target: HeartbeatTarget, at_ms: int) -> None:
        self._ended.put((project, *target.key), at_ms)

    def clear_ended(self, project: str, target: HeartbeatTarget) -> None:
        self._ended.pop((project, *target.key))

    def observe(self, event: dict[str, Any], *, received_ms: int) -> None:
        """Remember the ids of an event the broker has accepted."""
        project = event["project"]
        session_id = event.get("session_id")
        user_id = event.get("user_id")
        user_name = event.get("user_name")
        if session_id is not None:
            previous = self._sessions.get((project, session_id)) or (None, None)
            self._sessions.put(
                (project, session_id), (user_id or previous[0], user_name or previous[1])
            )
        if user_id is not None:
            previous_name = self._identities.get((project, user_id)) or (None,)
            self._identities.put((project, user_id), (user_name or previous_name[0],))

        if session_id is not None:
            key: IdKey = (project, "s", str(session_id))
        elif user_id is not None:
            key = (project, "u", str(user_id))
        else:
            return
        event_type = event.get("type")
        if event_type == "sessionend" or (event_type == "heartbeat" and event.get("close") is True):
            self._ended.put(key, received_ms)
            return
        ended_at = self._ended.get(key)
        if ended_at is None or event_type == "heartbeat":
            return
        if event_type == "session" or _event_time_ms(event) > ended_at:
            self._ended.pop(key)


def _event_time_ms(event: dict[str, Any]) -> int:
    try:
        return parse_timestamp_ms(event.get("timestamp"))
    except TimestampError:
        return 0
