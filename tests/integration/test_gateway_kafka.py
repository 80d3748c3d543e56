"""The gateway and the Python client against a real broker: what lands on the events topic."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web

from pipeline.client import SessionClient
from pipeline.gateway.app import create_admin_app, create_app
from pipeline.gateway.publisher import KafkaPublisher
from pipeline.gateway.settings import GatewaySettings

KEY = "Kq7vM2pXr9LwB4nZ"
AUTH = {"Authorization": f"Bearer {KEY}"}
SESSION = "66e634246cc3414faed6531eb988749a"


def exceptionless_batch(session_id: str = SESSION) -> list[dict[str, Any]]:
    """What @exceptionless/node 3.2.1 posts: start, usage, log, error (environment trimmed)."""
    user = {"identity": "alice@example.com", "name": "Alice"}
    env = {"o_s_name": "Linux", "runtime_version": "v20.20.2"}
    ref = {"@user": user, "@ref:session": session_id, "@environment": env}
    return [
        {
            "date": "2026-11-27T05:44:19.331Z",
            "type": "session",
            "data": {"@user": user, "@environment": env},
            "tags": [],
            "reference_id": session_id,
        },
        {"date": "2026-11-27T05:44:19.342Z", "type": "usage", "source": "checkout", "data": ref},
        {
            "date": "2026-11-27T05:44:19.346Z",
            "type": "log",
            "source": "cart",
            "message": "added 2 items",
            "data": {**ref, "@level": "Info"},
        },
        {
            "date": "2026-11-27T05:44:19.347Z",
            "type": "error",
            "data": {**ref, "@error": {"type": "TypeError", "message": "price is not a number"}},
            "reference_id": "3009f8c3d6",
        },
    ]


# -- an in-process gateway with a real Kafka publisher, on its own thread ---------------


class ThreadedGateway:
    """The aiohttp app and a :class:`KafkaPublisher`, served on 127.0.0.1 from a thread."""

    def __init__(self, bootstrap: str, topic: str, settings: GatewaySettings) -> None:
        self.publisher = KafkaPublisher(bootstrap, topic, timeout_s=settings.publish_timeout)
        self.settings = settings
        self.url = ""
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.publisher.start()
        app = create_app(
            {KEY: "shop"}, self.publisher, settings=self.settings, ready=self.publisher.ready
        )
        runner = web.AppRunner(app)
        admin = web.AppRunner(create_admin_app(app))
        await runner.setup()
        await admin.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await web.TCPSite(admin, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        host, port = admin.addresses[0][:2]
        self.admin_url = f"http://{host}:{port}"
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await admin.cleanup()
            await runner.cleanup()
            await self.publisher.stop()


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def call(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Reply:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return Reply(response.status, orjson.loads(raw) if raw else {}, dict(response.headers))
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return Reply(exc.code, orjson.loads(raw) if raw else {}, dict(exc.headers))


# -- reading the topic -------------------------------------------------------------------


@dataclass
class Out:
    key: bytes
    value: dict[str, Any]
    timestamp_ms: int
    partition: int


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 15.0) -> list[Out]:
    """Every record of the topic (at least ``expected``, waiting up to ``timeout``), in
    partition then offset order; waits a moment longer to catch any extra record."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if settle_until is None and len(records) >= expected:
                settle_until = time.monotonic() + 1.0
        records.sort(key=lambda r: (r.partition, r.offset))
        return [Out(r.key, orjson.loads(r.value), r.timestamp, r.partition) for r in records]
    finally:
        consumer.close()


@pytest.fixture
def events_topic(topic_factory: Any) -> str:
    return str(topic_factory(partitions=4, stem="events"))


@pytest.fixture
def gateway(broker: Any, events_topic: str) -> Iterator[ThreadedGateway]:
    settings = GatewaySettings(max_body_bytes=64 * 1024, publish_timeout=2.0)
    with ThreadedGateway(broker.bootstrap, events_topic, settings) as running:
        yield running


# -- the gateway -------------------------------------------------------------------------


def test_exceptionless_session_lands_on_one_partition_keyed_by_session(
    broker: Any, events_topic: str, gateway: ThreadedGateway
) -> None:
    before_ms = time.time_ns() // 1_000_000
    reply = call("POST", f"{gateway.url}/api/v2/events", orjson.dumps(exceptionless_batch()), AUTH)
    assert reply.status == 202 and reply.body == {"accepted": 4, "rejected": []}
    for close in ("false", "true", "true"):  # beat, end, and the client's repeat on exit
        reply = call(
            "GET",
            f"{gateway.url}/api/v2/events/session/heartbeat?id={SESSION}&close={close}",
            headers=AUTH,
        )
        assert reply.status == 200
    after_ms = time.time_ns() // 1_000_000

    records = read_topic(broker.bootstrap, events_topic, expected=6)
    assert [r.value["type"] for r in records] == [
        "session",
        "usage",
        "log",
        "error",
        "heartbeat",
        "heartbeat",
    ]
    assert {r.key for r in records} == {SESSION.encode()}
    assert len({r.partition for r in records}) == 1
    assert all(before_ms <= r.timestamp_ms <= after_ms for r in records)
    for record in records:
        event = record.value
        assert event["project"] == "shop"
        assert event["session_id"] == SESSION
        assert (event["user_id"], event["user_name"]) == ("alice@example.com", "Alice")
    assert records[3].value["data"]["@error"]["type"] == "TypeError"
    assert records[3].value["timestamp"] == "2026-11-27T05:44:19.347Z"
    assert "close" not in records[4].value and records[5].value["close"] is True


