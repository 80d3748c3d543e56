"""The Python client against fake transports: events, sessions, heartbeats, batching, retries."""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.error
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest

from pipeline.client import (
    ClientError,
    HttpTransport,
    KafkaTransport,
    SessionClient,
    TransportError,
)
from pipeline.core.timefmt import parse_timestamp_ms

HEX32 = re.compile(r"[0-9a-f]{32}")


class FakeTransport:
    """Records each batch; ``failures`` are raised first, one per send."""

    def __init__(self, failures: Sequence[TransportError] = ()) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.failures = list(failures)
        self.closed = False
        self.lock = threading.Lock()

    def send(self, events: Sequence[dict[str, Any]]) -> None:
        with self.lock:
            if self.failures:
                raise self.failures.pop(0)
            self.batches.append([dict(e) for e in events])

    def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for batch in self.batches for e in batch]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


def client(transport: FakeTransport, **options: Any) -> SessionClient:
    options.setdefault("heartbeat_interval", None)
    options.setdefault("flush_interval", 60.0)
    return SessionClient(transport, **options)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# -- events and sessions -------------------------------------------------------------


def test_manual_session_events_carry_identity_and_session_id() -> None:
    transport = FakeTransport()
    with client(transport) as c:
        c.set_user_identity("alice@example.com", "Alice")
        session_id = c.start_session()
        assert HEX32.fullmatch(session_id) and c.session_id == session_id
        c.submit_event("usage", source="checkout", value=2, data={"plan": "pro"})
        c.submit_event("log", source="cart", message="added")
        c.heartbeat()
        c.end_session()
        assert c.session_id is None
    events = transport.events
    assert [e["type"] for e in events] == ["session", "usage", "log", "heartbeat", "sessionend"]
    for event in events:
        assert event["session_id"] == session_id
        assert (event["user_id"], event["user_name"]) == ("alice@example.com", "Alice")
        assert HEX32.fullmatch(event["id"])
        assert event["timestamp"].endswith("Z") and event["sent_at"].endswith("Z")
        assert "project" not in event  # the gateway or the Kafka transport stamps it
    assert len({e["id"] for e in events}) == 5
    assert events[1]["source"] == "checkout" and events[1]["value"] == 2
    assert events[1]["data"] == {"plan": "pro"}
    assert transport.closed


def test_without_start_session_events_carry_only_the_user() -> None:
    transport = FakeTransport()
    with client(transport) as c:
        c.set_user_identity("bob")
        c.submit_event("usage", source="home")
        c.end_session()
    assert [e.get("session_id") for e in transport.events] == [None, None]
    assert [e["type"] for e in transport.events] == ["usage", "sessionend"]
    assert all("user_name" not in e for e in transport.events)


def test_start_session_twice_ends_the_first() -> None:
    transport = FakeTransport()
    with client(transport) as c:
        c.set_user_identity("a")
        first = c.start_session()
        second = c.start_session()
    assert first != second
    assert [(e["type"], e["session_id"]) for e in transport.events] == [
        ("session", first),
        ("sessionend", first),
        ("session", second),
    ]


def test_session_without_user_is_allowed_but_no_identity_at_all_is_not() -> None:
    transport = FakeTransport()
    with client(transport) as c:
        with pytest.raises(ClientError, match="set_user_identity"):
            c.submit_event("usage")
        c.start_session()
        c.submit_event("usage")
    assert all("user_id" not in e for e in transport.events)


def test_bad_arguments_are_value_errors() -> None:
    with client(FakeTransport()) as c:
        c.set_user_identity("a")
        for call in (
            lambda: c.submit_event(""),
            lambda: c.submit_event("x" * 101),
            lambda: c.submit_event("usage", value="3"),  # type: ignore[arg-type]
            lambda: c.submit_event("usage", value=True),
            lambda: c.set_user_identity(""),
        ):
            with pytest.raises(ValueError):
                call()


def test_submit_exception_carries_type_message_stack_and_cause() -> None:
    transport = FakeTransport()

    def charge() -> None:
        try:
            {}["price"]
        except KeyError as exc:
            raise ValueError("price is not a number") from exc

    with client(transport) as c:
        c.set_user_identity("a")
        try:
            charge()
        except ValueError as exc:
            c.submit_exception(exc, data={"order": 7})
    (event,) = transport.events
    assert event["type"] == "error"
    assert (event["source"], event["message"]) == ("ValueError", "price is not a number")
    error = event["data"]["@error"]
    assert event["data"]["order"] == 7
    assert error["type"] == "ValueError"
    assert error["stack_trace"][0]["name"] == "charge"
    assert error["stack_trace"][0]["file_name"].endswith("test_client_session.py")
    assert error["inner"]["type"] == "KeyError"


