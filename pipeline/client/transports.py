"""How the client's events leave the process: to the gateway over HTTP, or to Kafka.

A transport is anything with ``send(events)`` (raises :class:`TransportError`)
and ``close()``. Both here send SPEC events (SPEC section 2), one batch per call.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from pipeline.client.exceptions import TransportError
from pipeline.core.timefmt import TimestampError, parse_timestamp_ms


class Transport(Protocol):
    def send(self, events: Sequence[dict[str, Any]]) -> None:
        """Deliver the events, or raise :class:`TransportError`."""

    def close(self) -> None:
        """Release connections; ``send`` is not called after this."""


def routing_key(event: dict[str, Any]) -> bytes:
    """The record key that routes an event to its session's partition."""
    key = event.get("session_id") or event.get("user_id") or ""
    return str(key).encode()


class HttpTransport:
    """``POST <server_url>/v1/events`` with ``Authorization: Bearer <api_key>``.

    2xx is delivered. 429, 503, other 5xx and network errors are retriable;
    413 says "send fewer events at once"; other 4xx are not retriable (the
    events are refused and retrying would not change that).
    """

    def __init__(self, server_url: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        if not server_url.startswith(("http://", "https://")):
            raise ValueError(f"server_url must start with http:// or https://, got {server_url!r}")
        if not api_key:
            raise ValueError("api_key is required")
        self.url = server_url.rstrip("/") + "/v1/events"
        self._api_key = api_key
        self.timeout_s = timeout_s

    def send(self, events: Sequence[dict[str, Any]]) -> None:
        request = urllib.request.Request(
            self.url,
            data=orjson.dumps(list(events)),
            method="POST",
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "sessionizer-python",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            status = exc.code
            retriable = status in (408, 429) or status >= 500
            raise TransportError(
                f"the gateway at {self.url} answered {status}: {detail}",
                retriable=retriable,
                status=status,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransportError(f"cannot reach the gateway at {self.url}: {reason}") from None

    def close(self) -> None:
        pass


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = orjson.loads(exc.read())
    except (orjson.JSONDecodeError, OSError, ValueError):
        return str(exc.reason)
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('error')}: {body['message']}"
    return str(exc.reason)


def _record_time(event: dict[str, Any], now_ms: int) -> int:
    """An event's record time: its ``sent_at``, read off the same clock at the same moment,
    so the pipeline's skew correction (timestamp + arrival - sent_at) adds nothing, where
    a time taken at the send would add the client's own delay (connecting, serializing)
    to one batch and not to the next; ``now_ms`` when it has none."""
    sent = event.get("sent_at")
    if sent is None:
        return now_ms
    try:
        return parse_timestamp_ms(sent)
    except TimestampError:
        return now_ms


class KafkaTransport:
    """Produces to the events topic with kafka-python, one record per event.

    Key = session id, else user id; record timestamp = the batch's ``sent_at``; every
    event is stamped with ``project``. The producer connects on the first send.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "events",
        project: str = "default",
        timeout_s: float = 10.0,
        producer: Any = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.project = project
        self.timeout_s = timeout_s
        self._producer = producer

    def _connect(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    enable_idempotence=False,
                    linger_ms=5,
                    max_block_ms=int(self.timeout_s * 1000),
                    request_timeout_ms=int(self.timeout_s * 1000),
                    client_id="sessionizer-python",
                )
            except KafkaError as exc:
                raise TransportError(
                    f"cannot reach the Kafka broker at {self.bootstrap}: {exc}"
                ) from None
        return self._producer

    def send(self, events: Sequence[dict[str, Any]]) -> None:
        from kafka.errors import KafkaError

        producer = self._connect()
        now_ms = time.time_ns() // 1_000_000
        try:
            futures = [
                producer.send(
                    self.topic,
                    value=orjson.dumps({**event, "project": event.get("project") or self.project}),
                    key=routing_key(event),
                    timestamp_ms=_record_time(event, now_ms),
                )
                for event in events
            ]
            producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=self.timeout_s)
        except KafkaError as exc:
            raise TransportError(
                f"the Kafka broker at {self.bootstrap} did not take the events: {exc}"
            ) from None

    def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.close(timeout=self.timeout_s)
