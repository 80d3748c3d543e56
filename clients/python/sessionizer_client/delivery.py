"""The queue of a :class:`~sessionizer_client.Publisher` and its sending thread.

Events wait in one bounded queue (``max_queue``, the batch in flight included) and go
out in batches, in order, one send at a time: from the background thread when a batch
is full or ``flush_interval_ms`` passed, or from the caller's thread in :meth:`flush`.
A failed send puts its batch back at the head (the same events, the same ids) and
is retried with backoff; a refused one is dropped and counted. The thread also runs
"tickers" (the one-user client's heartbeats) when they fall due.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Self

from sessionizer_client.closing import ClosesOnExit
from sessionizer_client.exceptions import ClientError, QueueFullError, TransportError
from sessionizer_client.timefmt import format_ms, now_ms
from sessionizer_client.transports import Transport

log = logging.getLogger("sessionizer_client.publisher")

Overflow = Literal["block", "drop_oldest"]
#: Called by the background thread with the monotonic time; returns when to call it next.
Ticker = Callable[[float], float]


class Delivery(ClosesOnExit):
    """The queue, the batches, the retries and the sending thread; thread-safe."""

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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)


    async def aflush(self, timeout_ms: int | None = 10_000) -> None:
        """:meth:`flush` in a worker thread."""
        await asyncio.to_thread(self.flush, timeout_ms)

    async def aclose(self, timeout_ms: int | None = None) -> None:
        """:meth:`close` in a worker thread."""
        await asyncio.to_thread(self.close, timeout_ms)

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