def test_custom_exception_type_is_qualified() -> None:
    class PaymentError(Exception):
        pass

    transport = FakeTransport()
    with client(transport) as c:
        c.set_user_identity("a")
        c.submit_exception(PaymentError("declined"))
    source = transport.events[0]["source"]
    assert source.startswith(__name__.rpartition(".")[2]) or source.startswith(__name__)
    assert source.endswith(".PaymentError")


# -- background delivery ---------------------------------------------------------------


def test_batches_go_out_when_full_and_after_the_flush_interval() -> None:
    transport = FakeTransport()
    # a flush interval long enough that a busy machine cannot flush a part-filled batch
    # while the seven events are submitted; the seventh goes out when it expires
    c = client(transport, batch_size=3, flush_interval=1.0)
    c.set_user_identity("a")
    for n in range(7):
        c.submit_event("usage", value=n)
    wait_for(lambda: len(transport.events) == 7)
    assert [len(b) for b in transport.batches][:2] == [3, 3]
    assert [e["value"] for e in transport.events] == list(range(7))
    c.close()


def test_automatic_heartbeats_while_idle_stopped_by_the_end() -> None:
    transport = FakeTransport()
    c = client(transport, heartbeat_interval=0.15, flush_interval=0.01)
    c.set_user_identity("a")
    session_id = c.start_session()
    wait_for(lambda: transport.types().count("heartbeat") >= 2)
    c.end_session()
    wait_for(lambda: "sessionend" in transport.types())
    count = len(transport.events)
    time.sleep(0.4)
    assert len(transport.events) == count
    beats = [e for e in transport.events if e["type"] == "heartbeat"]
    assert all(b["session_id"] == session_id for b in beats)
    c.close()


def test_activity_postpones_the_heartbeat() -> None:
    transport = FakeTransport()
    c = client(transport, heartbeat_interval=0.6, flush_interval=0.01)
    c.set_user_identity("a")
    c.start_session()
    for _ in range(8):
        time.sleep(0.1)
        c.submit_event("usage")
    assert "heartbeat" not in transport.types()
    wait_for(lambda: "heartbeat" in transport.types())
    c.close()


def test_heartbeats_also_follow_the_first_event_of_an_automatic_session() -> None:
    transport = FakeTransport()
    c = client(transport, heartbeat_interval=0.1, flush_interval=0.01)
    c.set_user_identity("a")
    time.sleep(0.25)
    assert transport.events == []  # nothing before any activity
    c.submit_event("usage")
    wait_for(lambda: "heartbeat" in transport.types())
    assert all("session_id" not in e for e in transport.events)
    c.close()


def test_retriable_failures_are_retried_in_order() -> None:
    transport = FakeTransport([TransportError("down"), TransportError("still down")])
    c = client(transport, flush_interval=0.0, max_retry_delay=0.05)
    c.set_user_identity("a")
    for n in range(3):
        c.submit_event("usage", value=n)
    wait_for(lambda: len(transport.events) == 3)
    assert [e["value"] for e in transport.events] == [0, 1, 2]
    assert c.last_error is None
    c.close()


def test_refused_events_are_dropped_and_flush_says_so() -> None:
    transport = FakeTransport([TransportError("400 invalid_event", retriable=False)])
    c = client(transport)
    c.set_user_identity("a")
    c.submit_event("usage")
    with pytest.raises(TransportError, match="invalid_event"):
        c.flush()
    assert c.dropped == 1
    c.submit_event("usage")
    c.flush()
    assert len(transport.events) == 1
    c.close()


def test_413_halves_the_batch_and_retries() -> None:
    transport = FakeTransport([TransportError("413", retriable=False, status=413)])
    c = client(transport, batch_size=8)
    c.set_user_identity("a")
    for n in range(8):
        c.submit_event("usage", value=n)
    c.flush()
    assert [len(b) for b in transport.batches] == [4, 4]
    assert c.dropped == 0
    c.close()


def test_flush_gives_up_at_the_deadline_and_keeps_the_events() -> None:
    transport = FakeTransport([TransportError("down")] * 1000)
    c = client(transport, max_retry_delay=0.05)
    c.set_user_identity("a")
    c.submit_event("usage")
    with pytest.raises(TransportError, match="1 events not delivered"):
        c.flush(timeout=0.3)
    transport.failures.clear()
    c.flush()
    assert len(transport.events) == 1
    c.close()


def test_queue_overflow_drops_the_oldest() -> None:
    transport = FakeTransport()
    c = client(transport, max_queue=3, batch_size=100)
    c.set_user_identity("a")
    for n in range(5):
        c.submit_event("usage", value=n)
    c.flush()
    assert [e["value"] for e in transport.events] == [2, 3, 4]
    assert c.dropped == 2
    c.close()


