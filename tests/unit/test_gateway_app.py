"""Every gateway endpoint through aiohttp's test client, with a fake publish function."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.exceptions import ConfigError, PublishError
from pipeline.gateway.app import GATEWAY, create_admin_app, create_app
from pipeline.gateway.metrics import GatewayMetrics
from pipeline.gateway.publisher import Record
from pipeline.gateway.settings import GatewaySettings

KEY = "Kq7vM2pXr9LwB4nZ"
AUTH = {"Authorization": f"Bearer {KEY}"}
SESSION = "66e634246cc3414faed6531eb988749a"
RECEIVED_MS = 1_795_758_300_000
ENVIRONMENT = {"o_s_name": "Linux", "runtime_version": "v20.20.2", "machine_name": "vm"}


def real_batch() -> list[dict[str, Any]]:
    """The batch @exceptionless/node 3.2.1 sent (environment trimmed)."""
    user = {"identity": "alice@example.com", "name": "Alice"}
    return [
        {
            "date": "2026-11-27T05:44:19.331Z",
            "type": "session",
            "data": {"@user": dict(user), "@environment": ENVIRONMENT},
            "tags": [],
            "reference_id": SESSION,
        },
        {
            "date": "2026-11-27T05:44:19.342Z",
            "type": "usage",
            "source": "checkout",
            "data": {"@user": dict(user), "@ref:session": SESSION, "@environment": ENVIRONMENT},
            "tags": [],
        },
        {
            "date": "2026-11-27T05:44:19.346Z",
            "type": "log",
            "source": "cart",
            "message": "added 2 items",
            "data": {
                "@level": "Info",
                "@user": dict(user),
                "@ref:session": SESSION,
                "@environment": ENVIRONMENT,
            },
            "tags": [],
        },
        {
            "date": "2026-11-27T05:44:19.347Z",
            "type": "error",
            "data": {
                "@user": dict(user),
                "@ref:session": SESSION,
                "@error": {
                    "type": "TypeError",
                    "message": "price is not a number",
                    "stack_trace": [
                        {"name": None, "file_name": "file:///app/session.mjs", "line_number": 50}
                    ],
                },
                "@environment": ENVIRONMENT,
            },
            "tags": [],
            "reference_id": "3009f8c3d6",
        },
    ]


class FakePublisher:
    """The I/O edge as a plain async function: records kept, or a broker failure."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.down = False

    async def __call__(self, records: Sequence[Record]) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise PublishError("the broker did not acknowledge the events: timed out")
        self.records.extend(records)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.records]


Scenario = Callable[[TestClient, FakePublisher], Awaitable[None]]


def serve(scenario: Scenario, **options: Any) -> None:
    publisher = FakePublisher()
    options.setdefault("settings", GatewaySettings())
    options.setdefault("clock_ms", lambda: RECEIVED_MS)

    async def main() -> None:
        app = create_app({KEY: "shop", "Ot7hWx3Kp9QmR2vY": "blog"}, publisher, **options)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, publisher)

    asyncio.run(main())


async def body(response: Any) -> dict[str, Any]:
    return orjson.loads(await response.read())


# -- POST /api/v2/events -------------------------------------------------------------


def test_real_client_batch_becomes_spec_events_keyed_by_session() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.post(
            "/api/v2/events", data=orjson.dumps(real_batch()), headers=AUTH
        )
        assert response.status == 202  # the Exceptionless client treats only 202 as sent
        assert response.headers["X-Exceptionless-ConfigVersion"] == "1"
        assert await body(response) == {"accepted": 4, "rejected": []}
        assert {r.key for r in pub.records} == {SESSION.encode()}
        assert {r.timestamp_ms for r in pub.records} == {RECEIVED_MS}
        events = pub.events
        assert [e["type"] for e in events] == ["session", "usage", "log", "error"]
        for event in events:
            assert event["project"] == "shop"
            assert event["session_id"] == SESSION
            assert (event["user_id"], event["user_name"]) == ("alice@example.com", "Alice")
            assert event["id"]
        assert len({e["id"] for e in events}) == 4
        assert events[3]["data"]["@error"]["message"] == "price is not a number"
        assert events[3]["source"] == "TypeError"

    serve(scenario)


def test_a_single_event_object_is_accepted() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.post(
            "/api/v2/events", data=orjson.dumps(real_batch()[1]), headers=AUTH
        )
        assert response.status == 202
        assert [e["type"] for e in pub.events] == ["usage"]

    serve(scenario)


