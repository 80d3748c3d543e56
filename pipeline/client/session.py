"""``SessionClient``: sessions from a Python app, over the gateway or straight to Kafka.

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

Events are queued and sent in batches by a background thread (every
``flush_interval`` seconds, or as soon as ``batch_size`` are queued); a failed
send is retried with backoff, keeping the events (up to ``max_queue``, the
oldest dropped beyond). Leaving the ``with`` block (or :meth:`close`, or the
interpreter exiting) flushes and stops the thread; it does not end the session
(call :meth:`end_session`, or the worker closes it by inactivity).

**Sessions.** :meth:`start_session` opens a manual session: a new 32-hex
session id on every event until :meth:`end_session`. Without it, events carry
only the user identity and the worker groups them into an automatic session.

**Heartbeats.** While a session is active (after :meth:`start_session`, or
after the first event with an identity), a ``heartbeat`` is sent whenever
``heartbeat_interval`` seconds (default 30) pass without any event, so an idle
but present user's session stays open. :meth:`end_session` stops them.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from pipeline.client.errors import error_info, type_name
from pipeline.client.exceptions import ClientError, TransportError
from pipeline.client.transports import HttpTransport, KafkaTransport, Transport
from pipeline.core.timefmt import format_ms

log = logging.getLogger(__name__)

MAX_TYPE_CHARS = 100
MAX_USER_ID_CHARS = 256


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SessionClient:
    """Queue, batch and send SPEC events for one user at a time; thread-safe."""

    def __init__(
        self,
        transport: Transport,
        *,
        heartbeat_interval: float | None = 30.0,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        max_retry_delay: float = 30.0,
        close_timeout: float = 10.0,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0, or None for no automatic heartbeats")
        if batch_size < 1 or max_queue < 1 or flush_interval < 0 or max_retry_delay <= 0:
            raise ValueError("batch_size and max_queue must be >= 1, flush_interval >= 0")
        self.transport = transport
        self.heartbeat_interval = heartbeat_interval
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_retry_delay = max_retry_delay
        self.close_timeout = close_timeout
        self._clock_ms = clock_ms

        self._wake = threading.Condition(threading.RLock())
        self._send_lock = threading.Lock()
        self._queue: deque[dict[str, Any]] = deque()
        self._batch_limit = batch_size  # shrinks after a 413
        self._flush_at = math.inf  # monotonic time the queue is due to go out
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._heartbeat_at = math.inf
        self._heartbeats = False
        self._closed = False
        self._user_id: str | None = None
        self._user_name: str | None = None
        self._session_id: str | None = None
        #: Events dropped: queue overflow, or refused by the gateway.
        self.dropped = 0
        self.last_error: TransportError | None = None

        self._thread = threading.Thread(target=self._run, name="sessionizer-client", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # -- construction shortcuts ------------------------------------------------

    @classmethod
    def for_gateway(cls, server_url: str, api_key: str, **options: Any) -> SessionClient:
        """Send to the gateway's ``POST /v1/events`` (the API key names the project)."""
        timeout_s = options.pop("timeout_s", 10.0)
        return cls(HttpTransport(server_url, api_key, timeout_s=timeout_s), **options)

    @classmethod
    def for_kafka(
        cls, bootstrap: str, *, topic: str = "events", project: str = "default", **options: Any
    ) -> SessionClient:
        """Produce straight to the events topic with kafka-python."""
        timeout_s = options.pop("timeout_s", 10.0)
        transport = KafkaTransport(bootstrap, topic=topic, project=project, timeout_s=timeout_s)
        return cls(transport, **options)

    # -- state -----------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The manual session's id, or None outside one."""
        return self._session_id

    @property
    def user_id(self) -> str | None:
        return self._user_id

    def set_user_identity(self, identity: str | None, name: str | None = None) -> None:
        """The user of the events from now on (an id or e-mail); None clears it."""
        if identity is not None and (
            not isinstance(identity, str) or not identity or len(identity) > MAX_USER_ID_CHARS
        ):
            raise ValueError(f"identity must be a string of 1-{MAX_USER_ID_CHARS} characters")
        if name is not None and not isinstance(name, str):
            raise ValueError("name must be a string")
        with self._wake:
            self._user_id = identity
            self._user_name = name or None

    # -- events ----------------------------------------------------------------

    def start_session(self) -> str:
        """Open a manual session (ending the current one first); returns its id."""
        with self._wake:
            self._check_open()
            if self._session_id is not None:
                self.end_session()
            self._session_id = uuid.uuid4().hex
            self._enqueue(self._event("session"))
            self._heartbeats = self.heartbeat_interval is not None
            self._schedule_heartbeat()
            return self._session_id

    def end_session(self) -> None:
        """End the current session (manual, else the user's automatic one) and stop heartbeats."""
        with self._wake:
            self._check_open()
            self._enqueue(self._event("sessionend"), soon=True)
            self._session_id = None
            self._heartbeats = False
            self._heartbeat_at = math.inf

    def heartbeat(self) -> None:
        """Send a heartbeat now: "the user is still here"."""
        with self._wake:
            self._check_open()
            self._enqueue(self._event("heartbeat"), soon=True)
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
        if not isinstance(type, str) or not type or len(type) > MAX_TYPE_CHARS:
            raise ValueError(f"type must be a string of 1-{MAX_TYPE_CHARS} characters")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("value must be a number")
        if data is not None and not isinstance(data, dict):
            raise ValueError("data must be a dict")
        with self._wake:
            self._check_open()
            event = self._event(type)
            if source is not None:
                event["source"] = source
            if message is not None:
                event["message"] = message
            if value is not None:
                event["value"] = value
            if data:
                event["data"] = dict(data)
            self._enqueue(event)
            if not self._heartbeats and self.heartbeat_interval is not None:
                self._heartbeats = True
            self._schedule_heartbeat()
            return str(event["id"])

    def submit_exception(self, exc: BaseException, *, data: dict[str, Any] | None = None) -> str:
        """Queue an ``error`` event: the exception type, message and stack in ``data["@error"]``."""
        payload = dict(data or {})
        payload["@error"] = error_info(exc)
        return self.submit_event("error", source=type_name(exc), message=str(exc), data=payload)

    # -- delivery --------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> None:
        """Send everything queued now; wait at most ``timeout`` seconds.

        Raises :class:`TransportError` when events remain undelivered at the
        deadline, or when the gateway refused some (those are dropped).
        """
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        refused: TransportError | None = None
        while True:
            with self._wake:
                if not self._queue:
                    break
            try:
                self._deliver_one()
            except TransportError as exc:
                if not exc.retriable:
                    refused = exc
                    continue
                delay = min(max(self._retry_delay, 0.05), deadline - time.monotonic())
                if delay <= 0:
                    with self._wake:
                        left = len(self._queue)
                    raise TransportError(f"{left} events not delivered: {exc}") from None
                time.sleep(delay)
        if refused is not None:
            raise refused

    def close(self, timeout: float | None = None) -> None:
        """Flush (waiting at most ``timeout``, default ``close_timeout`` seconds), stop the
        background thread and the transport. Idempotent."""
        if timeout is None:
            timeout = self.close_timeout
        with self._wake:
            if self._closed:
                return
            self._heartbeats = False
            self._heartbeat_at = math.inf
        atexit.unregister(self._close_at_exit)
        try:
            self.flush(timeout)
        finally:
            with self._wake:
                self._closed = True
                self._wake.notify_all()
            self._thread.join(timeout=5.0)
            self.transport.close()
            if self._queue:
                log.warning("closed with %d events not delivered", len(self._queue))

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except TransportError as error:
            log.warning("could not flush at interpreter exit: %s", error)

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except TransportError as error:  # do not hide the exception already on its way
            log.warning("could not flush on exit: %s", error)

    # -- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError("the client is closed")

    def _event(self, type: str) -> dict[str, Any]:
        if self._session_id is None and self._user_id is None:
            raise ClientError(
                "no identity: call set_user_identity(id, name) or start_session() first"
            )
        event: dict[str, Any] = {
            "type": type,
            "timestamp": format_ms(self._clock_ms()),
            "id": uuid.uuid4().hex,
        }
        if self._user_id is not None:
            event["user_id"] = self._user_id
        if self._user_name is not None:
            event["user_name"] = self._user_name
        if self._session_id is not None:
            event["session_id"] = self._session_id
        return event

    def _enqueue(self, event: dict[str, Any], *, soon: bool = False) -> None:
        self._queue.append(event)
        while len(self._queue) > self.max_queue:
            self._queue.popleft()
            self.dropped += 1
        now = time.monotonic()
        if soon or len(self._queue) >= self._batch_limit:
            self._flush_at = now
        elif self._flush_at == math.inf:
            self._flush_at = now + self.flush_interval
        self._wake.notify_all()

    def _schedule_heartbeat(self) -> None:
        if self._heartbeats and self.heartbeat_interval is not None:
            self._heartbeat_at = time.monotonic() + self.heartbeat_interval
            self._wake.notify_all()

    def _deliver_one(self) -> None:
        """Send one batch from the head of the queue; on failure put it back or drop it."""
        with self._send_lock:
            with self._wake:
                count = min(self._batch_limit, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
                taken_at = self._flush_at
            if not batch:
                return
            sent_at = format_ms(self._clock_ms())
            for event in batch:
                event["sent_at"] = sent_at
            try:
                self.transport.send(batch)
            except TransportError as exc:
                self._failed(batch, exc)
                raise
            with self._wake:
                self._retry_delay = 0.0
                self._retry_at = 0.0
                self.last_error = None
                # what came in meanwhile: a full batch (or one asked for soon) goes
                # now; a part-filled one waits for more, as any new batch does
                now, queued = time.monotonic(), len(self._queue)
                if not queued:
                    self._flush_at = math.inf
                elif queued >= self._batch_limit:
                    self._flush_at = now
                elif self._flush_at == taken_at:  # nobody asked for sooner meanwhile
                    self._flush_at = now + self.flush_interval

    def _failed(self, batch: list[dict[str, Any]], exc: TransportError) -> None:
        with self._wake:
            self.last_error = exc
            if exc.status == 413 and len(batch) > 1:
                self._batch_limit = max(1, len(batch) // 2)
                self._queue.extendleft(reversed(batch))
                exc.retriable = True
                self._retry_delay = 0.0
                return
            if not exc.retriable:
                self.dropped += len(batch)
                log.error("%d events refused and dropped: %s", len(batch), exc)
                return
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.max_queue:
                self._queue.pop()
                self.dropped += 1
            self._retry_delay = min(self.max_retry_delay, max(0.5, self._retry_delay * 2))
            self._retry_at = time.monotonic() + self._retry_delay
            log.warning("send failed, retrying in %.1f s: %s", self._retry_delay, exc)

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._closed:
                    return
                now = time.monotonic()
                if self._heartbeats and now >= self._heartbeat_at:
                    try:
                        self._enqueue(self._event("heartbeat"), soon=True)
                    except ClientError:
                        self._heartbeats = False
                    self._schedule_heartbeat()
                due = bool(self._queue) and now >= max(self._flush_at, self._retry_at)
                if not due:
                    wake_at = min(
                        self._heartbeat_at if self._heartbeats else math.inf,
                        max(self._flush_at, self._retry_at) if self._queue else math.inf,
                    )
                    wait_s = None if wake_at == math.inf else max(0.0, wake_at - now)
                    self._wake.wait(wait_s)
                    continue
            try:
                self._deliver_one()
            except TransportError:
                pass  # logged and scheduled for retry (or dropped) by _failed
            except Exception:
                log.exception("unexpected error while sending events")
                with self._wake:
                    self._retry_at = time.monotonic() + 1.0