def test_refusals_publish_nothing(broker: Any, events_topic: str, gateway: ThreadedGateway) -> None:
    batch = orjson.dumps(exceptionless_batch())
    wrong_key = call(
        "POST", f"{gateway.url}/api/v2/events", batch, {"Authorization": "Bearer nope-nope-nope"}
    )
    assert (wrong_key.status, wrong_key.body["error"]) == (401, "unauthorized")
    oversize = orjson.dumps(exceptionless_batch() * 80)
    assert len(oversize) > 64 * 1024
    too_big = call("POST", f"{gateway.url}/api/v2/events", oversize, AUTH)
    assert (too_big.status, too_big.body["error"]) == (413, "body_too_large")
    malformed = call("POST", f"{gateway.url}/api/v2/events", batch[:-7], AUTH)
    assert (malformed.status, malformed.body["error"]) == (400, "invalid_json")
    spec_malformed = call("POST", f"{gateway.url}/v1/events", b"{not json", AUTH)
    assert spec_malformed.status == 400
    # a marker proves the topic is read: it is the only record there
    marker = {"type": "usage", "timestamp": 1_795_758_000_000, "user_id": "marker"}
    assert call("POST", f"{gateway.url}/v1/events", orjson.dumps(marker), AUTH).status == 202
    records = read_topic(broker.bootstrap, events_topic, expected=1)
    assert [r.value["user_id"] for r in records] == ["marker"]


def test_broker_paused_is_503_then_recovers(
    broker: Any, events_topic: str, gateway: ThreadedGateway
) -> None:
    event = {"type": "usage", "timestamp": 1_795_758_000_000, "user_id": "u1", "id": "only-once"}
    assert call("GET", f"{gateway.admin_url}/readyz").status == 200
    broker.pause()
    try:
        started = time.monotonic()
        reply = call("POST", f"{gateway.url}/v1/events", orjson.dumps(event), AUTH)
        assert (reply.status, reply.body.get("error")) == (503, "broker_unavailable"), (
            reply, broker.paused)
        assert time.monotonic() - started < 10
        assert call("GET", f"{gateway.admin_url}/readyz").status == 503
        assert call("GET", f"{gateway.admin_url}/healthz").status == 200
    finally:
        broker.resume()
    deadline = time.monotonic() + 20
    while True:
        reply = call("POST", f"{gateway.url}/v1/events", orjson.dumps(event), AUTH)
        if reply.status == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert reply.status == 202
    assert call("GET", f"{gateway.admin_url}/readyz").status == 200
    # the 503 attempt may or may not have reached the log; the retry carries the same id,
    # so the worker de-duplicates either way
    assert {r.value["id"] for r in read_topic(broker.bootstrap, events_topic, 1)} == {"only-once"}


# -- the Python client ------------------------------------------------------------------------


def python_session(client: SessionClient) -> str:
    with client:
        client.set_user_identity("bob@example.com", "Bob")
        session_id = client.start_session()
        client.submit_event("usage", source="search")
        client.submit_event("log", source="search", message="3 results")
        try:
            raise ValueError("bad query")
        except ValueError as exc:
            client.submit_exception(exc)
        client.heartbeat()
        client.end_session()
    return session_id


def check_python_session(records: list[Out], session_id: str, project: str) -> None:
    assert [r.value["type"] for r in records] == [
        "session",
        "usage",
        "log",
        "error",
        "heartbeat",
        "sessionend",
    ]
    assert {r.key for r in records} == {session_id.encode()}
    for record in records:
        event = record.value
        assert (event["session_id"], event["project"]) == (session_id, project)
        assert (event["user_id"], event["user_name"]) == ("bob@example.com", "Bob")
        assert event["sent_at"]
    assert records[3].value["data"]["@error"]["type"] == "ValueError"


def test_python_client_over_http(broker: Any, events_topic: str, gateway: ThreadedGateway) -> None:
    client = SessionClient.for_gateway(gateway.url, KEY, heartbeat_interval=None)
    session_id = python_session(client)
    check_python_session(read_topic(broker.bootstrap, events_topic, 6), session_id, "shop")


def test_python_client_over_kafka(broker: Any, events_topic: str) -> None:
    client = SessionClient.for_kafka(
        broker.bootstrap, topic=events_topic, project="shop", heartbeat_interval=None
    )
    session_id = python_session(client)
    check_python_session(read_topic(broker.bootstrap, events_topic, 6), session_id, "shop")


def test_python_client_automatic_heartbeats_reach_the_topic(
    broker: Any, events_topic: str, gateway: ThreadedGateway
) -> None:
    with SessionClient.for_gateway(gateway.url, KEY, heartbeat_interval=0.3) as client:
        client.set_user_identity("carol")
        session_id = client.start_session()
        time.sleep(1.0)
        client.end_session()
    records = read_topic(broker.bootstrap, events_topic, 4)
    types = [r.value["type"] for r in records]
    assert types[0] == "session" and types[-1] == "sessionend"
    assert types.count("heartbeat") >= 2
    assert {r.value["session_id"] for r in records} == {session_id}
