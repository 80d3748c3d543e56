"""``SessionClient``: the one-user convenience over :class:`Publisher`.

::

    with SessionClient.for_gateway("http://localhost:8080", api_key="abc1234567") as client:
        client.set_user_identity("alice@example.com", "Alice")
        client.start_session()
        client.submit_event("usage", source="checkout")
        try:
            checkout()
        except Exception as exc:
            client.submit_exception(exc)
        client.end_session()

It remembers one identity and one manual session, and sends heartbeats for
them; queueing, batching, retries and back-pressure are the
:class:`Publisher`'s. Made from a transport it owns its publisher (closing the
client closes it; a full queue drops the oldest events, as a one-user app
expects); made with ``publisher=`` it shares that one (``publisher.user(...)``),
and closing the client only stops its heartbeats.

**Sessions.** :meth:`start_session` opens a manual session: a new 32-hex
session id on every event until :meth:`end_session`. Without it, events carry
only the user identity and the worker groups them into an automatic session.

**Heartbeats.** While a session is active (after :meth:`start_session`, or
after the first event with an identity), a ``heartbeat`` is sent whenever
``heartbeat_interval`` seconds (default 30) pass without any event, so an idle
but present user's session stays open. :meth:`end_session` stops them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sessionizer_client.closing import ClosesOnExit
from sessionizer_client.exceptions import ClientError, TransportError
from sessionizer_client.publisher import Publisher, check_user_id, new_session_id
from sessionizer_client.timefmt import now_ms
from sessionizer_client.transports import Transport, TransportShortcuts


class SessionClient(TransportShortcuts, ClosesOnExit):
    """Events for one user at a time; thread-safe."""

    def __init__(
        self,
        transport: Transport | None = None,
        *,
        publisher: Publisher | None = None,
        heartbeat_interval: float | None = 30.0,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        max_retry_delay: float = 30.0,
        close_timeout: float = 10.0,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0, or None for no automatic heartbeats")
        if (transport is None) == (publisher is None):
            raise ValueError("give a transport or a publisher= (one of them)")
        self._owns_publisher = publisher is None
        if publisher is None:
            assert transport is not None
            publisher = Publisher(
                transport,
                batch_size=batch_size,
                flush_interval_ms=round(flush_interval * 1000),
                max_queue=max_queue,
                overflow="drop_oldest",
                max_retry_delay_ms=math.ceil(max_retry_delay * 1000),
                close_timeout_ms=round(close_timeout * 1000),
                clock_ms=clock_ms,
            )
        self.publisher = publisher
        self.transport = publisher.transport
        self.heartbeat_interval = heartbeat_interval
        self.close_timeout = close_timeout
        self._lock = threading.RLock()
        self._user_id: str | None = None
        self._user_name: str | None = None
        self._session_id: str | None = None
        self._heartbeats = False
        self._heartbeat_at = math.inf
        self._closed = False
        self._ticker = publisher.add_ticker(self._tick)

    # -- state -----------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The manual session's id, or None outside one."""
        return self._session_id

    @property
    def user_id(self) -> str | None:
        return self._user_id

    @property
    def dropped(self) -> int:
        """Events dropped by the publisher: queue overflow, or refused by the gateway."""
        return self.publisher.dropped

    @property
    def last_error(self) -> TransportError | None:
        return self.publisher.last_error

    def set_user_identity(self, identity: str | None, name: str | None = None) -> None:
        """The user of the events from now on (an id or e-mail); None clears it."""
        if identity is not None:
            check_user_id(identity, "identity")
        if name is not None and not isinstance(name, str):
            raise ValueError("name must be a string")
        with self._lock:
            self._user_id = identity
            self._user_name = name or None

    # -- events ----------------------------------------------------------------

    def start_session(self) -> str:
        """Open a manual session (ending the current one first); returns its id."""
        with self._lock:
            self._check_open()
            if self._session_id is not None:
                self.end_session()
            session_id = new_session_id()
            self.publisher.start_session(
                user_id=self._user_id, user_name=self._user_name, session_id=session_id
            )
            self._session_id = session_id
            self._heartbeats = self.heartbeat_interval is not None
            self._schedule_heartbeat()
            return session_id

    def end_session(self) -> None:
        """End the current session (manual, else the user's automatic one) and stop heartbeats."""
        with self._lock:
            self._check_open()
            self.publisher.end_session(**self._identity())
            self._session_id = None
            self._heartbeats = False
            self._heartbeat_at = math.inf

    def heartbeat(self) -> None:
        """Send a heartbeat now: "the user is still here"."""
        with self._lock:
            self._check_open()
            self.publisher.heartbeat(**self._identity())
            self._schedule_heartbeat()

    def submit_event(
        self,
        type: str,
        *,
        source: str | None = None,
        message: str | None = None,
        value: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> str:
        """Queue an event (``usage``, ``log``, ``404``, custom...); returns its id."""
        with self._lock:
            self._check_open()
            event_id = self.publisher.submit_event(
                type, source=source, message=message, value=value, data=data, **self._identity()
            )
            self._activity()
            return event_id

    def submit_exception(self, exc: BaseException, *, data: dict[str, Any] | None = None) -> str:
        """Queue an ``error`` event: the exception type, message and stack in ``data["@error"]``."""
        with self._lock:
            self._check_open()
            event_id = self.publisher.submit_exception(exc, data=data, **self._identity())
            self._activity()
            return event_id

    # -- delivery --------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> None:
        """Send everything queued now; wait at most ``timeout`` seconds.

        Raises :class:`TransportError` when events remain undelivered at the
        deadline, or when the gateway refused some (those are dropped).
        """
        self.publisher.flush(None if timeout is None else round(timeout * 1000))

    def close(self, timeout: float | None = None) -> None:
        """Stop the heartbeats; flush (waiting at most ``timeout``, default ``close_timeout``
        seconds) and, when this client made its publisher, close it. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._heartbeats = False
        self.publisher.remove_ticker(self._ticker)
        timeout_ms = round((self.close_timeout if timeout is None else timeout) * 1000)
        if self._owns_publisher:
            self.publisher.close(timeout_ms)
        else:
            self.publisher.flush(timeout_ms)

    # -- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self.publisher.closed:
            raise ClientError("the client is closed")

    def _identity(self) -> dict[str, Any]:
        if self._session_id is None and self._user_id is None:
            raise ClientError(
                "no identity: call set_user_identity(id, name) or start_session() first"
            )
        return {
            "user_id": self._user_id,
            "user_name": self._user_name,
            "session_id": self._session_id,
        }

    def _activity(self) -> None:
        if not self._heartbeats and self.heartbeat_interval is not None:
            self._heartbeats = True
        self._schedule_heartbeat()

    def _schedule_heartbeat(self) -> None:
        if self._heartbeats and self.heartbeat_interval is not None:
            self._heartbeat_at = time.monotonic() + self.heartbeat_interval
            self.publisher.wake(self._ticker, self._heartbeat_at)

    def _tick(self, now: float) -> float:
        """The publisher's thread: a heartbeat when one is due; when the next is due.

        It never waits: not for this client's lock (a caller may hold it while it waits
        for room in the queue, which only this thread makes), nor for room itself (a
        full queue means activity: the heartbeat is tried again a moment later)."""
        if not self._lock.acquire(blocking=False):
            return now + 0.05
        try:
            if not self._heartbeats or self._closed:
                return math.inf
            if now >= self._heartbeat_at:
                try:
                    event = self.publisher.event("heartbeat", **self._identity())
                    if not self.publisher.try_put(event, soon=True):
                        return now + 0.05
                except ClientError:
                    self._heartbeats = False
                    return math.inf
                self._heartbeat_at = now + (self.heartbeat_interval or math.inf)
            return self._heartbeat_at
        finally:
            self._lock.release()
