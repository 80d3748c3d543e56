"""Hostile bodies and fields at the gateway: 4xx with the reason, never 500; a bad event
of an Exceptionless batch is refused alone and counted by reason."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.gateway.app import create_app
from pipeline.gateway.mapping import (
    EventError,
    assign_ids,
    check_size,
    from_exceptionless,
    from_spec,
)
from pipeline.gateway.metrics import GatewayMetrics
from pipeline.gateway.publisher import Record
from pipeline.gateway.settings import GatewaySettings

KEY = "Rv8cN3qLw7ZpT5xB"
AUTH = {"Authorization": f"Bearer {KEY}"}
SESSION = "66e634246cc3414faed6531eb988749a"
RECEIVED_MS = 1_795_758_300_000


class Sink:
    def __init__(self) -> None:
        self.records: list[Record] = []

    async def __call__(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.records]


Scenario = Callable[[TestClient, Sink, GatewayMetrics], Awaitable[None]]


def serve(scenario: Scenario) -> None:
    sink = Sink()
    metrics = GatewayMetrics()

    async def main() -> None:
        app = create_app(
            {KEY: "shop"},
            sink,
            settings=GatewaySettings(),
            clock_ms=lambda: RECEIVED_MS,
            on_rejected=metrics.count_rejected,
        )
        async with TestClient(TestServer(app)) as client:
            await scenario(client, sink, metrics)

    asyncio.run(main())


def rejected_count(metrics: GatewayMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "sessionizer_gateway_events_rejected_total", {"reason": reason}
    )
    return 0.0 if value is None else value


def good(user: str = "alice@example.com", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "usage",
        "date": "2026-11-27T05:44:19.342Z",
        "source": "checkout",
        "data": {"@user": {"identity": user, "name": "Alice"}, "@ref:session": SESSION},
    }
    event.update(fields)
    return event


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def raw_event(data: bytes) -> bytes:
    return b'{"type":"usage","data":{"@user":{"identity":"deep"},"x":' + data + b"}}"


# -- Exceptionless batches: bad events alone -------------------------------------------


BAD_EVENTS: list[tuple[str, bytes]] = [
    ("date 1e20", orjson.dumps(good(date=1e20))),
    ("date year 1", orjson.dumps(good(date="0001-01-01T00:00:00+01:00"))),
    ("date before 1970", orjson.dumps(good(date=-5))),
    ("date an object", orjson.dumps(good(date={"y": 2026}))),
    ("300 deep", raw_event(deep_json(300))),
    ("65 deep", raw_event(deep_json(63))),
    ("identity 100 KB", orjson.dumps(good(user="u" * 100_000))),
    ("user name 257", orjson.dumps(good(data={"@user": {"identity": "a", "name": "n" * 257}}))),
    ("type a number", orjson.dumps(good(type=5))),
    ("source a list", orjson.dumps(good(source=["x"]))),
    ("value a string", orjson.dumps(good(value="12"))),
    ("data a string", orjson.dumps(good(data="text"))),
    ("@user a list", orjson.dumps(good(data={"@user": ["a"]}))),
    ("session id an object", orjson.dumps(good(type="session", reference_id={"a": 1}))),
    ("null", b"null"),
    ("a number", b"12"),
    ("an array", b"[1,2]"),
]


@pytest.mark.parametrize(("case", "bad"), BAD_EVENTS, ids=[c for c, _ in BAD_EVENTS])
def test_a_bad_event_is_refused_alone_and_counted(case: str, bad: bytes) -> None:
    async def scenario(client: TestClient, sink: Sink, metrics: GatewayMetrics) -> None:
        body = b"[" + b",".join([orjson.dumps(good("a")), bad, orjson.dumps(good("b"))]) + b"]"
        response = await client.post("/api/v2/events", data=body, headers=AUTH)
        assert response.status == 202, await response.text()
        result = orjson.loads(await response.read())
        assert result["accepted"] == 2
        [refusal] = result["rejected"]
        assert (refusal["index"], refusal["error"]) == (1, "invalid_event")
        assert refusal["detail"]
        assert [e["user_id"] for e in sink.events] == ["a", "b"]
        assert rejected_count(metrics, "invalid_event") == 1

    serve(scenario)


def test_each_reason_has_its_own_count() -> None:
    async def scenario(client: TestClient, sink: Sink, metrics: GatewayMetrics) -> None:
        batch = [
            good(date=1e20),
            {"type": "log", "message": "no identity"},
            good(data={"@user": {"identity": "big"}, "blob": "x" * 70_000}),
            good("fine"),
        ]
        response = await client.post("/api/v2/events", data=orjson.dumps(batch), headers=AUTH)
        assert response.status == 202
        assert orjson.loads(await response.read())["accepted"] == 1
        assert rejected_count(metrics, "invalid_event") == 1
        assert rejected_count(metrics, "no_identity") == 1
        assert rejected_count(metrics, "too_large") == 1
        body, _ = metrics.exposition()
        assert b'sessionizer_gateway_events_rejected_total{reason="no_identity"} 1.0' in body

    serve(scenario)


# -- whole bodies: 4xx with the reason ------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v2/events", "/v1/events"])
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "invalid_body"),
        (b"   ", 400, "invalid_body"),
        (b"12", 400, "invalid_body"),
        (b'"text"', 400, "invalid_body"),
        (b"null", 400, "invalid_body"),
        (b"\xff\xfe[]", 400, "invalid_json"),
        (b'[{"type":"usage","data":{"@user":{"identity":"\xc3\x28"}}}]', 400, "invalid_json"),
        (bytes(range(32)) * 100, 400, "invalid_json"),
        (deep_json(2000), 400, "invalid_json"),
        (b"\x01" * 2_000_000, 413, "body_too_large"),
    ],
)
def test_malformed_bodies_are_4xx_with_the_reason(
    path: str, body: bytes, status: int, code: str
) -> None:
    async def scenario(client: TestClient, sink: Sink, metrics: GatewayMetrics) -> None:
        response = await client.post(path, data=body, headers=AUTH)
        assert response.status == status
        answer = orjson.loads(await response.read())
        assert answer["error"] == code
        assert answer["message"]
        assert sink.records == []

    serve(scenario)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "usage", "timestamp": 10**19, "user_id": "u"},
        {"type": "usage", "timestamp": "0001-01-01T00:00:00+01:00", "user_id": "u"},
        {"type": "usage", "timestamp": 1, "sent_at": -1, "user_id": "u"},
        {"type": "usage", "timestamp": 1, "user_id": "u", "user_name": "n" * 257},
        {"type": "usage", "timestamp": 1, "user_id": "u" * 257},
        {"type": "usage", "timestamp": 1, "user_id": "u", "data": orjson.Fragment(deep_json(300))},
        {"type": "usage", "timestamp": 1, "user_id": "u", "x": orjson.Fragment(deep_json(64))},
    ],
)
def test_spec_events_out_of_limits_are_400(event: dict[str, Any]) -> None:
    async def scenario(client: TestClient, sink: Sink, metrics: GatewayMetrics) -> None:
        response = await client.post("/v1/events", data=orjson.dumps([event]), headers=AUTH)
        assert response.status == 400, await response.text()
        answer = orjson.loads(await response.read())
        assert answer["error"] == "invalid_event"
        assert answer["errors"][0]["detail"]
        assert sink.records == []
        assert rejected_count(metrics, "invalid_event") == 1

    serve(scenario)


# -- the mapping never fails otherwise -------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["type", "date", "data", "@user", "identity", "name", "@ref:session", "reference_id",
             "source", "message", "value", "tags", "@error", "timestamp", "user_id", "session_id",
             "sent_at", "close", "project", "id", "user_name"]
        ),
        children,
        max_size=8,
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_JSON)
def test_mapping_any_json_raises_nothing_but_event_error(raw: Any) -> None:
    for convert in (
        lambda r: from_exceptionless(r, project="shop", received_ms=RECEIVED_MS),
        lambda r: from_spec(r, project="shop"),
    ):
        try:
            event = convert(raw)
            assign_ids([event], [raw], project="shop")
            check_size(event, 65_536)
        except EventError as exc:
            assert exc.code and exc.detail