def test_bad_events_in_a_batch_are_listed_and_the_good_ones_published() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        batch: list[Any] = real_batch()
        batch[1]["date"] = "not a date"
        batch.append({"type": "log", "message": "no user, no session"})
        batch.append("just text")
        response = await client.post("/api/v2/events", data=orjson.dumps(batch), headers=AUTH)
        assert response.status == 202
        result = await body(response)
        assert result["accepted"] == 3
        assert [(r["index"], r["error"]) for r in result["rejected"]] == [
            (1, "invalid_event"),
            (4, "no_identity"),
            (5, "invalid_event"),
        ]
        assert [e["type"] for e in pub.events] == ["session", "log", "error"]

    serve(scenario)


def test_an_event_over_the_worker_size_limit_is_rejected() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        batch = real_batch()[:2]
        batch[1]["message"] = "x" * 5000
        response = await client.post("/api/v2/events", data=orjson.dumps(batch), headers=AUTH)
        result = await body(response)
        assert response.status == 202
        assert result["accepted"] == 1
        assert result["rejected"][0]["index"] == 1
        assert result["rejected"][0]["error"] == "too_large"

    serve(scenario, max_event_bytes=4096)


def test_a_retried_batch_gets_the_same_ids() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        for _ in range(2):
            await client.post("/api/v2/events", data=orjson.dumps(real_batch()), headers=AUTH)
        ids = [e["id"] for e in pub.events]
        assert ids[:4] == ids[4:]

    serve(scenario)


# -- refusals: nothing is published ---------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v2/events", "/v1/events"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": f"Basic {KEY}"}]
)
def test_missing_or_unknown_api_key_is_401(path: str, headers: dict[str, str]) -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.post(path, data=orjson.dumps(real_batch()), headers=headers)
        assert response.status == 401
        assert (await body(response))["error"] == "unauthorized"
        assert pub.records == []

    serve(scenario)


def test_api_key_as_access_token_query_parameter() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.post(
            f"/api/v2/events?access_token={KEY}", data=orjson.dumps(real_batch())
        )
        assert response.status == 202

    serve(scenario)


@pytest.mark.parametrize("path", ["/api/v2/events", "/v1/events"])
def test_malformed_json_is_400(path: str) -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        for data, code in [
            (b'[{"type": "usage",', "invalid_json"),
            (b"\xff\xfe", "invalid_json"),
            (b"", "invalid_body"),
            (b'"usage"', "invalid_body"),
        ]:
            response = await client.post(path, data=data, headers=AUTH)
            assert response.status == 400, data
            assert (await body(response))["error"] == code
        assert pub.records == []

    serve(scenario)


@pytest.mark.parametrize("path", ["/api/v2/events", "/v1/events"])
def test_oversize_body_is_413(path: str) -> None:
    limit = 2048
    big = orjson.dumps([{**real_batch()[1], "message": "x" * 4000}])

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.post(path, data=big, headers=AUTH)  # with Content-Length
        assert response.status == 413
        assert (await body(response))["error"] == "body_too_large"
        response = await client.post(path, data=chunks(), headers=AUTH)  # chunked
        assert response.status == 413
        assert (await body(response))["error"] == "body_too_large"
        assert pub.records == []

    serve(scenario, settings=GatewaySettings(max_body_bytes=limit))


@pytest.mark.parametrize("path", ["/api/v2/events", "/v1/events"])
def test_too_many_events_is_413(path: str) -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        events = [
            {
                "type": "usage",
                "timestamp": 1_795_758_259_000,
                "user_id": "u",
                "data": {"@user": {"identity": "u"}},
            }
        ] * 4
        response = await client.post(path, data=orjson.dumps(events), headers=AUTH)
        assert response.status == 413
        assert (await body(response))["error"] == "too_many_events"
        response = await client.post(path, data=orjson.dumps(events[:3]), headers=AUTH)
        assert response.status == 202
        assert len(pub.records) == 3

    serve(scenario, settings=GatewaySettings(max_events_per_batch=3))


def test_rate_limit_counts_events_not_requests() -> None:
    """A key may send ``rate_burst`` events at once: one POST of 5 events takes 5."""
    events = [{"type": "usage", "timestamp": 1, "user_id": f"u{i}"} for i in range(5)]

    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.post("/v1/events", data=orjson.dumps(events), headers=AUTH)
        assert response.status == 202
        response = await client.post("/v1/events", data=orjson.dumps(events[:2]), headers=AUTH)
        assert response.status == 429
        answer = await body(response)
        assert (answer["error"], answer["limit"]) == ("rate_limited", "events_per_key")
        assert "events per second" in answer["message"]
        assert int(response.headers["Retry-After"]) >= 1
        assert len(pub.records) == 5  # nothing of the refused request was published

    serve(scenario, settings=GatewaySettings(rate_limit=0.01, rate_burst=6))


