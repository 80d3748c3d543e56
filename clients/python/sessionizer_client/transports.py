"""How the client's events leave the process: to the gateway over HTTP, or to Kafka.

A transport is anything with ``send(events)`` (raises :class:`TransportError`)
and ``close()``. Both here send SPEC events (SPEC section 2), one batch per call.
``send`` is called by one thread at a time.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Self, cast

from sessionizer_client.exceptions import ClientError, TransportError
from sessionizer_client.kafka_security import KafkaSecurity
from sessionizer_client.timefmt import format_ms, now_ms


class Transport(Protocol):
    def send(self, events: Sequence[dict[str, Any]]) -> None:
        """Deliver the events, or raise :class:`TransportError`."""

    def close(self) -> None:
        """Release connections; ``send`` is not called after this."""


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def routing_key(event: Mapping[str, Any]) -> bytes:
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
            data=dumps(list(events)),
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
        body = json.loads(exc.read())
    except (OSError, ValueError):
        return str(exc.reason)
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('error')}: {body['message']}"
    return str(exc.reason)


class KafkaTransport:
    """Produces to the events topic with kafka-python (the ``kafka`` extra), one record
    per event.

    Key = session id, else user id; every event is stamped with ``project``; the
    record timestamp is the time each record is handed to the producer (the
    event's arrival time for the worker, SPEC section 3), not the time the batch
    was taken from the queue, and the event's ``sent_at`` is set to that same time. ``security`` takes the
    worker's SASL/TLS settings (:class:`KafkaSecurity`, or :meth:`from_env` reads
    them from the ``SESSIONIZER_*`` variables). The producer connects on the first
    send.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = "events",
        project: str = "default",
        timeout_s: float = 10.0,
        security: KafkaSecurity | None = None,
        producer: Any = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.project = project
        self.timeout_s = timeout_s
        self.security = security or KafkaSecurity()
        self._security_options = self.security.options()  # checked now, not at the first send
        self._producer = producer

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **options: Any
    ) -> KafkaTransport:
        """The worker's variables: ``SESSIONIZER_KAFKA_BOOTSTRAP`` (default
        ``localhost:9092``), ``SESSIONIZER_EVENTS_TOPIC`` (``events``) and the
        ``SESSIONIZER_KAFKA_*`` security variables; ``options`` override."""
        env = os.environ if environ is None else environ
        options.setdefault("topic", env.get("SESSIONIZER_EVENTS_TOPIC", "events"))
        options.setdefault("security", KafkaSecurity.from_env(env))
        return cls(env.get("SESSIONIZER_KAFKA_BOOTSTRAP", "localhost:9092"), **options)

    def producer_options(self) -> dict[str, Any]:
        """The keyword arguments the ``KafkaProducer`` is made with."""
        return {
            "bootstrap_servers": self.bootstrap,
            "acks": "all",
            "enable_idempotence": False,
            "linger_ms": 5,
            "max_block_ms": int(self.timeout_s * 1000),
            "request_timeout_ms": int(self.timeout_s * 1000),
            "client_id": "sessionizer-python",
            **self._security_options,
        }

    def _connect(self) -> Any:
        if self._producer is None:
            try:
                from kafka import KafkaProducer
                from kafka.errors import KafkaError
            except ImportError:
                raise ClientError(
                    "the Kafka transport needs kafka-python: pip install 'sessionizer-client[kafka]'"
                ) from None
            try:
                self._producer = KafkaProducer(**self.producer_options())
            except KafkaError as exc:
                raise TransportError(
                    f"cannot reach the Kafka broker at {self.bootstrap}: {exc}"
                ) from None
        return self._producer

    def send(self, events: Sequence[dict[str, Any]]) -> None:
        producer = self._connect()
        from kafka.errors import KafkaError

        try:
            futures = []
            for event in events:
                # the send time is the record's time and the event's sent_at both, so the
                # worker's clock-skew correction (timestamp + arrival - sent_at) adds none
                # of this process's own delays (connecting, a full buffer) to one batch
                # and not to the next
                sent_ms = now_ms()
                value = dumps({
                    **event,
                    "project": event.get("project") or self.project,
                    "sent_at": format_ms(sent_ms),
                })  # fmt: skip
                futures.append(
                    producer.send(
                        self.topic, value=value, key=routing_key(event), timestamp_ms=sent_ms
                    )
                )
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


class TransportShortcuts:
    """``for_gateway`` / ``for_kafka``: make the transport, then ``cls(transport, **options)``
    (``timeout_s`` among the options goes to the transport)."""

    @classmethod
    def for_gateway(cls, server_url: str, api_key: str, **options: Any) -> Self:
        """Send to the gateway's ``POST /v1/events`` (the API key names the project)."""
        timeout_s = options.pop("timeout_s", 10.0)
        transport = HttpTransport(server_url, api_key, timeout_s=timeout_s)
        return cast(Self, cast(Any, cls)(transport, **options))

    @classmethod
    def for_kafka(
        cls,
        bootstrap: str,
        *,
        topic: str = "events",
        project: str = "default",
        security: KafkaSecurity | None = None,
        **options: Any,
    ) -> Self:
        """Produce straight to the events topic (``pip install 'sessionizer-client[kafka]'``);
        ``security``: a :class:`~sessionizer_client.KafkaSecurity`."""
        timeout_s = options.pop("timeout_s", 10.0)
        transport = KafkaTransport(
            bootstrap, topic=topic, project=project, timeout_s=timeout_s, security=security
        )
        return cast(Self, cast(Any, cls)(transport, **options))
