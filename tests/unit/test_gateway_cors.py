"""CORS in the gateway: preflights, allowed origins, exposed headers, the default of none."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.exceptions import ConfigError
from pipeline.gateway.app import create_app
from pipeline.gateway.publisher import Record
from pipeline.gateway.settings import GatewaySettings, load_gateway_settings

KEY = "Rv8cN3qLw7ZpT5xB"
APP = "http://app.example.com:3000"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}
EVENT = {"type": "usage", "user_id": "alice", "timestamp": "2026-11-27T05:44:19.331Z"}


def serve(origins: str, scenario: Callable[[TestClient, list[Record]], Awaitable[None]]) -> None:
    records: list[Record] = []

    async def publish(batch: Sequence[Record]) -> None:
        records.extend(batch)

    async def main() -> None:
        settings = GatewaySettings(cors_allowed_origins=origins)
        app = create_app({KEY: "shop"}, publish, settings=settings)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, records)

    asyncio.run(main())


def test_preflight_from_an_allowed_origin() -> None:
    async def scenario(client: TestClient, records: list[Record]) -> None:
        for path in ("/api/v2/events", "/v1/events", "/api/v2/events/session/heartbeat"):
            response = await client.options(path, headers=PREFLIGHT)
            assert response.status == 204, path
            assert response.headers["Access-Control-Allow-Origin"] == APP
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert response.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
            assert int(response.headers["Access-Control-Max-Age"]) > 0
            assert "Access-Control-Allow-Credentials" not in response.headers
        assert records == []

    serve(f"https://other.example.com, {APP}", scenario)


def test_answers_to_an_allowed_origin_expose_what_the_clients_read() -> None:
    async def scenario(client: TestClient, records: list[Record]) -> None:
        auth = {"Origin": APP, "Authorization": f"Bearer {KEY}"}
        response = await client.post("/v1/events", json=[EVENT], headers=auth)
        assert response.status == 202
        assert response.headers["Access-Control-Allow-Origin"] == APP
        exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"x-exceptionless-configversion", "x-ratelimit-remaining", "retry-after"} <= exposed
        config = await client.get("/api/v2/projects/config", headers=auth)
        assert config.headers["X-Exceptionless-ConfigVersion"] == "1"
        assert config.headers["Access-Control-Allow-Origin"] == APP
        # refusals are readable by the page too
        refused = await client.post("/v1/events", json=[EVENT], headers={"Origin": APP})
        assert refused.status == 401
        assert refused.headers["Access-Control-Allow-Origin"] == APP
        assert len(records) == 1

    serve(APP, scenario)


def test_other_origins_get_no_cors_and_their_preflight_is_refused() -> None:
    async def scenario(client: TestClient, records: list[Record]) -> None:
        evil = {**PREFLIGHT, "Origin": "http://evil.example.com"}
        response = await client.options("/v1/events", headers=evil)
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
        assert orjson.loads(await response.read())["error"] == "cors_origin_not_allowed"
        plain = await client.post(
            "/v1/events", json=[EVENT],
            headers={"Origin": "http://evil.example.com", "Authorization": f"Bearer {KEY}"},
        )  # fmt: skip
        assert plain.status == 202 and "Access-Control-Allow-Origin" not in plain.headers

    serve(APP, scenario)


def test_by_default_no_origin_is_allowed() -> None:
    async def scenario(client: TestClient, records: list[Record]) -> None:
        response = await client.options("/v1/events", headers=PREFLIGHT)
        assert response.status == 405  # no CORS: the route has no OPTIONS
        assert "Access-Control-Allow-Origin" not in response.headers
        ok = await client.post(
            "/v1/events", json=[EVENT], headers={"Origin": APP, "Authorization": f"Bearer {KEY}"}
        )
        assert ok.status == 202 and "Access-Control-Allow-Origin" not in ok.headers

    assert GatewaySettings().cors_origins == frozenset()
    serve("", scenario)


def test_any_origin() -> None:
    async def scenario(client: TestClient, records: list[Record]) -> None:
        response = await client.options("/api/v2/events", headers={**PREFLIGHT, "Origin": "null"})
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "null"

    serve("*", scenario)


@pytest.mark.parametrize("value", ["app.example.com", "https://app.example.com/path", "ftp://x"])
def test_a_bad_origin_names_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONIZER_GATEWAY_CORS_ALLOWED_ORIGINS", value)
    with pytest.raises(ConfigError, match=r"SESSIONIZER_GATEWAY_CORS_ALLOWED_ORIGINS.*not an origin"):
        load_gateway_settings()


def test_origins_are_compared_without_case_or_trailing_slash() -> None:
    settings: Any = GatewaySettings(cors_allowed_origins="HTTPS://App.Example.com/")
    assert settings.cors_origins == frozenset({"https://app.example.com"})