def test_failed_authentications_are_limited_per_client_address() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        bad = {"Authorization": "Bearer guess-Wq3Er5Ty7Ui9Op"}
        for _ in range(3):
            response = await client.post("/v1/events", data=b"[]", headers=bad)
            assert response.status == 401
        for headers in (bad, AUTH):  # even the right key waits until the budget refills
            response = await client.post("/v1/events", data=b"[]", headers=headers)
            assert response.status == 429
            answer = await body(response)
            assert (answer["error"], answer["limit"]) == ("rate_limited", "auth_failures")
            assert int(response.headers["Retry-After"]) >= 1

    serve(scenario, settings=GatewaySettings(auth_failures_per_minute=3))


def test_behind_a_trusted_proxy_the_forwarded_client_is_limited() -> None:
    """One client's failures do not lock out the others that share the proxy."""

    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        bad = {"Authorization": "Bearer guess-Wq3Er5Ty7Ui9Op", "X-Forwarded-For": "203.0.113.5"}
        for _ in range(3):
            assert (await client.post("/v1/events", data=b"[]", headers=bad)).status == 401
        assert (await client.post("/v1/events", data=b"[]", headers=bad)).status == 429
        # a spoofed hop left of the proxy's own entry changes nothing
        spoofed = {**bad, "X-Forwarded-For": "198.51.100.1, 203.0.113.5"}
        assert (await client.post("/v1/events", data=b"[]", headers=spoofed)).status == 429
        other = {**AUTH, "X-Forwarded-For": "203.0.113.9"}
        response = await client.get("/api/v2/projects/config", headers=other)
        assert response.status == 200

    serve(scenario, settings=GatewaySettings(auth_failures_per_minute=3, trusted_proxies="127.0.0.0/8"))


def test_without_trusted_proxies_forwarded_for_is_ignored() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        for n in range(3):
            bad = {"Authorization": "Bearer guess-Wq3Er5Ty7Ui9Op", "X-Forwarded-For": f"203.0.113.{n}"}
            assert (await client.post("/v1/events", data=b"[]", headers=bad)).status == 401
        other = {**AUTH, "X-Forwarded-For": "203.0.113.9"}
        assert (await client.get("/api/v2/projects/config", headers=other)).status == 429

    serve(scenario, settings=GatewaySettings(auth_failures_per_minute=3))