def test_closed_client_refuses_and_close_is_idempotent() -> None:
    transport = FakeTransport()
    c = client(transport)
    c.set_user_identity("a")
    c.close()
    c.close()
    with pytest.raises(ClientError, match="closed"):
        c.submit_event("usage")


def test_exit_with_an_exception_does_not_hide_it_behind_a_flush_error() -> None:
    transport = FakeTransport([TransportError("down")] * 1000)
    c = client(transport, max_retry_delay=0.01, close_timeout=0.2)
    c.set_user_identity("a")
    c.submit_event("usage")
    with pytest.raises(KeyError), c:
        raise KeyError("app bug")


# -- transports ---------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *args: object) -> None:
        pass


def test_http_transport_posts_spec_events_with_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def urlopen(request: Any, timeout: float) -> FakeResponse:
        seen.append(request)
        return FakeResponse(b'{"accepted": 1}')

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    HttpTransport("http://gw:8080/", "k-1234567890").send([{"type": "usage"}])
    (request,) = seen
    assert request.full_url == "http://gw:8080/v1/events"
    assert request.get_header("Authorization") == "Bearer k-1234567890"
    assert orjson.loads(request.data) == [{"type": "usage"}]


@pytest.mark.parametrize(
    ("status", "retriable"),
    [(429, True), (503, True), (500, True), (400, False), (401, False), (413, False)],
)
def test_http_transport_errors(
    monkeypatch: pytest.MonkeyPatch, status: int, retriable: bool
) -> None:
    def urlopen(request: Any, timeout: float) -> FakeResponse:
        raise urllib.error.HTTPError(
            request.full_url,
            status,
            "refused",
            {},  # type: ignore[arg-type]
            io.BytesIO(b'{"error": "code", "message": "because"}'),
        )

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    with pytest.raises(TransportError) as caught:
        HttpTransport("http://gw", "k").send([{}])
    assert caught.value.retriable is retriable
    assert caught.value.status == status
    assert "code: because" in str(caught.value)


def test_http_transport_network_error_is_retriable(monkeypatch: pytest.MonkeyPatch) -> None:
    def urlopen(request: Any, timeout: float) -> FakeResponse:
        raise urllib.error.URLError("connection refused")

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    with pytest.raises(TransportError) as caught:
        HttpTransport("http://gw", "k").send([{}])
    assert caught.value.retriable and "connection refused" in str(caught.value)


def test_http_transport_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        HttpTransport("gw:8080", "k")
    with pytest.raises(ValueError):
        HttpTransport("http://gw", "")


class FakeFuture:
    def get(self, timeout: float) -> None:
        return None


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int]] = []
        self.closed = False

    def send(self, topic: str, *, value: bytes, key: bytes, timestamp_ms: int) -> FakeFuture:
        self.sent.append((topic, key, value, timestamp_ms))
        return FakeFuture()

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        self.closed = True


def test_kafka_transport_keys_by_session_then_user_and_stamps_the_project() -> None:
    producer = FakeProducer()
    transport = KafkaTransport("b:9092", topic="ev", project="shop", producer=producer)
    before = time.time_ns() // 1_000_000
    transport.send(
        [
            {"type": "usage", "user_id": "u", "session_id": "s" * 32},
            {"type": "usage", "user_id": "u"},
        ]
    )
    transport.close()
    (t1, k1, v1, ts1), (_, k2, _, _) = producer.sent
    assert (t1, k1, k2) == ("ev", b"s" * 32, b"u")
    assert orjson.loads(v1)["project"] == "shop"
    assert ts1 >= before
    assert producer.closed


def test_kafka_transport_stamps_records_with_the_send_time_not_sent_at() -> None:
    """The record timestamp is the event's arrival time for the worker (SPEC section 3):
    the producing side's clock at the send, never the client's ``sent_at``."""
    producer = FakeProducer()
    transport = KafkaTransport("b:9092", topic="ev", producer=producer)
    sent_at = "2026-11-27T10:00:00.040Z"
    before = time.time_ns() // 1_000_000
    transport.send([
        {"type": "session", "user_id": "u", "timestamp": "2026-11-27T10:00:00.030Z", "sent_at": sent_at},
        {"type": "usage", "user_id": "u", "timestamp": "2026-11-27T10:00:00.035Z", "sent_at": sent_at},
    ])
    after = time.time_ns() // 1_000_000
    stamps = [ts for *_, ts in producer.sent]
    assert all(before <= ts <= after for ts in stamps), stamps
    assert parse_timestamp_ms(sent_at) not in stamps
    # the event's sent_at is the same send time, so the skew correction adds nothing
    sent = [parse_timestamp_ms(orjson.loads(value)["sent_at"]) for _, _, value, _ in producer.sent]
    assert sent == stamps
