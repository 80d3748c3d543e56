"""``Publisher``: one client per process, for every user of a service.

::

    publisher = Publisher.for_gateway("https://gateway:8080", api_key="abc1234567")

    def handle(request):                      # any thread, any number of them
        sid = publisher.start_session(user_id=request.user.email, user_name=request.user.name)
        publisher.submit_event("usage", session_id=sid, source="checkout")
        publisher.end_session(session_id=sid)

The identity is given per call: ``user_id`` (the user's automatic session), or
``session_id`` (a manual session from :meth:`start_session`), or both. Every
event gets its ``id`` when it is queued; a retry sends the same ids, so the
worker's de-duplication drops an event delivered twice.

Events are queued and sent in batches by one background thread (every
``flush_interval_ms``, or as soon as ``batch_size`` are queued); a failed send is
retried with backoff (up to ``max_retry_delay_ms``), keeping the events in order.
The queue holds at most ``max_queue`` events, in flight included. When it is
full, ``overflow="block"`` (the default) makes the caller wait up to
``block_timeout_ms`` for room, then raise :class:`QueueFullError`; the ``a*``
methods (``await publisher.asubmit_event(...)``) wait without blocking the event
loop. ``overflow="drop_oldest"`` never waits and drops the oldest queued events
(counted in :attr:`dropped`). :meth:`close` (also at interpreter exit, or leaving
a ``with`` block) flushes and stops the thread.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

from sessionizer_client.delivery import Delivery, Overflow, Ticker
from sessionizer_client.errors import error_info, type_name
from sessionizer_client.exceptions import ClientError
from sessionizer_client.timefmt import format_ms
from sessionizer_client.transports import TransportShortcuts

if TYPE_CHECKING:
    from sessionizer_client.session import SessionClient

__all__ = ["Overflow", "Publisher", "Ticker", "new_session_id"]

MAX_TYPE_CHARS = 100
MAX_USER_ID_CHARS = 256
MAX_USER_NAME_CHARS = 256
SESSION_ID = re.compile(r"[A-Za-z0-9-]{8,100}")


def new_session_id() -> str:
    """A fresh manual session id: 32 hex digits."""
    return uuid.uuid4().hex


def check_user_id(user_id: object, name: str = "user_id") -> None:
    """Raise ValueError unless ``user_id`` is a string of 1-MAX_USER_ID_CHARS characters."""
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_CHARS:
        raise ValueError(f"{name} must be a string of 1-{MAX_USER_ID_CHARS} characters")


class Publisher(TransportShortcuts, Delivery):
    """Queue, batch and send SPEC events for any number of users; thread- and asyncio-safe."""

    # -- events ----------------------------------------------------------------

    def start_session(
        self,
        *,
        user_id: str | None = None,
        user_name: str | None = None,
        session_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> str:
        """Open a manual session (a ``session`` event); returns its id (a new one unless given).
        Send its later events with ``session_id=`` the returned id."""
        session_id = session_id or new_session_id()
        self._put(self.event("session", user_id, session_id, user_name, data=data))
        return session_id

    def submit_event(
        self,
        type: str,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        user_name: str | None = None,
        source: str | None = None,
        message: str | None = None,
        value: float | None = None,
        data: dict[str, Any] | None = None,
        timestamp_ms: int | None = None,
    ) -> str:
        """Queue an event (``usage``, ``log``, ``404``, custom...); returns its id."""
        event = self.event(
            type, user_id, session_id, user_name, source=source, message=message, value=value,
            data=data, timestamp_ms=timestamp_ms,
        )  # fmt: skip
        return self._queue_event(event)

    def submit_exception(
        self,
        exc: BaseException,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        user_name: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> str:
        """Queue an ``error`` event: the exception type, message and stack in ``data["@error"]``."""
        return self._queue_event(self.exception_event(exc, user_id, session_id, user_name, data))

    def heartbeat(
        self,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        user_name: str | None = None,
        close: bool = False,
    ) -> str:
        """"The user is still here" (sent soon); ``close=True`` ends the session instead."""
        event = self._heartbeat_event(
            close, user_id=user_id, session_id=session_id, user_name=user_name
        )
        return self._queue_event(event, soon=True)

    def end_session(
        self, *, user_id: str | None = None, session_id: str | None = None, user_name: str | None = None
    ) -> str:
        """End a session (a ``sessionend``, sent soon): the manual one when ``session_id``
        is given, else the user's automatic one."""
        event = self.event("sessionend", user_id, session_id, user_name)
        return self._queue_event(event, soon=True)

    # -- the same, for asyncio: waiting for room without blocking the loop -------

    async def astart_session(self, **identity: Any) -> str:
        session_id: str = identity.pop("session_id", None) or new_session_id()
        await self._aput(self.event("session", session_id=session_id, **identity))
        return session_id

    async def asubmit_event(self, type: str, **fields: Any) -> str:
        return await self._aqueue_event(self.event(type, **fields))

    async def asubmit_exception(self, exc: BaseException, **identity: Any) -> str:
        return await self._aqueue_event(self.exception_event(exc, **identity))

    async def aheartbeat(self, *, close: bool = False, **identity: Any) -> str:
        return await self._aqueue_event(self._heartbeat_event(close, **identity), soon=True)

    async def aend_session(self, **identity: Any) -> str:
        return await self._aqueue_event(self.event("sessionend", **identity), soon=True)

    def _queue_event(self, event: dict[str, Any], *, soon: bool = False) -> str:
        self._put(event, soon=soon)
        return str(event["id"])

    async def _aqueue_event(self, event: dict[str, Any], *, soon: bool = False) -> str:
        await self._aput(event, soon=soon)
        return str(event["id"])

    # -- building events ---------------------------------------------------------

    def event(
        self,
        type: str,
        user_id: str | None = None,
        session_id: str | None = None,
        user_name: str | None = None,
        *,
        source: str | None = None,
        message: str | None = None,
        value: float | None = None,
        data: dict[str, Any] | None = None,
        timestamp_ms: int | None = None,
    ) -> dict[str, Any]:
        """A checked SPEC event with a fresh ``id`` (not queued)."""
        if not isinstance(type, str) or not type or len(type) > MAX_TYPE_CHARS:
            raise ValueError(f"type must be a string of 1-{MAX_TYPE_CHARS} characters")
        if user_id is None and session_id is None:
            raise ClientError("no identity: give user_id=, session_id= (from start_session), or both")
        if user_id is not None:
            check_user_id(user_id)
        if session_id is not None and (
            not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id)
        ):
            raise ValueError("session_id must be 8-100 characters of A-Z, a-z, 0-9 and -")
        if user_name is not None and (
            not isinstance(user_name, str) or len(user_name) > MAX_USER_NAME_CHARS
        ):
            raise ValueError(f"user_name must be a string of up to {MAX_USER_NAME_CHARS} characters")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("value must be a number")
        if data is not None and not isinstance(data, dict):
            raise ValueError("data must be a dict")
        event: dict[str, Any] = {
            "type": type,
            "timestamp": format_ms(self._clock_ms() if timestamp_ms is None else timestamp_ms),
            "id": uuid.uuid4().hex,
        }
        if user_id is not None:
            event["user_id"] = user_id
        if user_name:
            event["user_name"] = user_name
        if session_id is not None:
            event["session_id"] = session_id
        if source is not None:
            event["source"] = source
        if message is not None:
            event["message"] = message
        if value is not None:
            event["value"] = value
        if data:
            event["data"] = dict(data)
        return event

    def _heartbeat_event(self, close: bool, **identity: Any) -> dict[str, Any]:
        event = self.event("heartbeat", **identity)
        if close:
            event["close"] = True
        return event

    def exception_event(
        self,
        exc: BaseException,
        user_id: str | None = None,
        session_id: str | None = None,
        user_name: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        payload = dict(data or {})
        payload["@error"] = error_info(exc)
        return self.event(
            "error", user_id, session_id, user_name, source=type_name(exc), message=str(exc),
            data=payload,
        )  # fmt: skip

    # -- for the one-user convenience -----------------------------------------

    def user(self, user_id: str, user_name: str | None = None, **options: Any) -> SessionClient:
        """A :class:`SessionClient` for one user over this publisher (its heartbeats
        included); closing it leaves the publisher open."""
        from sessionizer_client.session import SessionClient

        client = SessionClient(publisher=self, **options)
        client.set_user_identity(user_id, user_name)
        return client

