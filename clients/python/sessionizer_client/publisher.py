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

import asyncio
import atexit
import logging
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from sessionizer_client.errors import error_info, type_name
from sessionizer_client.exceptions import ClientError, QueueFullError, TransportError
from sessionizer_client.kafka_security import KafkaSecurity
from sessionizer_client.timefmt import format_ms, now_ms
from sessionizer_client.transports import HttpTransport, KafkaTransport, Transport

if TYPE_CHECKING:
    from sessionizer_client.session import SessionClient

log = logging.getLogger(__name__)

MAX_TYPE_CHARS = 100
MAX_USER_ID_CHARS = 256
MAX_USER_NAME_CHARS = 256
SESSION_ID = re.compile(r"[A-Za-z0-9-]{8,100}")

Overflow = Literal["block", "drop_oldest"]
#: Called by the background thread with the monotonic time; returns when to call it next.
Ticker = Callable[[float], float]


def new_session_id() -> str:
    """A fresh manual session id: 32 hex digits."""
    return uuid.uuid4().hex


class Publisher:
    """Queue, batch and send SPEC events for any number of users; thread- and asyncio-safe."""

    def __init__(
        self,
        transport: Transport,
        *,
        batch_size: int = 100,
        flush_interval_ms: int = 1000,
        max_queue: int = 10_000,
        overflow: Overflow = "block",
        block_timeout_ms: int = 10_000,
        max_retry_delay_ms: int = 30_000,
        close_timeout_ms: int = 10_000,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        if batch_size < 1 or max_queue < 1:
            raise ValueError("batch_size and max_queue must be >= 1")
        if flush_interval_ms < 0 or block_timeout_ms < 0 or close_timeout_ms < 0:
            raise ValueError("flush_interval_ms, block_timeout_ms and close_timeout_ms must be >= 0")
        if max_retry_delay_ms <= 0:
            raise ValueError("max_retry_delay_ms must be > 0")
        if overflow not in ("block", "drop_oldest"):
            raise ValueError('overflow must be "block" or "drop_oldest"')
        self.transport = transport
        self.batch_size = batch_size
        self.flush_interval_ms = flush_interval_ms
        self.max_queue = max_queue
        self.overflow = overflow
        self.block_timeout_ms = block_timeout_ms
        self.max_retry_delay_ms = max_retry_delay_ms
        self.close_timeout_ms = close_timeout_ms
        self._clock_ms = clock_ms

        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)  # the sender: something is due
        self._room = threading.Condition(self._lock)  # the callers: the queue has room
        self._send_lock = threading.Lock()  # one send at a time, in queue order
        self._queue: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._batch_limit = batch_size  # shrinks after a 413
        self._flush_at = math.inf  # monotonic time the queue is due to go out
        self._retry_at = 0.0
        self._retry_delay_s = 0.0
        self._tickers: dict[int, tuple[Ticker, float]] = {}
        self._closed = False
        #: Events dropped: queue overflow (``drop_oldest``), or refused by the gateway.
        self.dropped = 0
        #: Events handed to the transport successfully.
        self.delivered = 0
        self.last_error: TransportError | None = None

        self._thread = threading.Thread(target=self._run, name="sessionizer-client", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # -- construction shortcuts ------------------------------------------------

    @classmethod
    def for_gateway(cls, server_url: str, api_key: str, **options: Any) -> Publisher:
        """Send to the gateway's ``POST /v1/events`` (the API key names the project)."""
        timeout_s = options.pop("timeout_s", 10.0)
        return cls(HttpTransport(server_url, api_key, timeout_s=timeout_s), **options)

    @classmethod
    def for_kafka(
        cls,
        bootstrap: str,
        *,
        topic: str = "events",
        project: str = "default",
        security: KafkaSecurity | None = None,
        **options: Any,
    ) -> Publisher:
        """Produce straight to the events topic (``pip install 'sessionizer-client[kafka]'``);
        ``security``: a :class:`~sessionizer_client.KafkaSecurity`."""
        timeout_s = options.pop("timeout_s", 10.0)
        transport = KafkaTransport(
            bootstrap, topic=topic, project=project, timeout_s=timeout_s, security=security
        )
        return cls(transport, **options)

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
        self._put(event)
        return str(event["id"])

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
        event = self.exception_event(exc, user_id, session_id, user_name, data)
        self._put(event)
        return str(event["id"])

    def heartbeat(
        self,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        user_name: str | None = None,
        close: bool = False,
    ) -> str:
        """"The user is still here" (sent soon); ``close=True`` ends the session instead."""
        event = self.event("heartbeat", user_id, session_id, user_name)
        if close:
            event["close"] = True
        self._put(event, soon=True)
        return str(event["id"])

    def end_session(
        self, *, user_id: str | None = None, session_id: str | None = None, user_name: str | None = None
    ) -> str:
        """End a session (a ``sessionend``, sent soon): the manual one when ``session_id``
        is given, else the user's automatic one."""
        event = self.event("sessionend", user_id, session_id, user_name)
        self._put(event, soon=True)
        return str(event["id"])

    # -- the same, for asyncio: waiting for room without blocking the loop -------

    async def astart_session(self, **identity: Any) -> str:
        session_id: str = identity.pop("session_id", None) or new_session_id()
        await self._aput(self.event("session", session_id=session_id, **identity))
        return session_id

    async def asubmit_event(self, type: str, **fields: Any) -> str:
        event = self.event(type, **fields)
        await self._aput(event)
        return str(event["id"])

    async def asubmit_exception(self, exc: BaseException, **identity: Any) -> str:
        event = self.exception_event(exc, **identity)
        await self._aput(event)
        return str(event["id"])

    async def aheartbeat(self, *, close: bool = False, **identity: Any) -> str:
        event = self.event("heartbeat", **identity)
        if close:
            event["close"] = True
        await self._aput(event, soon=True)
        return str(event["id"])

    async def aend_session(self, **identity: Any) -> str:
        event = self.event("sessionend", **identity)
        await self._aput(event, soon=True)
        return str(event["id"])

    async def aflush(self, timeout_ms: int | None = 10_000) -> None:
        """:meth:`flush` in a worker thread."""
        await asyncio.to_thread(self.flush, timeout_ms)

    async def aclose(self, timeout_ms: int | None = None) -> None:
        """:meth:`close` in a worker thread."""
        await asyncio.to_thread(self.close, timeout_ms)

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
        if user_id is not None and (
            not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_CHARS
        ):
            raise ValueError(f"user_id must be a string of 1-{MAX_USER_ID_CHARS} characters")
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

    # -- delivery --------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Events waiting or in flight."""
        with self._lock:
            return len(self._queue) + self._in_flight

    def flush(self, timeout_ms: int | None = 10_000) -> None:
        """Send everything queued now, in this thread; wait at most ``timeout_ms``.

        Raises :class:`TransportError` when events remain undelivered at the
        deadline (they stay queued), or when the gateway refused some (those are dropped).
        """
        deadline = math.inf if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        refused: TransportError | None = None
        while True:
            if time.monotonic() >= deadline and self.queued:  # callers outpace the sends
                raise TransportError(f"{self.queued} events not delivered in {timeout_ms} ms")
            try:
                if not self._deliver_one():
                    break
            except TransportError as exc:
                if not exc.retriable:
                    refused = exc
                    continue
                delay = min(max(self._retry_delay_s, 0.05), deadline - time.monotonic())
                if delay <= 0:
                    raise TransportError(f"{self.queued} events not delivered: {exc}") from None
                time.sleep(delay)
        if refused is not None:
            raise refused

    def close(self, timeout_ms: int | None = None) -> None:
        """Flush (waiting at most ``timeout_ms``, default ``close_timeout_ms``), stop the
        background thread and the transport. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._tickers.clear()
        atexit.unregister(self._close_at_exit)
        try:
            self.flush(self.close_timeout_ms if timeout_ms is None else timeout_ms)
        finally:
            with self._lock:
                self._closed = True
                self._wake.notify_all()
                self._room.notify_all()
            self._thread.join(timeout=5.0)
            self.transport.close()
            if self.queued:
                log.warning("closed with %d events not delivered", self.queued)

    @property
    def closed(self) -> bool:
        return self._closed

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except TransportError as error:
            log.warning("could not flush at interpreter exit: %s", error)

    def __enter__(self) -> Publisher:
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

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)

    # -- for the one-user convenience -----------------------------------------

    def user(self, user_id: str, user_name: str | None = None, **options: Any) -> SessionClient:
        """A :class:`SessionClient` for one user over this publisher (its heartbeats
        included); closing it leaves the publisher open."""
        from sessionizer_client.session import SessionClient

        client = SessionClient(publisher=self, **options)
        client.set_user_identity(user_id, user_name)
        return client

    def add_ticker(self, ticker: Ticker) -> int:
        """Have the background thread call ``ticker(monotonic_now)`` when it is due (first
        at once); it returns when next (``math.inf``: not until :meth:`wake`)."""
        with self._lock:
            handle = id(ticker)
            self._tickers[handle] = (ticker, 0.0)
            self._wake.notify_all()
            return handle

    def remove_ticker(self, handle: int) -> None:
        with self._lock:
            self._tickers.pop(handle, None)

    def wake(self, handle: int, at: float) -> None:
        """Call a ticker at monotonic time ``at`` (or earlier than it planned)."""
        with self._lock:
            entry = self._tickers.get(handle)
            if entry is not None:
                self._tickers[handle] = (entry[0], at)
                self._wake.notify_all()

    # -- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError("the client is closed")

    def try_put(self, event: dict[str, Any], *, soon: bool = False) -> bool:
        """Queue an event made by :meth:`event` without ever waiting: False (and not
        queued) when the queue is full and ``overflow`` is ``block``."""
        with self._lock:
            self._check_open()
            if self.overflow == "block" and self._full():
                return False
            self._append(event, soon)
            return True

    def _full(self) -> bool:
        return len(self._queue) + self._in_flight >= self.max_queue

    def _put(self, event: dict[str, Any], *, soon: bool = False) -> None:
        with self._lock:
            self._check_open()
            if self.overflow == "block" and self._full():
                deadline = time.monotonic() + self.block_timeout_ms / 1000
                while self._full() and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._queue_full()
                    self._room.wait(left)
                self._check_open()
            self._append(event, soon)

    async def _aput(self, event: dict[str, Any], *, soon: bool = False) -> None:
        deadline = time.monotonic() + self.block_timeout_ms / 1000
        pause = 0.001
        while True:
            with self._lock:
                self._check_open()
                if self.overflow != "block" or not self._full():
                    self._append(event, soon)
                    return
            if time.monotonic() >= deadline:
                raise self._queue_full()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _queue_full(self) -> QueueFullError:
        return QueueFullError(
            f"the queue held {self.max_queue} events for {self.block_timeout_ms} ms: the "
            f"transport is slower than the callers or down ({self.last_error or 'no error yet'}); "
            "raise max_queue or block_timeout_ms, or check the gateway / broker"
        )

    def _append(self, event: dict[str, Any], soon: bool) -> None:
        self._queue.append(event)
        while len(self._queue) + self._in_flight > self.max_queue and self._queue:
            self._queue.popleft()
            self.dropped += 1
        now = time.monotonic()
        if soon or len(self._queue) >= self._batch_limit:
            self._flush_at = now
        elif self._flush_at == math.inf:
            self._flush_at = now + self.flush_interval_ms / 1000
        self._wake.notify_all()

    def _deliver_one(self) -> bool:
        """Send one batch from the head of the queue (False: nothing was queued); on
        failure put it back (or drop it, when refused) and raise."""
        with self._send_lock:
            with self._lock:
                count = min(self._batch_limit, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_flight = count
                taken_at = self._flush_at
            if not batch:
                return False
            sent_at = format_ms(self._clock_ms())
            for event in batch:
                event["sent_at"] = sent_at
            try:
                self.transport.send(batch)
            except TransportError as exc:
                self._failed(batch, exc)
                raise
            except BaseException:
                with self._lock:
                    self._queue.extendleft(reversed(batch))
                    self._in_flight = 0
                raise
            with self._lock:
                self._in_flight = 0
                self.delivered += count
                self._retry_delay_s = 0.0
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
                    self._flush_at = now + self.flush_interval_ms / 1000
                self._room.notify_all()
            return True

    def _failed(self, batch: list[dict[str, Any]], exc: TransportError) -> None:
        with self._lock:
            self._in_flight = 0
            self.last_error = exc
            if exc.status == 413 and len(batch) > 1:
                self._batch_limit = max(1, len(batch) // 2)
                self._queue.extendleft(reversed(batch))
                exc.retriable = True
                self._retry_delay_s = 0.0
                return
            if not exc.retriable:
                self.dropped += len(batch)
                self._room.notify_all()
                log.error("%d events refused and dropped: %s", len(batch), exc)
                return
            self._queue.extendleft(reversed(batch))  # the same events, the same ids
            while len(self._queue) > self.max_queue:
                self._queue.pop()
                self.dropped += 1
            self._retry_delay_s = min(
                self.max_retry_delay_ms / 1000, max(0.5, self._retry_delay_s * 2)
            )
            self._retry_at = time.monotonic() + self._retry_delay_s
            log.warning("send failed, retrying in %.1f s: %s", self._retry_delay_s, exc)

    def _run_tickers(self, now: float) -> None:
        with self._lock:
            due = [(h, t) for h, (t, at) in self._tickers.items() if at <= now]
        for handle, ticker in due:
            try:
                at = ticker(now)
            except Exception:
                log.exception("a scheduled task of the client failed")
                at = now + 1.0
            with self._lock:
                entry = self._tickers.get(handle)
                if entry is not None and entry[1] <= now:  # not re-woken meanwhile
                    self._tickers[handle] = (ticker, at)

    def _run(self) -> None:
        while True:
            self._run_tickers(time.monotonic())
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                due = bool(self._queue) and now >= max(self._flush_at, self._retry_at)
                if not due:
                    wake_at = min(
                        min((at for _, at in self._tickers.values()), default=math.inf),
                        max(self._flush_at, self._retry_at) if self._queue else math.inf,
                    )
                    if wake_at > now:
                        self._wake.wait(None if wake_at == math.inf else wake_at - now)
                    continue
            try:
                self._deliver_one()
            except TransportError:
                pass  # logged and scheduled for retry (or dropped) by _failed
            except Exception:
                log.exception("unexpected error while sending events")
                with self._lock:
                    self._retry_at = time.monotonic() + 1.0