def test_a_bad_trusted_proxy_names_the_variable() -> None:
    from pipeline.gateway.settings import load_gateway_settings

    with pytest.raises(ConfigError, match="SESSIONIZER_GATEWAY_TRUSTED_PROXIES"):
        load_gateway_settings(trusted_proxies="10.0.0.0/8,not-an-ip")


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("short-Tk3", "at least 16"),
        ("demo-key-change-me", "placeholder"),
        ("replace-me-key-0123456789", "placeholder"),
        ("my-test-key-Qw9Er7Ty", "placeholder 'test'"),
        ("aaaaaaaaaaaaaaaaaaaa", "different characters"),
    ],
)
def test_weak_keys_are_refused_without_showing_them(key: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        create_app({key: "shop"}, FakePublisher(), settings=GatewaySettings())
    assert key not in str(caught.value) and "SESSIONIZER_API_KEYS" in str(caught.value)


def test_keys_stay_out_of_repr_and_settings_dumps() -> None:
    from pipeline.config import Settings

    settings = Settings(api_keys=f"{KEY}:shop")
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    assert settings.api_key_map == {KEY: "shop"}
    app = create_app(settings.api_key_map, FakePublisher(), settings=GatewaySettings())
    assert KEY not in repr(app[GATEWAY])


def test_rate_limit_per_key_is_429_with_retry_after() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        statuses = []
        for _ in range(4):
            response = await client.get("/api/v2/projects/config", headers=AUTH)
            statuses.append(response.status)
        assert statuses == [200, 200, 200, 429]
        assert int(response.headers["Retry-After"]) >= 1
        assert (await body(response))["error"] == "rate_limited"
        other = await client.get(
            "/api/v2/projects/config", headers={"Authorization": "Bearer Ot7hWx3Kp9QmR2vY"}
        )
        assert other.status == 200

    serve(scenario, settings=GatewaySettings(rate_limit=0.01, rate_burst=3))


@pytest.mark.parametrize("path", ["/api/v2/events", "/v1/events"])
def test_broker_down_is_503_and_remembers_nothing(path: str) -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        pub.down = True
        events = (
            real_batch()
            if path == "/api/v2/events"
            else [{"type": "heartbeat", "timestamp": 1, "session_id": SESSION, "close": True}]
        )
        response = await client.post(path, data=orjson.dumps(events), headers=AUTH)
        assert response.status == 503
        assert (await body(response))["error"] == "broker_unavailable"
        assert "Retry-After" in response.headers
        response = await client.get(
            "/api/v2/events/session/heartbeat",
            params={"id": SESSION, "close": "true"},
            headers=AUTH,
        )
        assert response.status == 503
        pub.down = False
        # the failed close was not remembered: the retry goes through
        response = await client.get(
            "/api/v2/events/session/heartbeat",
            params={"id": SESSION, "close": "true"},
            headers=AUTH,
        )
        assert response.status == 200
        assert len(pub.records) == 1

    serve(scenario)


# -- heartbeats ---------------------------------------------------------------------


def heartbeat(client: TestClient, id: str, close: str | None = None) -> Any:
    params = {"id": id} if close is None else {"id": id, "close": close}
    return client.get("/api/v2/events/session/heartbeat", params=params, headers=AUTH)


def test_heartbeat_and_close_after_the_batch() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        await client.post("/api/v2/events", data=orjson.dumps(real_batch()), headers=AUTH)
        response = await heartbeat(client, SESSION, "false")
        assert response.status == 200
        response = await heartbeat(client, SESSION, "true")
        assert response.status == 200
        beat, close = pub.events[4:]
        assert beat == {
            "type": "heartbeat",
            "timestamp": "2026-11-27T05:45:00.000Z",
            "project": "shop",
            "session_id": SESSION,
            "user_id": "alice@example.com",
            "user_name": "Alice",
            "id": beat["id"],
        }
        assert close["close"] is True and close["session_id"] == SESSION
        assert pub.records[-1].key == SESSION.encode()
        assert pub.records[-1].timestamp_ms == RECEIVED_MS

    serve(scenario)


def test_heartbeat_before_the_batch_is_keyed_by_the_session_id() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        assert (await heartbeat(client, SESSION, "false")).status == 200
        await client.post("/api/v2/events", data=orjson.dumps(real_batch()), headers=AUTH)
        assert (await heartbeat(client, SESSION, "true")).status == 200
        assert [e["type"] for e in pub.events] == [
            "heartbeat",
            "session",
            "usage",
            "log",
            "error",
            "heartbeat",
        ]
        assert {r.key for r in pub.records} == {SESSION.encode()}
        assert {e["session_id"] for e in pub.events} == {SESSION}

    serve(scenario)


def test_repeated_close_and_later_heartbeats_of_an_ended_session_are_not_published() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        await client.post("/api/v2/events", data=orjson.dumps(real_batch()), headers=AUTH)
        assert (await heartbeat(client, SESSION, "true")).status == 200
        for close in ("true", "false"):  # the exit handler's second close; the timer's beat
            response = await heartbeat(client, SESSION, close)
            assert response.status == 200
            assert (await body(response))["ignored"] == "session_ended"
        assert [e["type"] for e in pub.events][-1] == "heartbeat"
        assert len(pub.records) == 5

    serve(scenario)


def test_concurrent_closes_publish_one() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        responses = await asyncio.gather(*(heartbeat(client, SESSION, "true") for _ in range(5)))
        assert [r.status for r in responses] == [200] * 5
        assert [e.get("close") for e in pub.events] == [True]

    serve(scenario)


def test_identity_heartbeat() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        assert (await heartbeat(client, "alice@example.com")).status == 200
        (event,) = pub.events
        assert event["user_id"] == "alice@example.com"
        assert "session_id" not in event and "close" not in event
        assert pub.records[0].key == b"alice@example.com"

    serve(scenario)


def test_bad_heartbeats_are_400() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.get("/api/v2/events/session/heartbeat", headers=AUTH)
        assert response.status == 400
        assert "id" in (await body(response))["message"]
        assert (await heartbeat(client, SESSION, "perhaps")).status == 400
        response = await client.get("/api/v2/events/session/heartbeat", params={"id": SESSION})
        assert response.status == 401
        assert pub.records == []

    serve(scenario)


# -- config poll ---------------------------------------------------------------------


def test_config_poll() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.get("/api/v2/projects/config", params={"v": "0"}, headers=AUTH)
        assert response.status == 200
        assert await body(response) == {"version": 1, "settings": {}}
        response = await client.get("/api/v2/projects/config", params={"v": "1"}, headers=AUTH)
        assert response.status == 304
        response = await client.get("/api/v2/projects/config")
        assert response.status == 401

    serve(scenario)


# -- POST /v1/events ---------------------------------------------------------------------


def test_spec_events_object_and_array() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        one = {"type": "usage", "timestamp": "2026-11-27T05:44:00Z", "user_id": "u1", "id": "e1"}
        response = await client.post("/v1/events", data=orjson.dumps(one), headers=AUTH)
        assert response.status == 202
        assert await body(response) == {"accepted": 1, "ids": ["e1"]}
        many = [
            {"type": "session", "timestamp": 1_795_758_000_000, "session_id": SESSION},
            {
                "type": "heartbeat",
                "timestamp": 1_795_758_001_000,
                "session_id": SESSION,
                "close": True,
            },
        ]
        response = await client.post("/v1/events", data=orjson.dumps(many), headers=AUTH)
        assert response.status == 202
        assert (await body(response))["accepted"] == 2
        assert [r.key for r in pub.records] == [b"u1", SESSION.encode(), SESSION.encode()]
        assert all(e["project"] == "shop" for e in pub.events)
        assert pub.events[0] == {**one, "project": "shop"}
        # the close is remembered: the Exceptionless-style repeat is not published
        response = await heartbeat(client, SESSION, "true")
        assert (await body(response))["ignored"] == "session_ended"

    serve(scenario)


def test_spec_events_one_bad_event_refuses_the_request() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        events = [
            {"type": "usage", "timestamp": "2026-11-27T05:44:00Z", "user_id": "u1"},
            {"type": "usage", "timestamp": "2026-11-27T05:44:00Z"},
            {"type": "usage", "timestamp": "tomorrow", "user_id": "u1"},
        ]
        response = await client.post("/v1/events", data=orjson.dumps(events), headers=AUTH)
        assert response.status == 400
        result = await body(response)
        assert result["error"] == "invalid_event"
        assert [(e["index"], e["error"]) for e in result["errors"]] == [
            (1, "no_identity"),
            (2, "invalid_event"),
        ]
        assert pub.records == []

    serve(scenario)


def test_spec_events_of_another_project_are_403() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        event = {"type": "usage", "timestamp": 1, "user_id": "u1", "project": "blog"}
        response = await client.post("/v1/events", data=orjson.dumps(event), headers=AUTH)
        assert response.status == 403
        assert (await body(response))["error"] == "forbidden_project"
        assert pub.records == []

    serve(scenario)


def test_spec_event_over_the_size_limit_is_413() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        event = {"type": "usage", "timestamp": 1, "user_id": "u1", "message": "x" * 3000}
        response = await client.post("/v1/events", data=orjson.dumps(event), headers=AUTH)
        assert response.status == 413
        assert (await body(response))["error"] == "event_too_large"
        assert pub.records == []

    serve(scenario, max_event_bytes=1024)


# -- health, readiness, unknown routes ------------------------------------------------------


def test_health_and_readiness_on_the_admin_app_only() -> None:
    state = {"ready": True}

    async def ready() -> bool:
        return state["ready"]

    async def main() -> None:
        app = create_app({KEY: "shop"}, FakePublisher(), settings=GatewaySettings(), ready=ready)
        metrics = GatewayMetrics()
        admin_app = create_admin_app(app)
        metrics.install(app, admin_app)
        async with TestClient(TestServer(app)) as public, TestClient(TestServer(admin_app)) as admin:
            assert (await admin.get("/healthz")).status == 200
            response = await admin.get("/readyz")
            assert response.status == 200 and (await body(response))["status"] == "ready"
            state["ready"] = False
            response = await admin.get("/readyz")
            assert response.status == 503 and (await body(response))["status"] == "not_ready"
            assert (await admin.get("/healthz")).status == 200
            assert (await admin.get("/metrics")).status == 200
            for path in ("/healthz", "/readyz", "/metrics", "/stats"):
                assert (await public.get(path)).status == 404, path
            assert (await admin.get("/api/sessions")).status == 404
            assert (await admin.post("/v1/events", data=b"[]", headers=AUTH)).status == 404

    asyncio.run(main())


def test_unknown_route_and_method_are_json() -> None:
    async def scenario(client: TestClient, pub: FakePublisher) -> None:
        response = await client.get("/api/v2/nothing", headers=AUTH)
        assert response.status == 404
        assert (await body(response))["error"] == "not_found"
        response = await client.get("/api/v2/events", headers=AUTH)
        assert response.status == 405
        assert (await body(response))["error"] == "method_not_allowed"

    serve(scenario)
